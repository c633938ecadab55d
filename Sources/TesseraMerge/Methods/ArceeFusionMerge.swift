import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// `arcee_fusion` (Arcee's dynamic-threshold fusion) as mergekit 0.1.5 computes it, from the base b and the one
/// other model p:
///
///     importance = |p − b| · KL_row,   KL_row = Σ_row P·log(P/Q) along the last dimension,
///                  P = softmax(p) + 1e-8, Q = softmax(b) + 1e-8 (per row; a 1-D tensor is one row)
///     threshold  = median + 1.5·(q3 − q1) of the importances (quantiles at index ⌊q·(n − 1)⌋ of the sorted values)
///     θ = b + (p − b)·[importance ≥ threshold]
///
/// so only the entries whose change stands out (an upper-outlier fence, Tukey's 1.5 IQR) are taken from p. Subtleties:
/// when most entries are unchanged the quartiles are 0, the threshold is 0 and every entry is taken from p (as
/// b + (p − b), which may differ from p in the last bit). The KL of two nearby softmaxes cancels to a few significant
/// bits in mergekit's float32, and that rounding decides the gate of entries near the threshold, so the softmax and
/// the row sums are computed as torch's float32 CPU kernels compute them (`TorchSoftmax`, `TorchReductions`): float32 results agree with
/// mergekit's bit for bit. mergekit estimates the quantiles of a tensor of more than 1,000,000 entries from 1,000,000
/// entries drawn with torch's generator; Tessera uses the exact quantiles of every entry (deterministic, and what
/// mergekit computes for smaller tensors), so on such tensors the gate can differ from any one mergekit run near
/// the threshold.
///
/// In a 16-bit merge dtype mergekit runs these ops on 16-bit tensors: each is rounded to the dtype as torch rounds it
/// (`TorchRounding`: the softmax computed in float32 and rounded, + 1e-8, the ratio, the log, the products, the row
/// sum accumulated in float32 and rounded once, |p − b|, the importance, q3 − q1, 1.5·that, the threshold), so the
/// gate is mergekit's. Its mask is float32, which promotes the result: b + (p − b)·mask is a float32 tensor (of the
/// 16-bit b and p − b) whatever the inputs' dtype, and mergekit writes it so unless `out_dtype` is set
/// (`resultDType`). No parameters; the base and exactly one other model.
public struct ArceeFusionMerge: MergeMethod {
    public static let name = "arcee_fusion"
    public static let summary = "take the other model's changes whose importance (|Δ|·KL) passes a dynamic IQR threshold"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = []
    public static let modelParameters: [ParameterDefinition] = [
        .number("weight", 1, help: "accepted and ignored (arcee_fusion does not weight models)"),
    ]
    public init() {}

    /// float32: the float32 fusion mask promotes a 16-bit merge's result.
    public static func resultDType(computeDType: DType, nonBaseModels: Int) -> DType? {
        computeDType == .f16 || computeDType == .bf16 ? .f32 : nil
    }

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        var base = try input.requireBase(Self.name)
        input.base = nil
        let others = input.nonBaseIndices
        guard others.count == 1 else {
            throw TesseraError(.usage, "arcee_fusion: needs exactly two models, the base and one other; got \(others.count) besides the base (tensor '\(input.name)')",
                               hint: "list the base model and one other model")
        }
        let p = input.models[others[0]]
        input.models = []
        let n = base.count
        guard p.count == n else {
            throw TesseraError(.shapeMismatch, "arcee_fusion: tensor '\(input.name)' has \(p.count) values in the model, \(n) in the base")
        }
        guard n > 0 else { return base }
        let rowLength = max(1, input.shape.last ?? n)
        let rows = n / rowLength
        let r = TorchRounding(input.computeDType)
        // Importance, in float32: |p − b| times the row's KL divergence, computed as torch computes it (`TorchSoftmax`, `TorchReductions`).
        var importance = [Float](repeating: 0, count: n)
        importance.withUnsafeMutableBufferPointer { ib in
            let out = SharedMutablePointer(ib.baseAddress!)
            p.withUnsafeBufferPointer { pb in
                base.withUnsafeBufferPointer { bb in
                    let pp = SharedPointer(pb.baseAddress!), bp = SharedPointer(bb.baseAddress!)
                    let chunks = n >= Parallel.minimumParallelCount ? min(rows, Parallel.chunksPerCore * 2) : 1
                    Parallel.forEach(chunks) { c in
                        var sp = [Float](repeating: 0, count: rowLength), sq = sp, terms = sp
                        for row in (rows * c / chunks)..<(rows * (c + 1) / chunks) {
                            let lo = row * rowLength
                            sp.withUnsafeMutableBufferPointer { TorchSoftmax.softmax(pp.base + lo, count: rowLength, into: $0.baseAddress!) }
                            sq.withUnsafeMutableBufferPointer { TorchSoftmax.softmax(bp.base + lo, count: rowLength, into: $0.baseAddress!) }
                            let eps = Float(1e-8)
                            if r.isIdentity {
                                for j in 0..<rowLength {
                                    let a = sp[j] + eps, b = sq[j] + eps
                                    terms[j] = a * Float(log(Double(a / b)))
                                }
                                let kl = TorchReductions.sum(terms)
                                for j in 0..<rowLength { out[lo + j] = abs(pp[lo + j] - bp[lo + j]) * kl }
                            } else {
                                // Each op of a 16-bit tensor rounded to the dtype; the row sum in float32, rounded once.
                                for j in 0..<rowLength {
                                    let a = r(r(sp[j]) + eps), b = r(r(sq[j]) + eps)
                                    terms[j] = r(a * r(Float(log(Double(r(a / b))))))
                                }
                                let kl = r(TorchReductions.sum(terms))
                                for j in 0..<rowLength { out[lo + j] = r(r(abs(pp[lo + j] - bp[lo + j])) * kl) }
                            }
                        }
                    }
                }
            }
        }
        let threshold = Self.threshold(importance, r)
        // b + (p − b)·mask for every entry, as mergekit writes it (a −0 base entry left by the gate becomes +0 when
        // (p − b)·0 is +0, so the gated entries are not simply b). In a 16-bit merge p − b is rounded to the dtype;
        // the product with the float32 mask and the sum are float32.
        for j in 0..<n {
            let mask: Float = importance[j] >= threshold ? 1 : 0
            base[j] = base[j] + r(p[j] - base[j]) * mask
        }
        return base
    }

    /// median + 1.5·(q3 − q1), the quantiles at sorted index ⌊q·(n − 1)⌋, in float32 (each op rounded by `r` in a
    /// 16-bit merge).
    static func threshold(_ importance: [Float], _ r: TorchRounding = TorchRounding(.f32)) -> Float {
        let n = importance.count
        let positions = [(n - 1) / 4, (n - 1) / 2, 3 * (n - 1) / 4]
        var q: [Float]
        if importance.allSatisfy({ $0 >= 0 }) {
            // Non-negative (the usual case: KL ≥ 0): order statistics of the magnitudes, no sort, no copy.
            q = importance.withUnsafeBufferPointer { ib in
                positions.map { Float(bitPattern: MagnitudeSelect.threshold(ib, rank: $0, descending: false).value) }
            }
        } else {
            let sorted = importance.sorted()
            q = positions.map { sorted[$0] }
        }
        return r(q[1] + r(Float(1.5) * r(q[2] - q[0])))
    }
}
