import Foundation
import TesseraCore
import TesseraIO

/// What changed between two versions of a PEFT adapter, on ΔW = s·B·A per module (config changes included: a
/// doubled lora_alpha doubles every ΔW). Norms are computed from the factors without forming ΔW:
/// ‖ΔW_new − ΔW_old‖ is the norm of the concatenated factors [B_new, B_old]·[s_new·A_new; −s_old·A_old].
public struct AdapterDiff {
    public struct ModuleChange {
        public enum Kind: String { case changed, added, removed, unchanged }
        public var module: String
        public var kind: Kind
        public var oldNorm: Double?
        public var newNorm: Double?
        /// ‖ΔW_new − ΔW_old‖_F.
        public var differenceNorm: Double
        /// differenceNorm / ‖ΔW_old‖_F.
        public var relative: Double?
    }

    /// Config keys whose values differ: key, old value, new value (JSON text; nil when absent).
    public var configChanges: [(key: String, old: String?, new: String?)]
    public var modules: [ModuleChange]

    public init(old: AdapterFolder?, new: AdapterFolder?) throws {
        var changes: [(String, String?, String?)] = []
        let o = old?.adapter.config.json.objectValue ?? [], n = new?.adapter.config.json.objectValue ?? []
        var keys: [String] = []
        for (k, _) in o + n where !keys.contains(k) { keys.append(k) }
        for k in keys {
            let a = o.first { $0.0 == k }?.1.serialized(), b = n.first { $0.0 == k }?.1.serialized()
            if a != b { changes.append((k, a, b)) }
        }
        configChanges = changes
        var names: [String] = []
        for f in [old, new].compactMap({ $0 }) { for m in f.adapter.modules where !names.contains(m.name) { names.append(m.name) } }
        var out: [ModuleChange] = []
        for name in names {
            let om = old?.adapter.modules.first { $0.name == name }, nm = new?.adapter.modules.first { $0.name == name }
            let oldNorm = try om.map { try old!.deltaNorm($0) }, newNorm = try nm.map { try new!.deltaNorm($0) }
            var terms: [LoRACombination.Adapter] = [], weights: [Float] = []
            if let nm, let new {
                let (a, b) = try new.factors(nm)
                terms.append(try LoRACombination.Adapter(a: a, b: b, rank: nm.rank, inFeatures: nm.inFeatures, outFeatures: nm.outFeatures, scaling: Float(nm.scaling)))
                weights.append(1)
            }
            if let om, let old {
                let (a, b) = try old.factors(om)
                terms.append(try LoRACombination.Adapter(a: a, b: b, rank: om.rank, inFeatures: om.inFeatures, outFeatures: om.outFeatures, scaling: Float(om.scaling)))
                weights.append(-1)
            }
            let kind: ModuleChange.Kind
            var difference = 0.0
            if om == nil { kind = .added; difference = newNorm ?? 0 }
            else if nm == nil { kind = .removed; difference = oldNorm ?? 0 }
            else if terms[0].inFeatures != terms[1].inFeatures || terms[0].outFeatures != terms[1].outFeatures {
                kind = .changed
                difference = .infinity  // a reshaped module: no difference is defined
            } else {
                let both = try LoRACombination.cat(terms, weights: weights)
                difference = AdapterMerge.productNorm(a: both.a, b: both.b, rank: both.rank, inFeatures: both.inFeatures, outFeatures: both.outFeatures)
                // The Gram form cancels: a difference below √ε of the norms is recomputed from ΔW itself (double).
                if difference <= 1e-6 * max(oldNorm ?? 0, newNorm ?? 0) {
                    difference = Self.explicitNorm(both)
                }
                kind = difference == 0 ? .unchanged : .changed
            }
            let relative = (kind == .changed || kind == .unchanged) && (oldNorm ?? 0) > 0 ? difference / oldNorm! : nil
            out.append(ModuleChange(module: name, kind: kind, oldNorm: oldNorm, newNorm: newNorm, differenceNorm: difference, relative: relative))
        }
        modules = out
    }

    /// ‖B·A‖_F with B·A formed row by row in double precision.
    static func explicitNorm(_ f: LoRACombination.Factors) -> Double {
        var total = 0.0
        var row = [Double](repeating: 0, count: f.inFeatures)
        for o in 0..<f.outFeatures {
            for j in row.indices { row[j] = 0 }
            for r in 0..<f.rank {
                let b = Double(f.b[o * f.rank + r])
                if b == 0 { continue }
                for j in 0..<f.inFeatures { row[j] += b * Double(f.a[r * f.inFeatures + j]) }
            }
            for x in row { total += x * x }
        }
        return total.squareRoot()
    }

    /// Config keys whose values differ between two adapter_config.json (JSON objects), as `lines` prints them.
    public static func configLines(old: [UInt8], new: [UInt8]) -> [String]? {
        guard let o = (try? JSONParser.parse(old))?.objectValue, let n = (try? JSONParser.parse(new))?.objectValue else { return nil }
        var keys: [String] = []
        for (k, _) in o + n where !keys.contains(k) { keys.append(k) }
        return keys.compactMap { k in
            let a = o.first { $0.0 == k }?.1.serialized(), b = n.first { $0.0 == k }?.1.serialized()
            return a == b ? nil : "config    \(k): \(a ?? "(absent)") -> \(b ?? "(absent)")"
        }
    }

    /// The report `git diff` prints: config changes, then one line per module that changed, then counts.
    public func lines() -> [String] {
        var out: [String] = []
        for c in configChanges { out.append("config    \(c.key): \(c.old ?? "(absent)") -> \(c.new ?? "(absent)")") }
        for m in modules where m.kind != .unchanged {
            var s = "\(m.kind.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)) \(m.module)"
            if let o = m.oldNorm { s += String(format: "  |dW_old|=%.4g", o) }
            if let n = m.newNorm { s += String(format: "  |dW_new|=%.4g", n) }
            if m.kind == .changed { s += String(format: "  |dW_new-dW_old|=%.4g", m.differenceNorm) }
            if let r = m.relative { s += String(format: "  rel=%.4g", r) }
            out.append(s)
        }
        func count(_ k: ModuleChange.Kind) -> Int { modules.filter { $0.kind == k }.count }
        out.append("\(count(.changed)) modules changed, \(count(.added)) added, \(count(.removed)) removed, \(count(.unchanged)) unchanged (ΔW = s·B·A)")
        return out
    }
}
