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

        public var isClean: Bool { missing.isEmpty && corrupt.isEmpty }
    }

    let repository: Repository
    let reachability: Reachability
    /// What the manifests say each object holds: its raw length and the SHA-256 of its raw value.
    let claims: [String: (length: Int, raw: String)]
    /// Objects two manifests claim differently, with the reason.
    let inconsistent: [(String, String)]
    /// The objects to check, sorted.
    public let objectIDs: [String]

    /// Plans the verification of what is reachable (with `includeUnreachable`, of every object in the store too).
    public init(repository: Repository, includeUnreachable: Bool) throws {
        self.repository = repository
        reachability = try Reachability(repository: repository)
        var claims: [String: (length: Int, raw: String)] = [:]
        var inconsistent: [(String, String)] = []
        for (origin, m) in reachability.manifests {
            for segment in m.segments {
                guard let st = segment.stored else { continue }
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
        var ids = reachability.objectIDs
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
        for id in objectIDs {
            switch store.presence(id) {
            case .missing:
                missing.append(id)
            case let .unreadable(why):
                report.corrupt.append((id, "cannot be read: \(why)"))
            case .present:
                do {
                    try store.verify(id, expectedLength: claims[id]?.length, expectedRawSHA256: claims[id]?.raw, decoder: decoder)
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
        report.notFetched = missing.filter { !reachability.localOnlyObjectIDs.contains($0) }
        report.missing = missing.filter { reachability.localOnlyObjectIDs.contains($0) }
        return report
    }
}
