import TesseraIO

/// What changed between two versions of a checkpoint, tensor by tensor: added, removed, changed, unchanged, or renamed
/// (removed under one name and added under another with the same dtype, shape and bytes). A tensor is unchanged when
/// its dtype, shape and the SHA-256 of its raw bytes are; names are compared byte for byte (`ExactName`: two
/// canonically equivalent names are two tensors). The one comparison behind `git diff` (the diff driver), `tessera log`
/// and the three-way merge.
public struct ManifestDiff {
    public enum Kind: String, Sendable {
        case added, removed, changed, unchanged, renamed
    }

    /// How far a changed tensor's values moved (same shape on both sides, values readable as floats).
    public struct NumericSummary: Sendable, Equatable {
        /// ‖new − old‖₂.
        public var l2: Double
        /// ‖new − old‖₂ / ‖old‖₂; nil when the old tensor is all zeros.
        public var relative: Double?
        /// max |new − old|.
        public var maxAbs: Double
    }

    public struct Change {
        public var kind: Kind
        /// The tensor's name (for a removed tensor, its old name; for a renamed one, its new name).
        public var name: String
        /// For a rename: the name the same bytes had before.
        public var oldName: String?
        public var dtype: DType
        public var shape: [Int]
        /// For a changed tensor whose shape or dtype changed: what it was.
        public var oldShape: [Int]?
        public var oldDType: DType?
        /// For a changed tensor, when numeric summaries were asked for and the sides' values could be compared.
        public var numeric: NumericSummary?
    }

    /// One version: its tensors in order, the raw SHA-256 of each, and optionally the tensors themselves (for
    /// numeric summaries).
    public struct Side {
        public var tensors: [(name: String, dtype: DType, shape: [Int])]
        /// The SHA-256 of a tensor's raw bytes; asked only for tensors whose dtype and shape match a counterpart.
        public var rawSHA256: (String) throws -> String
        public var source: TensorSource?

        public init(tensors: [(name: String, dtype: DType, shape: [Int])], rawSHA256: @escaping (String) throws -> String,
                    source: TensorSource? = nil) {
            self.tensors = tensors
            self.rawSHA256 = rawSHA256
            self.source = source
        }

        /// A manifest's tensors: the raw hashes are recorded in it.
        public init(_ manifest: Manifest, source: TensorSource? = nil) {
            let tensors = manifest.tensors
            var hashes: [ExactName: String] = [:]
            for t in tensors where hashes[ExactName(t.name)] == nil { hashes[ExactName(t.name)] = t.stored.rawSHA256 }
            self.init(tensors: tensors.map { ($0.name, $0.dtype, $0.shape) }, rawSHA256: { hashes[ExactName($0)] ?? "" }, source: source)
        }
    }

    /// Every tensor of the new version in its order (added, changed, unchanged, renamed), then the removed ones in
    /// the old version's order.
    public let changes: [Change]
    private let byName: [ExactName: Int]

    /// Compares `old` with `new` (nil: no such version, e.g. a file added or deleted). `pairsRenames` turns a removal
    /// and an addition of the same bytes into one rename (each removed tensor pairs with at most one added one, in
    /// order). `numericSummaries` compares the values of changed tensors of the same shape (both sides need a source).
    public init(old: Side?, new: Side?, pairsRenames: Bool = true, numericSummaries: Bool = false) throws {
        var oldByName: [ExactName: (dtype: DType, shape: [Int])] = [:]
        for t in old?.tensors ?? [] where oldByName[ExactName(t.name)] == nil { oldByName[ExactName(t.name)] = (t.dtype, t.shape) }
        var newNames = Set<ExactName>()
        var changes: [Change] = []
        for t in new?.tensors ?? [] {
            let key = ExactName(t.name)
            newNames.insert(key)
            guard let old, let new, let before = oldByName[key] else {
                changes.append(Change(kind: .added, name: t.name, dtype: t.dtype, shape: t.shape))
                continue
            }
            if before.dtype == t.dtype, before.shape == t.shape, try old.rawSHA256(t.name) == new.rawSHA256(t.name) {
                changes.append(Change(kind: .unchanged, name: t.name, dtype: t.dtype, shape: t.shape))
                continue
            }
            var c = Change(kind: .changed, name: t.name, dtype: t.dtype, shape: t.shape)
            if before.shape != t.shape { c.oldShape = before.shape }
            if before.dtype != t.dtype { c.oldDType = before.dtype }
            if numericSummaries, before.shape == t.shape, let a = old.source, let b = new.source {
                c.numeric = Self.summary(a, b, t.name)
            }
            changes.append(c)
        }
        for t in old?.tensors ?? [] where !newNames.contains(ExactName(t.name)) {
            changes.append(Change(kind: .removed, name: t.name, dtype: t.dtype, shape: t.shape))
        }
        if pairsRenames, let old, let new { changes = try Self.pairingRenames(changes, old: old, new: new) }
        self.changes = changes
        var byName: [ExactName: Int] = [:]
        for (k, c) in changes.enumerated() {
            if byName[ExactName(c.name)] == nil { byName[ExactName(c.name)] = k }
            if let o = c.oldName, byName[ExactName(o)] == nil { byName[ExactName(o)] = k }
        }
        self.byName = byName
    }

    /// The change of a tensor by its name (new or old); nil when neither version has it.
    public func change(of name: String) -> Change? { change(of: ExactName(name)) }

    public func change(of name: ExactName) -> Change? { byName[name].map { changes[$0] } }

    /// Whether the tensor differs between the versions (added, removed, changed or renamed; a name neither version
    /// has does not).
    public func differs(_ name: ExactName) -> Bool { change(of: name).map { $0.kind != .unchanged } ?? false }

    public func count(_ kind: Kind) -> Int { changes.reduce(0) { $0 + ($1.kind == kind ? 1 : 0) } }

    /// Whether anything differs.
    public var isEmpty: Bool { !changes.contains { $0.kind != .unchanged } }

    /// A removed tensor and an added one with the same dtype, shape and raw SHA-256 are one renamed tensor.
    static func pairingRenames(_ changes: [Change], old: Side, new: Side) throws -> [Change] {
        func key(_ c: Change, _ hash: String) -> String { "\(c.dtype.rawValue)\(c.shape)\(hash)" }
        var removedByValue: [String: [Int]] = [:]
        for (k, c) in changes.enumerated() where c.kind == .removed {
            removedByValue[key(c, try old.rawSHA256(c.name)), default: []].append(k)
        }
        guard !removedByValue.isEmpty else { return changes }
        var out = changes
        var consumed = Set<Int>()
        for (k, c) in changes.enumerated() where c.kind == .added {
            let value = key(c, try new.rawSHA256(c.name))
            guard var candidates = removedByValue[value], !candidates.isEmpty else { continue }
            let r = candidates.removeFirst()
            removedByValue[value] = candidates
            out[k] = Change(kind: .renamed, name: c.name, oldName: changes[r].name, dtype: c.dtype, shape: c.shape)
            consumed.insert(r)
        }
        return out.enumerated().filter { !consumed.contains($0.offset) }.map(\.element)
    }

    /// L2, relative and maximal change of a tensor's values; nil when either side cannot be read as floats.
    static func summary(_ old: TensorSource, _ new: TensorSource, _ name: String) -> NumericSummary? {
        guard let a = try? old.floats(name), let b = try? new.floats(name) else { return nil }
        var d2 = 0.0, a2 = 0.0, m = 0.0
        for k in 0..<min(a.count, b.count) {
            let d = Double(b[k]) - Double(a[k])
            d2 += d * d
            a2 += Double(a[k]) * Double(a[k])
            m = max(m, abs(d))
        }
        return NumericSummary(l2: d2.squareRoot(), relative: a2 > 0 ? (d2 / a2).squareRoot() : nil, maxAbs: m)
    }
}
