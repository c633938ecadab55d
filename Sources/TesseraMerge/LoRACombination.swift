import TesseraCore
import TesseraIO
import TesseraMath

/// PEFT's `add_weighted_adapter` for LoRA factors (layout: A [r, d_in], B [d_out, r], ΔW = s · B · A), on ΔW, the
/// thing that is actually added to the weights:
/// - `cat`: exact. ΔW = Σ_i w_i s_i B_i A_i, returned as concatenated factors A = [w_i s_i A_i] stacked by rows,
///   B = [B_i] side by side, scaling 1, rank Σ r_i.
/// - `svd`: the best rank-r approximation of that ΔW (Eckart–Young) from LAPACK's sgesdd: A = Vᵀ[:r], B = U[:, :r]·Σ[:r],
///   scaling 1. Factors are unique only up to the sign of each rank-1 component; ΔW is what to compare.
/// Averaging A and B separately is not averaging ΔW and is not offered here.
public enum LoRACombination {
    public struct Adapter: Sendable {
        public var a: [Float]
        public var b: [Float]
        public var rank: Int
        public var inFeatures: Int
        public var outFeatures: Int
        public var scaling: Float

        public init(a: [Float], b: [Float], rank: Int, inFeatures: Int, outFeatures: Int, scaling: Float) throws {
            guard a.count == rank * inFeatures, b.count == outFeatures * rank, rank > 0 else {
                throw TesseraError(.shapeMismatch, "LoRA factors do not fit: A has \(a.count) values for [\(rank), \(inFeatures)], B has \(b.count) for [\(outFeatures), \(rank)]",
                                   hint: "A is [r, d_in] and B is [d_out, r] (PEFT layout)")
            }
            self.a = a
            self.b = b
            self.rank = rank
            self.inFeatures = inFeatures
            self.outFeatures = outFeatures
            self.scaling = scaling
        }

        /// From safetensors-style raw tensors (shapes taken from them).
        public init(a: RawTensor, b: RawTensor, scaling: Float) throws {
            guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == b.shape[1] else {
                throw TesseraError(.shapeMismatch, "LoRA factors have shapes A \(a.shape) and B \(b.shape); expected A [r, d_in] and B [d_out, r]",
                                   hint: "pass lora_A and lora_B of the same adapter")
            }
            try self.init(a: try a.floats(name: "lora_A"), b: try b.floats(name: "lora_B"), rank: a.shape[0],
                          inFeatures: a.shape[1], outFeatures: b.shape[0], scaling: scaling)
        }
    }

    public struct Factors: Sendable {
        /// [rank, inFeatures]
        public var a: [Float]
        /// [outFeatures, rank]
        public var b: [Float]
        public var rank: Int
        public var inFeatures: Int
        public var outFeatures: Int
        /// The new adapter's scaling (always 1: the weights and old scalings are folded into the factors).
        public var scaling: Float { 1 }
        /// ΔW = B · A, [outFeatures, inFeatures].
        public var deltaWeight: [Float] { matmul(b, a, m: outFeatures, k: rank, n: inFeatures) }
    }

    static func check(_ adapters: [Adapter], _ weights: [Float]) throws {
        guard !adapters.isEmpty, adapters.count == weights.count else {
            throw TesseraError(.invalidParameter, "LoRA combination needs one weight per adapter (\(adapters.count) adapters, \(weights.count) weights)",
                               hint: "give a weight for every adapter")
        }
        let first = adapters[0]
        for (i, a) in adapters.enumerated() where a.inFeatures != first.inFeatures || a.outFeatures != first.outFeatures {
            throw TesseraError(.shapeMismatch, "adapter \(i) maps \(a.inFeatures) → \(a.outFeatures) features, adapter 0 maps \(first.inFeatures) → \(first.outFeatures)",
                               hint: "combine adapters of the same layer")
        }
    }

    /// ΔW = Σ_i w_i s_i B_i A_i, [d_out, d_in], float32 (sgemm accumulating into one buffer).
    public static func deltaWeight(_ adapters: [Adapter], weights: [Float]) throws -> [Float] {
        try check(adapters, weights)
        let dOut = adapters[0].outFeatures, dIn = adapters[0].inFeatures
        let (count, overflow) = dOut.multipliedReportingOverflow(by: dIn)
        guard !overflow else {
            throw TesseraError(.shapeMismatch, "LoRA ΔW of \(dOut) × \(dIn) values is too large to compute", hint: "check the adapters' shapes")
        }
        var out = [Float](repeating: 0, count: count)
        guard count > 0 else { return out }  // an empty layer: nothing to multiply (and no storage to point at)
        for (ad, w) in zip(adapters, weights) {
            ad.b.withUnsafeBufferPointer { bp in
                ad.a.withUnsafeBufferPointer { ap in
                    out.withUnsafeMutableBufferPointer { op in
                        Linalg.matmul(bp.baseAddress!, ap.baseAddress!, op.baseAddress!, m: dOut, n: dIn, k: ad.rank,
                                      alpha: w * ad.scaling, beta: 1)
                    }
                }
            }
        }
        return out
    }

    /// `cat`: the exact combination as concatenated factors.
    public static func cat(_ adapters: [Adapter], weights: [Float]) throws -> Factors {
        try check(adapters, weights)
        let dOut = adapters[0].outFeatures, dIn = adapters[0].inFeatures
        let rank = adapters.reduce(0) { $0 + $1.rank }
        var a = [Float]()
        a.reserveCapacity(rank * dIn)
        var b = [Float](repeating: 0, count: dOut * rank)
        var col = 0
        for (ad, w) in zip(adapters, weights) {
            let f = w * ad.scaling
            a += ad.a.map { $0 * f }
            for o in 0..<dOut { for r in 0..<ad.rank { b[o * rank + col + r] = ad.b[o * ad.rank + r] } }
            col += ad.rank
        }
        return Factors(a: a, b: b, rank: rank, inFeatures: dIn, outFeatures: dOut)
    }

    /// `svd`: the best rank-`rank` approximation of the combined ΔW.
    public static func svd(_ adapters: [Adapter], weights: [Float], rank: Int) throws -> Factors {
        try factorize(try deltaWeight(adapters, weights: weights), outFeatures: adapters[0].outFeatures, inFeatures: adapters[0].inFeatures, rank: rank)
    }

    /// The best rank-`rank` factors of a ΔW [outFeatures, inFeatures] (row-major).
    public static func factorize(_ dW: [Float], outFeatures m: Int, inFeatures n: Int, rank: Int) throws -> Factors {
        let k = min(m, n)
        guard dW.count == m * n, k > 0 else {
            throw TesseraError(.shapeMismatch, "a ΔW of \(dW.count) values is not \(m) × \(n)", hint: "check the adapters' shapes")
        }
        guard rank >= 1, rank <= k else {
            throw TesseraError(.invalidParameter, "svd rank \(rank) is outside 1...\(k) for a \(m)×\(n) ΔW", hint: "choose a rank between 1 and \(k)")
        }
        guard let (s, u, vt) = Linalg.svd(dW, m: m, n: n) else {
            throw TesseraError(.invalidParameter, "the SVD of the combined ΔW did not converge", hint: "check the adapters for NaN or infinite values")
        }
        var a = [Float](repeating: 0, count: rank * n)
        var b = [Float](repeating: 0, count: m * rank)
        for r in 0..<rank { for j in 0..<n { a[r * n + j] = vt[r * n + j] } }
        for i in 0..<m { for r in 0..<rank { b[i * rank + r] = u[i * k + r] * s[r] } }
        return Factors(a: a, b: b, rank: rank, inFeatures: n, outFeatures: m)
    }

    static func matmul(_ x: [Float], _ y: [Float], m: Int, k: Int, n: Int) -> [Float] {
        var out = [Float](repeating: 0, count: m * n)
        guard m > 0, n > 0, k > 0 else { return out }  // a product with an empty side is zero
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                out.withUnsafeMutableBufferPointer { op in
                    Linalg.matmul(xp.baseAddress!, yp.baseAddress!, op.baseAddress!, m: m, n: n, k: k)
                }
            }
        }
        return out
    }
}
