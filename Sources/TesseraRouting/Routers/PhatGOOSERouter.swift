import Foundation
import TesseraMath
import TesseraCore
import TesseraIO

/// PhatGOOSE (Muqeeth et al. 2024, mttl's `phatgoose_router`): each expert has, per module, a gate vector g trained
/// on the expert's own data with base and expert frozen (`tessera train gates`). A token x scores each expert
/// LN(x)·LN(g)/√d (LayerNorm without affine, eps 1e-5; d the module's input width, unless a temperature is set),
/// then top-k (2 by default) with a softmax over the chosen k.
public final class PhatGOOSERouter: ExpertRouter {
    public static let kind = "phatgoose_gate"
    public let method: String
    public let gates: RouterVectors
    public let topK: Int
    public let temperature: Float?
    /// LN(g) per module, [experts × inputs].
    private let normalizedGates: [String: [Float]]

    public init(gates: RouterVectors, topK: Int, temperature: Float?, method: String = "phatgoose") throws {
        guard gates.kind == Self.kind else {
            throw TesseraError(.invalidParameter, "a PhatGOOSE router needs \(Self.kind) vectors, not \(gates.kind)", hint: "rebuild the router")
        }
        if let temperature, !(temperature > 0 && temperature.isFinite) {
            throw TesseraError(.invalidParameter, "the PhatGOOSE temperature must be positive", hint: "pass --temperature T > 0, or leave it out for √d")
        }
        self.method = method
        self.gates = gates
        self.topK = topK
        self.temperature = temperature
        var normalized: [String: [Float]] = [:]
        for (name, m) in gates.modules {
            var out = [Float](repeating: 0, count: m.values.count)
            for e in 0..<gates.experts {
                let row = RoutingMath.layerNorm(Array(m.values[(e * m.inputs)..<((e + 1) * m.inputs)]))
                for i in 0..<m.inputs { out[e * m.inputs + i] = row[i] }
            }
            normalized[name] = out
        }
        normalizedGates = normalized
    }

    public func prepare(modules: [RoutedModule]) throws { try gates.check(modules, method: method) }

    /// The local logits LN(x)·LN(g)/T for each row and each of the module's experts.
    func localLogits(_ x: UnsafePointer<Float>, stride: Int, rows: Int, module: RoutedModule, into logits: UnsafeMutablePointer<Float>) {
        guard let g = normalizedGates[module.name] else { return }
        let d = module.inputs, e = module.experts.count
        let scale = 1 / (temperature ?? Float(d).squareRoot())
        let normalizedRow = UnsafeMutablePointer<Float>.allocate(capacity: d)
        defer { normalizedRow.deallocate() }
        g.withUnsafeBufferPointer { gp in
            guard let gp = gp.baseAddress else { return }
            for t in 0..<rows {
                RoutingMath.layerNorm(x + t * stride, count: d, into: normalizedRow)
                RoutingMath.dots(normalizedRow, vectors: gp, inputs: d, experts: module.experts, into: logits + t * e)
                for j in 0..<e { logits[t * e + j] *= scale }
            }
        }
    }

    public func route(_ x: UnsafePointer<Float>, stride: Int, rows: Int, module: RoutedModule, context: RoutingContext,
                      into weights: UnsafeMutablePointer<Float>) {
        localLogits(x, stride: stride, rows: rows, module: module, into: weights)
        let e = module.experts.count
        for t in 0..<rows { TopKSoftmax.apply(weights + t * e, count: e, k: topK) }
    }
}
