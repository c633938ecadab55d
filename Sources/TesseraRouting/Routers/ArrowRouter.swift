import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// Arrow (Ostapenko et al. 2024, mttl's `arrow_router`): per expert and module, the prototype is the top right
/// singular vector v of ΔW = B·A (the input direction the expert changes most). A token x scores each expert
/// |⟨x, v⟩| / T (the absolute value makes the arbitrary sign of v irrelevant; T = 1 unless set), then top-k with a
/// softmax over the chosen k (or over all experts when k is 0).
public final class ArrowRouter: ExpertRouter {
    public static let kind = "arrow_prototype"
    public let method = "arrow"
    public let prototypes: RouterVectors
    public let topK: Int
    public let temperature: Float

    public init(prototypes: RouterVectors, topK: Int, temperature: Float?) throws {
        guard prototypes.kind == Self.kind else {
            throw TesseraError(.invalidParameter, "an Arrow router needs \(Self.kind) vectors, not \(prototypes.kind)", hint: "rebuild the router")
        }
        let t = temperature ?? 1
        guard t > 0, t.isFinite else { throw TesseraError(.invalidParameter, "the Arrow temperature must be positive", hint: "pass --temperature T > 0") }
        self.prototypes = prototypes
        self.topK = topK
        self.temperature = t
    }

    public func prepare(modules: [RoutedModule]) throws { try prototypes.check(modules, method: method) }

    public func route(_ x: UnsafePointer<Float>, stride: Int, rows: Int, module: RoutedModule, context: RoutingContext,
                      into weights: UnsafeMutablePointer<Float>) {
        guard let m = prototypes.modules[module.name] else { return }
        let e = module.experts.count
        m.values.withUnsafeBufferPointer { p in
            guard let p = p.baseAddress else { return }
            for t in 0..<rows {
                let row = weights + t * e
                RoutingMath.dots(x + t * stride, vectors: p, inputs: m.inputs, experts: module.experts, into: row)
                for j in 0..<e { row[j] = abs(row[j]) / temperature }
                TopKSoftmax.apply(row, count: e, k: topK)
            }
        }
    }

    /// The Arrow prototype of one LoRA module: the top right singular vector of B·A (A [rank, inputs], B [outputs,
    /// rank], PEFT's layout; the scaling does not change it) with the sign that makes its largest-magnitude entry
    /// positive, and σ₁² (of B·A unscaled, as mttl reports it). Exact in float64 without forming the
    /// [outputs × inputs] product: with the thin SVD A = U_A·Σ_A·V_Aᵀ, B·A = (B·U_A·Σ_A)·V_Aᵀ, so the top right
    /// singular vector w of the [outputs × rank] matrix D = B·U_A·Σ_A gives v = V_A·w and the same σ₁.
    public static func prototype(a: [Float], b: [Float], rank: Int, inputs: Int, outputs: Int) throws -> (vector: [Float], eigenvalue: Double) {
        guard rank > 0, inputs > 0, outputs > 0, a.count == rank * inputs, b.count == outputs * rank else {
            throw TesseraError(.shapeMismatch, "LoRA factors of \(a.count) and \(b.count) values are not A [\(rank), \(inputs)] and B [\(outputs), \(rank)]",
                               hint: "the adapter is malformed")
        }
        guard let svdA = Linalg.svd(a.map(Double.init), m: rank, n: inputs) else {
            throw TesseraError(.invalidParameter, "the SVD of a LoRA A factor did not converge", hint: "check the adapter for extreme values")
        }
        let k = min(rank, inputs)
        // D [outputs × k] = B · U_A · Σ_A
        var d = [Double](repeating: 0, count: outputs * k)
        for o in 0..<outputs {
            for j in 0..<k {
                var s = 0.0
                for r in 0..<rank { s += Double(b[o * rank + r]) * svdA.u[r * k + j] }
                d[o * k + j] = s * svdA.s[j]
            }
        }
        guard let svdD = Linalg.svd(d, m: outputs, n: k) else {
            throw TesseraError(.invalidParameter, "the SVD of a LoRA update did not converge", hint: "check the adapter for extreme values")
        }
        // v = V_A · w, with w the first row of D's Vᵀ and V_A the transpose of A's Vᵀ [k × inputs].
        var v = [Double](repeating: 0, count: inputs)
        for j in 0..<k {
            let w = svdD.vt[j]
            for i in 0..<inputs { v[i] += svdA.vt[j * inputs + i] * w }
        }
        let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if norm > 0 { for i in v.indices { v[i] /= norm } }
        var largest = 0
        for i in v.indices where abs(v[i]) > abs(v[largest]) { largest = i }
        if v[largest] < 0 { for i in v.indices { v[i] = -v[i] } }
        let sigma = svdD.s.first ?? 0
        return (v.map { Float($0) }, sigma * sigma)
    }
}
