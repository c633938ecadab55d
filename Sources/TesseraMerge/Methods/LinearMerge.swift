import TesseraCore
import TesseraIO
import TesseraMath

/// `linear`: the weighted average Σ w_i θ_i / Σ w_i (normalize: true, the default) or the weighted sum Σ w_i θ_i.
/// The base model takes part only if it is listed among the models. Σ w_i = 0 under normalisation is an error
/// (mergekit would divide by zero).
public struct LinearMerge: MergeMethod {
    public static let name = "linear"
    public static let summary = "weighted average (or weighted sum with normalize: false)"
    public static let baseUse = BaseUse.ignored
    public static let globalParameters: [ParameterDefinition] = [CommonParameters.normalize(true), CommonParameters.int8Mask]
    public static let modelParameters: [ParameterDefinition] = [CommonParameters.weight]
    public init() {}

    public static let readsViews = true

    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        let models = input.models
        input.models = []  // only read: a provenance hash may still hold them, and writing would copy each one first
        return try withReadOnlyPointers(models) { ps in
            try Self.average(name: input.name, ps, count: models.first?.count ?? 0, modelParameters: input.modelParameters,
                             parameters: input.parameters)
        }
    }

    public func merge(views: TensorMergeViews) throws -> [Float] {
        try Self.average(name: views.name, views.models.map { $0.baseAddress ?? UnsafePointer(bitPattern: MemoryLayout<Float>.alignment)! },
                         count: views.elementCount, modelParameters: views.modelParameters, parameters: views.parameters)
    }

    /// The result goes to fresh storage. The sum runs model by model over blocks small enough to stay in L1, so each
    /// pass is a plain vector loop; the terms are added in the same order as mergekit's, each with one fused
    /// multiply-add (torch's `addcmul_`), so the result is bit-identical to mergekit's. mergekit computes linear in
    /// float32 whatever the merge dtype and rounds once at the end, so a 16-bit dtype needs no emulation here.
    static func average(name: String, _ ps: [UnsafePointer<Float>], count n: Int, modelParameters: [MergeParameters],
                        parameters: MergeParameters) throws -> [Float] {
        let m = ps.count
        guard m > 0 else { throw TesseraError(.usage, "linear: no models to merge (tensor '\(name)')", hint: "list models in the merge config") }
        let weights = try modelParameters.map { Float(try $0.double("weight")) }
        let normalize = try parameters.bool("normalize")
        var sum: Float = 0
        for w in weights { sum += w }
        if normalize && abs(sum) < 1e-8 {
            throw TesseraError(.invalidParameter, "linear: the weights sum to \(sum) under normalize: true (tensor '\(name)')",
                               hint: "use weights with a non-zero sum, or normalize: false")
        }
        let block = 4096
        return [Float](unsafeUninitializedCapacity: n) { o, initialized in
            let out = SharedMutablePointer(o.baseAddress ?? UnsafeMutablePointer<Float>(bitPattern: MemoryLayout<Float>.alignment)!)
            let inputs = UncheckedSendable(ps)
            Parallel.forChunks(n) { _, r in
                var lo = r.lowerBound
                while lo < r.upperBound {
                    let count = min(block, r.upperBound - lo)
                    weightedSum(out.base + lo, inputs.value, offset: lo, weights, count: count, divisor: normalize ? sum : nil)
                    lo += count
                }
            }
            initialized = n
        }
    }

    /// o = fma(x_{m-1}, w_{m-1}, ... fma(x_1, w_1, w_0 x_0)) [/ divisor] over elements offset..<offset+count of the
    /// inputs, term by term left to right.
    @inline(__always)
    static func weightedSum(_ o: UnsafeMutablePointer<Float>, _ xs: [UnsafePointer<Float>], offset: Int, _ w: [Float], count: Int,
                            divisor: Float?) {
        let x0 = xs[0] + offset, w0 = w[0]
        for j in 0..<count { o[j] = w0 * x0[j] }
        for i in 1..<xs.count {
            MergeKernels.fusedMultiplyAdd(o, xs[i] + offset, w[i], count: count)
        }
        if let d = divisor { for j in 0..<count { o[j] /= d } }
    }
}
