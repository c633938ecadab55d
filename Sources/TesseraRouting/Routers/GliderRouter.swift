import Foundation
import TesseraCore
import TesseraIO

/// Glider (Li et al. 2024): PhatGOOSE's local, per-token router plus a global one that looks at the whole input once.
/// Each expert has a task description (written by the library's own language model from a few of its training
/// examples, or given by the user), embedded with a sentence embedder (MiniLM); the input is embedded the same way, and
/// its cosine similarity with each description is the expert's global score. Per token and module the logits are
/// local + α · global, then top-k with a softmax over the chosen k, as the paper combines them (α = 1 unless set).
///
/// The global scores come from `RoutingContext.globalScores` (library order), which `RoutedLanguageModel` sets from
/// each input before the forward pass; without them the router is PhatGOOSE's.
public final class GliderRouter: ExpertRouter {
    public let method = "glider"
    public let local: PhatGOOSERouter
    public let alpha: Float

    public init(gates: RouterVectors, topK: Int, temperature: Float?, alpha: Float?) throws {
        local = try PhatGOOSERouter(gates: gates, topK: topK, temperature: temperature, method: "glider")
        let a = alpha ?? 1
        guard a.isFinite, a >= 0 else { throw TesseraError(.invalidParameter, "the Glider α must be a finite number ≥ 0", hint: "pass --alpha A") }
        self.alpha = a
    }

    public func prepare(modules: [RoutedModule]) throws { try local.prepare(modules: modules) }

    public func route(_ x: UnsafePointer<Float>, stride: Int, rows: Int, module: RoutedModule, context: RoutingContext,
                      into weights: UnsafeMutablePointer<Float>) {
        local.localLogits(x, stride: stride, rows: rows, module: module, into: weights)
        let e = module.experts.count
        let global = context.globalScores
        for t in 0..<rows {
            let row = weights + t * e
            if let global {
                for (j, expert) in module.experts.enumerated() where expert < global.count { row[j] += alpha * global[expert] }
            }
            TopKSoftmax.apply(row, count: e, k: local.topK)
        }
    }

    /// Cosine similarity of an input embedding with each expert's description embedding.
    public static func globalScores(input: [Float], descriptions: [[Float]]) -> [Float] {
        func norm(_ v: [Float]) -> Float { v.reduce(0) { $0 + $1 * $1 }.squareRoot() }
        let ni = norm(input)
        return descriptions.map { d in
            guard d.count == input.count else { return 0 }
            let nd = norm(d)
            guard ni > 0, nd > 0 else { return 0 }
            var s: Float = 0
            for i in d.indices { s += d[i] * input[i] }
            return s / (ni * nd)
        }
    }
}
