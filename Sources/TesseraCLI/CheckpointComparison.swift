import Foundation
import TesseraCore
import TesseraStore

/// One side of a comparison: a checkpoint as tensors with their raw-value hashes, read either through a manifest
/// (from the object store) or straight from a safetensors file.
struct ComparableCheckpoint {
    let source: TensorSource
    let rawHash: (String) throws -> String

    /// Opens a file git hands to a diff driver or a merge driver: a manifest (the clean form) or the real file.
    static func open(path: String, store: ObjectStore, label: String) throws -> ComparableCheckpoint? {
        if path == "/dev/null" { return nil }
        let head = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: path)).readData(ofLength: 17)).map { Array($0) } ?? []
        if Manifest.looksLikeManifest(head) {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let m = try Manifest.parse(text, file: label)
            let stored = try StoredCheckpoint(manifest: m, store: store, name: label)
            return ComparableCheckpoint(source: stored, rawHash: { stored.stored($0)?.rawSHA256 ?? "" })
        }
        guard SafetensorsLayout.looksLikeSafetensors(prefix: head) else { return nil }
        let file = try SafetensorsFile(path: path)
        return ComparableCheckpoint(source: file, rawHash: { SHA256Hasher.hex(try file.tensor($0).bytes) })
    }
}

/// What changed in one tensor between two versions.
struct TensorChange {
    enum Kind: String { case added, removed, changed, unchanged, renamed }
    var kind: Kind
    var name: String
    /// For a rename: the name the same bytes had before.
    var oldName: String?
    var dtype: DType
    var shape: [Int]
    var oldShape: [Int]?
    var oldDType: DType?
    var l2: Double?
    var relative: Double?
    var maxAbs: Double?

    static func compare(old: ComparableCheckpoint?, new: ComparableCheckpoint?, numeric: Bool = true) throws -> [TensorChange] {
        let oldNames = old?.source.tensorNames ?? []
        let newNames = new?.source.tensorNames ?? []
        let oldSet = Set(oldNames.map(ExactName.init))
        var out: [TensorChange] = []
        for name in newNames {
            let info = new!.source.tensorInfo(name)!
            guard let old, oldSet.contains(ExactName(name)), let oi = old.source.tensorInfo(name) else {
                out.append(TensorChange(kind: .added, name: name, dtype: info.dtype, shape: info.shape))
                continue
            }
            if try old.rawHash(name) == new!.rawHash(name) {
                out.append(TensorChange(kind: .unchanged, name: name, dtype: info.dtype, shape: info.shape))
                continue
            }
            var c = TensorChange(kind: .changed, name: name, dtype: info.dtype, shape: info.shape)
            if oi.shape != info.shape { c.oldShape = oi.shape }
            if oi.dtype != info.dtype { c.oldDType = oi.dtype }
            if numeric, oi.shape == info.shape, let a = try? old.source.floats(name), let b = try? new!.source.floats(name) {
                var d2 = 0.0, a2 = 0.0, m = 0.0
                for k in 0..<min(a.count, b.count) {
                    let d = Double(b[k]) - Double(a[k])
                    d2 += d * d
                    a2 += Double(a[k]) * Double(a[k])
                    m = max(m, abs(d))
                }
                c.l2 = d2.squareRoot()
                c.relative = a2 > 0 ? (d2 / a2).squareRoot() : nil
                c.maxAbs = m
            }
            out.append(c)
        }
        let newSet = Set(newNames.map(ExactName.init))
        for name in oldNames where !newSet.contains(ExactName(name)) {
            let info = old!.source.tensorInfo(name)!
            out.append(TensorChange(kind: .removed, name: name, dtype: info.dtype, shape: info.shape))
        }
        return try pairingRenames(out, old: old, new: new)
    }

    /// A tensor removed under one name and added under another with the same bytes (dtype, shape and raw SHA-256)
    /// was renamed; each removed tensor pairs with at most one added one, in order.
    static func pairingRenames(_ changes: [TensorChange], old: ComparableCheckpoint?, new: ComparableCheckpoint?) throws -> [TensorChange] {
        guard let old, let new else { return changes }
        var removedByValue: [String: [Int]] = [:]
        for (k, c) in changes.enumerated() where c.kind == .removed {
            removedByValue["\(c.dtype.rawValue)\(c.shape)\(try old.rawHash(c.name))", default: []].append(k)
        }
        guard !removedByValue.isEmpty else { return changes }
        var out = changes
        var consumed = Set<Int>()
        for (k, c) in changes.enumerated() where c.kind == .added {
            let key = "\(c.dtype.rawValue)\(c.shape)\(try new.rawHash(c.name))"
            guard var candidates = removedByValue[key], !candidates.isEmpty else { continue }
            let r = candidates.removeFirst()
            removedByValue[key] = candidates
            out[k] = TensorChange(kind: .renamed, name: c.name, oldName: changes[r].name, dtype: c.dtype, shape: c.shape)
            consumed.insert(r)
        }
        return out.enumerated().filter { !consumed.contains($0.offset) }.map(\.element)
    }

    var shapeText: String { "[" + shape.map(String.init).joined(separator: ",") + "]" }

    var line: String {
        var s = "\(kind.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(oldName.map { "\($0) -> " } ?? "")\(name)  \(dtype.rawValue) \(shapeText)"
        if let oldShape { s += "  (was [\(oldShape.map(String.init).joined(separator: ","))])" }
        if let oldDType { s += "  (was \(oldDType.rawValue))" }
        if let l2 { s += String(format: "  L2(delta)=%.4g", l2) }
        if let relative { s += String(format: "  rel=%.4g", relative) }
        if let maxAbs { s += String(format: "  max|delta|=%.4g", maxAbs) }
        return s
    }

    var json: JSONValue {
        var pairs: [(String, JSONValue)] = [("change", .string(kind.rawValue)), ("name", .string(name))]
        if let oldName { pairs.append(("old_name", .string(oldName))) }
        pairs += [
                                           ("dtype", .string(dtype.rawValue)), ("shape", .array(shape.map { .int($0) }))]
        if let oldShape { pairs.append(("old_shape", .array(oldShape.map { .int($0) }))) }
        if let l2 { pairs.append(("l2_delta", .double(l2))) }
        if let relative { pairs.append(("relative_change", .double(relative))) }
        if let maxAbs { pairs.append(("max_abs_delta", .double(maxAbs))) }
        return .object(pairs)
    }
}
