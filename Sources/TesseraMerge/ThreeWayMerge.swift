import Foundation
import TesseraCore
import TesseraStore

/// A source restricted to some tensors of another (the merge methods see only the tensors being merged).
public final class SubsetSource: TensorSource, Float32Reading {
    public let inner: TensorSource
    public let tensorNames: [String]
    public init(_ inner: TensorSource, names: [String]) { self.inner = inner; tensorNames = names }
    public var sourceName: String { inner.sourceName }
    public var allowsConcurrentReads: Bool { inner.allowsConcurrentReads }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { inner.tensorInfo(name) }
    public func rawTensor(_ name: String) throws -> RawTensor { try inner.rawTensor(name) }
    public func readFloat32(_ name: String) throws -> [Float]? { try (inner as? Float32Reading)?.readFloat32(name) }
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

    /// One side: its tensors (name → (dtype, shape, stored)) in file order, and its metadata.
    struct Side {
        var order: [String]
        var tensors: [String: (dtype: DType, shape: [Int], stored: Manifest.Stored)]
        var metadata: [(String, String)]
        var checkpoint: StoredCheckpoint
    }

    func side(_ manifest: Manifest, label: String) throws -> Side {
        let c = try StoredCheckpoint(manifest: manifest, store: store, name: label)
        var t: [String: (DType, [Int], Manifest.Stored)] = [:]
        for x in manifest.tensors { t[x.name] = (x.dtype, x.shape, x.stored) }
        return Side(order: manifest.tensors.map(\.name), tensors: t, metadata: c.metadata, checkpoint: c)
    }

    public func run(base: Manifest?, ours: Manifest, theirs: Manifest, rules: MergeRules) throws -> Outcome {
        let O = try base.map { try side($0, label: "base:\(path)") }
        let A = try side(ours, label: "ours:\(path)")
        let B = try side(theirs, label: "theirs:\(path)")
        func id(_ s: Side?, _ n: String) -> String? { s?.tensors[n].map { "\($0.dtype.rawValue)\($0.shape)\($0.stored.rawSHA256)" } }

        var order = A.order
        let inA = Set(A.order)
        order += B.order.filter { !inA.contains($0) }
        var chosen: [String: (dtype: DType, shape: [Int], stored: Manifest.Stored)] = [:]
        var removed = Set<String>()
        var conflicts: [String] = []
        var report: [String] = []
        var toMerge: [String: MergeRules.Rule] = [:]
        for n in order {
            let (o, a, b) = (id(O, n), id(A, n), id(B, n))
            if a == b {                           // unchanged, or changed identically (or removed on both sides)
                if let x = A.tensors[n] { chosen[n] = x } else { removed.insert(n) }
            } else if a == o {                    // changed (or added, or removed) on their side only
                if let x = B.tensors[n] { chosen[n] = x } else { removed.insert(n) }
            } else if b == o {                    // on our side only
                if let x = A.tensors[n] { chosen[n] = x } else { removed.insert(n) }
            } else if let ta = A.tensors[n], let tb = B.tensors[n], let rule = rules.rule(path: path, tensor: n) {
                if ta.shape != tb.shape || ta.dtype != tb.dtype {
                    conflicts.append(n)
                    report.append("\(n): shape or dtype differs (ours \(ta.dtype.rawValue) \(ta.shape), theirs \(tb.dtype.rawValue) \(tb.shape)); cannot be merged by \(rule.method)")
                    chosen[n] = ta
                } else {
                    toMerge[n] = rule
                    chosen[n] = ta  // placeholder until merged
                }
            } else {
                conflicts.append(n)
                let what = A.tensors[n] == nil ? "removed on our side, changed on theirs"
                    : B.tensors[n] == nil ? "changed on our side, removed on theirs"
                    : "changed on both sides and no merge method is configured for it"
                report.append("\(n): \(what)")
                if let x = A.tensors[n] { chosen[n] = x } else { removed.insert(n) }
            }
        }

        // Merge the two-sided changes, grouped by rule, with the merge base as the base model.
        var merged: [(String, String)] = []
        var provenance: [(String, String)] = []
        let groups = Dictionary(grouping: toMerge.keys.sorted(), by: { toMerge[$0]!.method + "|" + String(describing: toMerge[$0]!.parameters.sorted { $0.key < $1.key }) + "|\(toMerge[$0]!.weights ?? [])" })
        let encoder = ObjectEncoder()
        for key in groups.keys.sorted() {
            let names = groups[key]!
            let rule = toMerge[names[0]]!
            if rule.method == "ours" || rule.method == "theirs" || rule.method == "base" {
                for n in names {
                    if rule.method == "theirs" { chosen[n] = B.tensors[n]! }
                    else if rule.method == "base" {
                        guard let x = O?.tensors[n] else {
                            conflicts.append(n); report.append("\(n): method 'base' but the merge base has no such tensor"); continue
                        }
                        chosen[n] = x
                    }
                    merged.append((n, rule.method))
                }
                continue
            }
            let type = try MergeRegistry.method(named: rule.method)
            var usable = names
            if type.baseUse == .required, let O {
                let lacking = names.filter { O.tensors[$0] == nil }
                for n in lacking { conflicts.append(n); report.append("\(n): added on both sides; \(rule.method) needs it in the merge base") }
                usable = names.filter { O.tensors[$0] != nil }
            } else if type.baseUse == .required {
                for n in names { conflicts.append(n); report.append("\(n): no merge base; \(rule.method) needs one") }
                usable = []
            }
            guard !usable.isEmpty else { continue }
            let w = rule.weights ?? [1, 1]
            let plan = try MergePlan(
                method: rule.method,
                base: type.baseUse == .required ? O.map { MergeInputModel(name: "base", source: SubsetSource($0.checkpoint, names: usable)) } : nil,
                models: [MergeInputModel(name: "ours", source: SubsetSource(A.checkpoint, names: usable), parameters: ["weight": .number(w.first ?? 1)]),
                         MergeInputModel(name: "theirs", source: SubsetSource(B.checkpoint, names: usable), parameters: ["weight": .number(w.count > 1 ? w[1] : 1)])],
                parameters: rule.parameters).distributingModelDefaults()
            let summary = try MergeDriver.run(plan) { name, tensor in
                let sha = SHA256Hasher.hex(tensor.bytes)
                let width = tensor.dtype.isFloatingPoint ? tensor.dtype.byteWidth : 1
                let stored = try tensor.bytes.withUnsafeBytes { try store.put(raw: $0, rawSHA256: sha, width: width, encoder: encoder) }
                chosen[name] = (tensor.dtype, tensor.shape, stored)
                merged.append((name, rule.method))
            }
            provenance += try MergeProvenance.metadata(plan: plan, summary: summary) { source, name in
                (source as? SubsetSource).flatMap { ($0.inner as? StoredCheckpoint)?.stored(name)?.rawSHA256 }
            }
        }
        conflicts = Array(Set(conflicts)).sorted()

        // The result: our metadata (plus provenance when a method ran), tensors in our order, contiguous.
        var metadata = A.metadata.filter { !$0.0.hasPrefix("tessera.merge.") }
        if !merged.isEmpty {
            var seen = Set<String>()
            for (k, v) in provenance where seen.insert(k).inserted { metadata.append((k, v)) }
            metadata.append(("tessera.merge.tensors", JSONValue.array(merged.map { JSONValue.string($0.0) }).serialized()))
        }
        let final = order.filter { !removed.contains($0) && chosen[$0] != nil }
        return Outcome(manifest: try assemble(final.map { ($0, chosen[$0]!) }, metadata: metadata), conflicts: conflicts,
                       merged: merged, report: report)
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
