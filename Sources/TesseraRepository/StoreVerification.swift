import Foundation
import TesseraCore
import TesseraIO
import TesseraStore

/// What `tessera fsck` checks: every object that a reachable manifest names (and, if asked, every object in the
/// store), decoded and compared with what the manifests claim of it. An object can be intact and still not be what
/// a manifest claims (a hostile or damaged manifest): its raw length and value are checked too.
public struct StoreVerification {
    public struct Report {
        /// Objects checked, including the ones of published history that were never fetched.
        public var checked = 0
        /// Manifests the objects came from.
        public var manifests = 0
        /// Objects that only this repository can have and that its store lacks.
        public var missing: [String] = []
        /// Objects of history a remote has, not fetched here (a partial clone): not a problem.
        public var notFetched: [String] = []
        public var corrupt: [(id: String, why: String)] = []
        /// What needs an object, for messages: "model.safetensors: tensor 'w'", or "the delta base of ...".
        public var usage: [String: String] = [:]

        /// One line about a missing object: what needs it and what to run.
        public func missingLine(_ id: String) -> String {
            "missing \(id)" + (usage[id].map { " (\($0))" } ?? "")
                + ": fetch it with `tessera fetch --all`, or push it from a clone that has it (`tessera push --all` there)"
        }

        public var isClean: Bool { missing.isEmpty && corrupt.isEmpty }
    }

    let repository: Repository
    let reachability: Reachability
    /// Objects only this repository can have (`Reachability.localOnlyObjectIDs`, and the dependencies of those).
    let localOnly: Set<String>
    /// What the manifests say each object holds: its raw length and the SHA-256 of its raw value.
    let claims: [String: (length: Int, raw: String)]
    /// Objects two manifests claim differently, with the reason.
    let inconsistent: [(String, String)]
    /// The objects to check, sorted.
    public let objectIDs: [String]
    /// What needs each object (see `Report.usage`).
    let usage: [String: String]
    /// For each delta a manifest line names: that line, and the dependencies it names (the whole chain, since chains
    /// exist: what lets a clone of one branch fetch everything its checkout needs).
    let namedChains: [String: (what: String, ids: Set<String>)]

    /// Plans the verification of what is reachable (with `includeUnreachable`, of every object in the store too).
    public init(repository: Repository, includeUnreachable: Bool) throws {
        self.repository = repository
        reachability = try Reachability(repository: repository)
        var claims: [String: (length: Int, raw: String)] = [:]
        var inconsistent: [(String, String)] = []
        var usage: [String: String] = [:]
        var namedChains: [String: (what: String, ids: Set<String>)] = [:]
        for (origin, m) in reachability.manifests {
            let file = origin.split(separator: ":", maxSplits: 1).last.map(String.init) ?? origin
            for segment in m.segments {
                guard let st = segment.stored else { continue }
                let what: String
                if case let .tensor(name, _, _, _, _, _) = segment { what = "\(file): tensor '\(name)'" } else { what = file }
                if usage[st.objectID] == nil { usage[st.objectID] = what }
                for dependency in Manifest.baseObjects(encoding: st.encoding) where usage[dependency.id] == nil {
                    usage[dependency.id] = "a delta base of \(what)"
                }
                let named = Manifest.baseObjects(encoding: st.encoding)
                if !named.isEmpty, namedChains[st.objectID] == nil {
                    namedChains[st.objectID] = (what, Set(named.map(\.id)))
                }
                let claim = (segment.end - segment.begin, st.rawSHA256)
                if let known = claims[st.objectID], known != claim {
                    inconsistent.append((st.objectID, "\(origin) names it for \(claim.0) bytes of value \(claim.1.prefix(12)), another manifest for \(known.length) bytes of value \(known.raw.prefix(12))"))
                } else {
                    claims[st.objectID] = claim
                }
            }
        }
        self.claims = claims
        self.inconsistent = inconsistent
        self.namedChains = namedChains
        // Dependencies the objects' trailers name are checked too, even ones no manifest names.
        let (reachable, dependentOf) = reachability.objectIDsWithDependencies(in: repository.store)
        var ids = reachable
        for id in ids where usage[id] == nil {
            // Up the chain to an object a manifest names (bounded: each step is a distinct object).
            var at = id, steps = 0
            while usage[at] == nil, let up = dependentOf[at], steps < ids.count { at = up; steps += 1 }
            usage[id] = usage[at].map { "a delta base of \($0)" }
        }
        self.usage = usage
        let localOnlyNamed = reachability.localOnlyObjectIDs
        localOnly = localOnlyNamed.union(dependentOf.keys.filter { id in
            var at = id, steps = 0
            while let up = dependentOf[at], steps < reachable.count { at = up; steps += 1 }
            return localOnlyNamed.contains(at)
        })
        if includeUnreachable { ids.formUnion(repository.store.allObjectIDs()) }
        objectIDs = ids.sorted()
    }

    /// Reads and checks every planned object (a progress bar on a terminal).
    public func run() -> Report {
        let store = repository.store
        var report = Report()
        report.checked = objectIDs.count
        report.manifests = reachability.manifests.count
        report.corrupt = inconsistent.map { (id: $0.0, why: $0.1) }
        var missing: [String] = []
        let progress = ProgressReporter(label: "verifying objects", total: objectIDs.count)
        let decoder = ObjectDecoder()
        let planHasMissing = objectIDs.contains { !store.contains($0) }
        for id in objectIDs {
            switch store.presence(id) {
            case .missing:
                missing.append(id)
            case let .unreadable(why):
                report.corrupt.append((id, "cannot be read: \(why)"))
            case .present:
                do {
                    try store.verify(id, expectedLength: claims[id]?.length, expectedRawSHA256: claims[id]?.raw, decoder: decoder)
                    if let named = namedChains[id], let chain = try? store.dependencyChain(of: id),
                       let unnamed = chain.objectIDs.first(where: { !named.ids.contains($0) }) {
                        report.corrupt.append((id, "the manifest line of \(named.what) does not name object \(unnamed.prefix(12)) of its delta chain (a clone of one branch could not fetch it; `tessera repack` stores the current version whole)"))
                    }
                } catch let e as TesseraError where e.code == .objectMissing {
                    // A dependency is missing: reported on its own line (every dependency is in the plan).
                    if !planHasMissing { report.corrupt.append((id, e.message)) }
                } catch let e as TesseraError {
                    report.corrupt.append((id, e.message))
                } catch {
                    report.corrupt.append((id, "\(error)"))
                }
            }
            progress.advance()
        }
        progress.finish()
        // Objects of published history that a partial clone has not fetched are not a problem: the remote has them.
        report.notFetched = missing.filter { !localOnly.contains($0) }
        report.missing = missing.filter { localOnly.contains($0) }
        report.usage = usage
        return report
    }
}
