import Foundation
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

/// Runs a plan and collects its output.
func runMerge(_ plan: MergePlan) throws -> [String: RawTensor] {
    var out: [String: RawTensor] = [:]
    try MergeDriver.run(plan) { out[$0] = $1 }
    return out
}

/// max |a − b| / max |b|: the relative error the reference README asks for (1e-6).
func relativeError(_ a: [Float], _ b: [Float]) -> Double {
    precondition(a.count == b.count)
    var num = 0.0, den = 0.0
    for k in a.indices {
        num = max(num, abs(Double(a[k]) - Double(b[k])))
        den = max(den, abs(Double(b[k])))
    }
    return den == 0 ? num : num / den
}

/// Plain, slow restatements of the reference spec (spec_reference.py), used as independent oracles: sort-based,
/// no radix select, no parallelism.
enum NaiveSpec {
    /// Indices by |x| descending, ties by lower index (spec `stable_desc_order`).
    static func descOrder(_ x: [Float]) -> [Int] {
        x.indices.sorted { (abs(x[$0]), -$0) > (abs(x[$1]), -$1) }
    }

    /// Indices by |x| descending in the order torch's (non-stable) argsort gives ties: `TorchSort.order`, itself
    /// checked against torch's output in MergeDTypeTests.
    static func torchDescOrder(_ x: [Float]) -> [Int] {
        x.map { abs($0) }.withUnsafeBufferPointer { TorchSort.order($0, descending: true) }.map { Int($0) }
    }

    /// Keeps the k largest magnitudes: ties by lower index (PEFT, the reference spec) or in torch's order (mergekit).
    static func magnitude(_ d: [Float], density: Double, atLeastOne: Bool = true, torchTies: Bool = false) -> [Float] {
        if density >= 1 { return d }
        var k = Int(density * Double(d.count))
        if atLeastOne { k = max(1, k) }
        var out = [Float](repeating: 0, count: d.count)
        for i in (torchTies ? torchDescOrder(d) : descOrder(d)).prefix(k) { out[i] = d[i] }
        return out
    }

    static func sign(_ v: Float) -> Float { v > 0 ? 1 : (v < 0 ? -1 : 0) }

    /// mergekit's GTA with magnitude sparsification and sum consensus (spec `mk_gta`; ties at the trim threshold
    /// resolved as torch's sort resolves them).
    static func mergekitTies(base: [Float], models: [[Float]], weights: [Float], density: Double, normalize: Bool = true, lambda: Float = 1) -> [Float] {
        let D = models.map { m in magnitude(zip(m, base).map { $0 - $1 }, density: density, torchTies: true) }
        var out = base
        for j in base.indices {
            var s: Float = 0
            for i in D.indices { s += D[i][j] * weights[i] }
            let maj: Float = s >= 0 ? 1 : -1
            var mixed: Float = 0, div: Float = 0
            for i in D.indices where sign(D[i][j] * weights[i]) == maj { mixed += D[i][j] * weights[i]; div += weights[i] }
            if div == 0 { div = 1 }
            if normalize { mixed /= div }
            out[j] = base[j] + mixed * lambda
        }
        return out
    }

    /// PEFT's ties (spec `peft_ties`), applied to the base.
    static func peftTies(base: [Float], models: [[Float]], weights: [Float], density: Double, lambda: Float = 1) -> [Float] {
        let T = models.map { m in magnitude(zip(m, base).map { $0 - $1 }, density: density, atLeastOne: false) }
        var out = base
        for j in base.indices {
            var s: Float = 0
            for t in T { s += t[j] }
            let maj: Float = s >= 0 ? 1 : -1
            var acc: Float = 0, count: Float = 0
            for i in T.indices where sign(T[i][j]) == maj { acc += T[i][j] * weights[i]; count += 1 }
            out[j] = base[j] + lambda * acc / max(count, 1)
        }
        return out
    }

    /// The TIES paper's code (spec `ties_paper`) over flat task vectors [model][param].
    static func paperTies(_ tvs: [[Float]], k: Double, lambda: Float = 1) -> [Float] {
        let n = tvs[0].count
        let kth = n - Int(k * Double(n))
        let T: [[Float]] = tvs.map { tv in
            let thr = tv.map { abs($0) }.sorted()[kth - 1]
            return tv.map { abs($0) >= thr ? $0 : 0 }
        }
        var elected = [Float](repeating: 0, count: n)
        for j in 0..<n { var s: Float = 0; for t in T { s += t[j] }; elected[j] = sign(s) }
        let global = sign(elected.reduce(0, +))
        for j in 0..<n where elected[j] == 0 { elected[j] = global }
        var out = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var acc: Float = 0, count: Float = 0
            for t in T {
                let v = t[j]
                if elected[j] > 0 ? v > 0 : v < 0 { acc += v; count += 1 }
            }
            out[j] = lambda * acc / max(count, 1)
        }
        return out
    }
}
