import Foundation
import TesseraCore
import TesseraIO
import TesseraStore

/// A source restricted to some tensors of another (the merge methods see only the tensors being merged).
public final class SubsetSource: TensorSource, DeltaBaseSharing {
    public let inner: TensorSource
    public let tensorNames: [String]
    public init(_ inner: TensorSource, names: [String]) { self.inner = inner; tensorNames = names }
    public var sourceName: String { inner.sourceName }
    public var allowsConcurrentReads: Bool { inner.allowsConcurrentReads }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { inner.tensorInfo(name) }
    public func rawTensor(_ name: String) throws -> RawTensor { try inner.rawTensor(name) }
    public func readFloat32(_ name: String) throws -> [Float]? { try (inner as? Float32Reading)?.readFloat32(name) }
    public func storedObject(_ name: String) -> (id: String, bases: [String])? { (inner as? DeltaBaseSharing)?.storedObject(name) }
    public func readFloat32(_ name: String, lending lent: [String: UnsafeRawBufferPointer]) throws -> [Float]? {
        guard let sharing = inner as? DeltaBaseSharing else { return try readFloat32(name) }
        return try sharing.readFloat32(name, lending: lent)
    }
    public var metadata: [(String, String)] { inner.metadata }
}

/// The tensor-wise three-way merge behind the git merge driver and `tessera resolve`.
public struct ThreeWayMerge {
    public struct Outcome {
        public var manifest: Manifest
        public var conflicts: [String]
        public var merged: [(tensor: String, method: String)]
        public var report: [String]
    }

    let store: ObjectStore
    let path: String

    public init(store: ObjectStore, path: String) {
        self.store = store
        self.path = path
    }

    /// One side: its tensors (name → (dtype, shape, stored)) in file order, and its metadata. Names are compared
    /// byte for byte: two canonically equivalent names are two tensors.
    struct Side {
        var order: [ExactName]
        var tensors: [ExactName: (dtype: DType, shape: [Int], stored: Manifest.Stored)]
        var metadata: [(String, String)]
        var checkpoint: StoredCheckpoint
        var changes: ManifestDiff.Side
    }

    func side(_ manifest: Manifest, label: String) throws -> Side {
        let c = try StoredCheckpoint(manifest: manifest, store: store, name: label)
        var t: [ExactName: (DType, [Int], Manifest.Stored)] = [:]
        for x in manifest.tensors where t[ExactName(x.name)] == nil { t[ExactName(x.name)] = (x.dtype, x.shape, x.stored) }
        return Side(order: manifest.tensors.map { ExactName($0.name) }, tensors: t, metadata: c.metadata, checkpoint: c,
                    changes: ManifestDiff.Side(manifest))
    }

    public func run(base: Manifest?, ours: Manifest, theirs: Manifest, rules: MergeRules) throws -> Outcome {
        let O = try base.map { try side($0, label: "base:\(path)") }
        let A = try side(ours, label: "ours:\(path)")
        let B = try side(theirs, label: "theirs:\(path)")
        // What each side changed since the merge base, and whether the two sides differ (names alone, no renames: a
        // tensor renamed on one side is removed and added there).
        let ourChanges = try ManifestDiff(old: O?.changes, new: A.changes, pairsRenames: false)
        let theirChanges = try ManifestDiff(old: O?.changes, new: B.changes, pairsRenames: false)
        let between = try ManifestDiff(old: A.changes, new: B.changes, pairsRenames: false)

        var order = A.order
        let inA = Set(A.order)
        var seenInB = Set<ExactName>()
        order += B.order.filter { !inA.contains($0) && seenInB.insert($0).inserted }
        var chosen: [ExactName: (dtype: DType, shape: [Int], stored: Manifest.Stored)] = [:]
        var removed = Set<ExactName>()
        var conflicts: [ExactName] = []
        var report: [String] = []
        var toMerge: [ExactName: MergeRules.Rule] = [:]
        for key in order {
            let n = key.string
            if !between.differs(key) {            // unchanged, or changed identically (or removed on both sides)
                if let x = A.tensors[key] { chosen[key] = x } else { removed.insert(key) }
            } else if !ourChanges.differs(key) {  // changed (or added, or removed) on their side only
                if let x = B.tensors[key] { chosen[key] = x } else { removed.insert(key) }
            } else if !theirChanges.differs(key) { // on our side only
                if let x = A.tensors[key] { chosen[key] = x } else { removed.insert(key) }
            } else if let ta = A.tensors[key], let tb = B.tensors[key], let rule = rules.rule(path: path, tensor: n) {
                if ta.shape != tb.shape || ta.dtype != tb.dtype {
                    conflicts.append(key)
                    report.append("\(n): shape or dtype differs (ours \(ta.dtype.rawValue) \(ta.shape), theirs \(tb.dtype.rawValue) \(tb.shape)); cannot be merged by \(rule.method)")
                    chosen[key] = ta
                } else {
                    toMerge[key] = rule
                    chosen[key] = ta  // placeholder until merged
                }
            } else {
                conflicts.append(key)
                let what = A.tensors[key] == nil ? "removed on our side, changed on theirs"
                    : B.tensors[key] == nil ? "changed on our side, removed on theirs"
                    : "changed on both sides and no merge method is configured for it"
                report.append("\(n): \(what)")
                if let x = A.tensors[key] { chosen[key] = x } else { removed.insert(key) }
            }
        }

        // Merge the two-sided changes, grouped by rule, with the merge base as the base model.
        var merged: [(String, String)] = []
        var provenance: [(String, String)] = []
        func ruleKey(_ r: MergeRules.Rule) -> String {
            r.method + "|" + String(describing: r.parameters.sorted { $0.key < $1.key }) + "|\(r.weights ?? [])"
        }
        let groups = Dictionary(grouping: Self.sorted(Array(toMerge.keys)), by: { toMerge[$0].map(ruleKey) ?? "" })
        // Merged tensors are hashed, encoded and stored on a thread of their own while the next ones are merged.
        let writer = BackgroundObjectWriter(store: store)
        defer { writer.cancel() }
        var pending: [(name: ExactName, dtype: DType, shape: [Int])] = []
        for key in groups.keys.sorted() {
            guard let names = groups[key], let first = names.first, let rule = toMerge[first] else { continue }
            if rule.method == "ours" || rule.method == "theirs" || rule.method == "base" {
                for n in names {
                    if rule.method == "theirs", let x = B.tensors[n] { chosen[n] = x }
                    else if rule.method == "base" {
                        guard let x = O?.tensors[n] else {
                            conflicts.append(n); report.append("\(n.string): method 'base' but the merge base has no such tensor"); continue
                        }
                        chosen[n] = x
                    }
                    merged.append((n.string, rule.method))
                }
                continue
            }
            let type = try MergeRegistry.method(named: rule.method)
            var usable = names
            if type.baseUse == .required, let O {
                let lacking = names.filter { O.tensors[$0] == nil }
                for n in lacking { conflicts.append(n); report.append("\(n.string): added on both sides; \(rule.method) needs it in the merge base") }
                usable = names.filter { O.tensors[$0] != nil }
            } else if type.baseUse == .required {
                for n in names { conflicts.append(n); report.append("\(n.string): no merge base; \(rule.method) needs one") }
                usable = []
            }
            guard !usable.isEmpty else { continue }
            // Largest first: the writer thread hashes, encodes and stores a merged tensor while the next ones merge,
            // so the one stored last is the one nothing overlaps. In name order that was GPT-2's embedding (a third of
            // the model); now it is a norm. The result does not depend on the order (methods are per tensor, DARE's
            // draws keyed by name), and the provenance below lists the tensors in name order as before.
            let size = { (n: ExactName) in A.tensors[n].flatMap { elementCount($0.shape) } ?? 0 }
            let bySize = usable.enumerated().sorted { (a, b) in
                let (x, y) = (size(a.element), size(b.element))
                return x != y ? x > y : a.offset < b.offset
            }.map(\.element.string)
            let w = rule.weights ?? [1, 1]
            func plan(_ names: [String]) throws -> MergePlan {
                // The merged file is the same checkpoint, so each tensor keeps its stored dtype (ramplus_tl would
                // otherwise turn a 16-bit tensor float32, as mergekit writes a new model).
                var plan = try MergePlan(
                    method: rule.method,
                    base: type.baseUse == .required ? O.map { MergeInputModel(name: "base", source: SubsetSource($0.checkpoint, names: names)) } : nil,
                    models: [MergeInputModel(name: "ours", source: SubsetSource(A.checkpoint, names: names), parameters: ["weight": .number(w.first ?? 1)]),
                             MergeInputModel(name: "theirs", source: SubsetSource(B.checkpoint, names: names), parameters: ["weight": .number(w.count > 1 ? w[1] : 1)])],
                    parameters: rule.parameters).distributingModelDefaults()
                plan.keepsLoadedDType = true
                return plan
            }
            let summary = try MergeDriver.run(try plan(bySize), float32Sink: { name, values, shape in
                writer.store(values, width: DType.f32.byteWidth, key: pending.count)
                pending.append((ExactName(name), .f32, shape))
            }) { name, tensor in
                writer.store(tensor.bytes, width: tensor.dtype.isFloatingPoint ? tensor.dtype.byteWidth : 1, key: pending.count)
                pending.append((ExactName(name), tensor.dtype, tensor.shape))
            }
            merged += usable.map { ($0.string, rule.method) }
            provenance += try MergeProvenance.metadata(plan: try plan(usable.map(\.string)), summary: summary) { source, name in
                (source as? SubsetSource).flatMap { ($0.inner as? StoredCheckpoint)?.stored(name)?.rawSHA256 }
            }
        }
        let stored = try writer.finish()
        for (key, t) in pending.enumerated() {
            guard let object = stored[key] else { throw TesseraError(.io, "\(path): merged tensor '\(t.name.string)' was not stored") }
            chosen[t.name] = (t.dtype, t.shape, object)
        }
        let conflicted = Self.sorted(Array(Set(conflicts))).map(\.string)

        // The result: our metadata (plus provenance when a method ran), tensors in our order, contiguous.
        var metadata = A.metadata.filter { !$0.0.hasPrefix("tessera.merge.") }
        if !merged.isEmpty {
            var seen = Set<String>()
            for (k, v) in provenance where seen.insert(k).inserted { metadata.append((k, v)) }
            metadata.append(("tessera.merge.tensors", JSONValue.array(merged.map { JSONValue.string($0.0) }).serialized()))
        }
        let final = order.compactMap { key in removed.contains(key) ? nil : chosen[key].map { (key.string, $0) } }
        return Outcome(manifest: try assemble(final, metadata: metadata), conflicts: conflicted, merged: merged, report: report)
    }

    /// Names in String order; canonically equivalent ones (equal as Strings) in the order of their bytes.
    static func sorted(_ names: [ExactName]) -> [ExactName] {
        names.sorted { a, b in
            let (x, y) = (a.string, b.string)
            return x != y ? x < y : a.utf8.lexicographicallyPrecedes(b.utf8)
        }
    }

    /// Builds the manifest of a checkpoint made of stored tensors, writing only its new header.
    func assemble(_ tensors: [(String, (dtype: DType, shape: [Int], stored: Manifest.Stored))], metadata: [(String, String)]) throws -> Manifest {
        let entries = SafetensorsHeader.contiguous(tensors.map { ($0.0, $0.1.dtype, $0.1.shape) })
        let header = SafetensorsHeader.encode(entries, metadata: metadata)!
        let headerStored = try header.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 1, encoder: ObjectEncoder()) }
        var segments: [Manifest.Segment] = [.header(begin: 0, end: header.count, headerStored)]
        for ((_, t), e) in zip(tensors, entries) {
            segments.append(.tensor(name: e.name, dtype: t.dtype, shape: t.shape, begin: header.count + e.begin, end: header.count + e.end, t.stored))
        }
        return Manifest(format: .safetensors, size: header.count + (entries.last?.end ?? 0), segments: segments)
    }
}
