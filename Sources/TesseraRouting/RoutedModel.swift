import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// Attaches a library of LoRA experts to a loaded model (Llama, GPT-2, GPT-Neo, BERT) behind a router: every
/// projection some expert adapts gets a `RoutedLoRAAdapter` holding all its experts, weighted per token.
public enum RoutedAttachment {
    public struct Summary: Sendable, Equatable {
        public var modules: Int
        public var projections: Int
        public var experts: Int
    }

    /// The routed modules of `experts` on `model` (what a router must cover), without changing the model.
    public static func modules(_ experts: [LoRAAdapterInput], on model: AnyObject) throws -> [RoutedModule] {
        try groups(experts, on: model).flatMap { $0.groups.map(\.module) }
    }

    static func groups(_ experts: [LoRAAdapterInput], on model: AnyObject) throws -> [(projection: Projection, groups: [RoutedLoRAAdapter.Group])] {
        guard !experts.isEmpty else {
            throw TesseraError(.invalidParameter, "the library has no experts", hint: "add one with `tessera experts add`")
        }
        let resolved = try LoRAAdapterAttachment.resolve(experts, on: model)
        return try resolved.map { entry in
            var order: [String] = [], byModule: [String: (rows: Range<Int>, experts: [RoutedLoRAAdapter.ExpertFactors])] = [:]
            for r in entry.parts {
                let factors = RoutedLoRAAdapter.ExpertFactors(expert: r.input, rank: r.part.rank, a: r.part.a, b: r.part.b, scaling: r.part.scaling)
                if var m = byModule[r.module] {
                    guard m.rows == r.part.rows else {
                        throw TesseraError(.shapeMismatch, "\(experts[r.input].name): '\(r.module)' covers other rows than the other experts' same module",
                                           hint: "the experts were made for different models")
                    }
                    guard !m.experts.contains(where: { $0.expert == r.input }) else {
                        throw TesseraError(.invalidParameter, "\(experts[r.input].name): module '\(r.module)' appears twice", hint: "the adapter is malformed")
                    }
                    m.experts.append(factors)
                    byModule[r.module] = m
                } else {
                    order.append(r.module)
                    byModule[r.module] = (r.part.rows, [factors])
                }
            }
            let groups = order.compactMap { name -> RoutedLoRAAdapter.Group? in
                guard let m = byModule[name] else { return nil }
                let sorted = m.experts.sorted { $0.expert < $1.expert }
                return RoutedLoRAAdapter.Group(module: RoutedModule(name: name, inputs: entry.projection.inputs, experts: sorted.map(\.expert)),
                                               rows: m.rows, experts: sorted)
            }
            return (entry.projection, groups)
        }
    }

    /// Attaches `experts` (library order) to `model` behind `router`; throws, changing nothing, if an expert does not
    /// fit the model or the router lacks something for a module.
    @discardableResult
    public static func attach(_ experts: [LoRAAdapterInput], router: ExpertRouter, mixing: ExpertMixing, context: RoutingContext,
                              to model: AnyObject) throws -> Summary {
        let groups = try groups(experts, on: model)
        try router.prepare(modules: groups.flatMap { $0.groups.map(\.module) })
        let adapters = try groups.map { entry in
            (entry.projection, try RoutedLoRAAdapter(inputs: entry.projection.inputs, outputs: entry.projection.outputs, groups: entry.groups,
                                                     router: router, context: context, mixing: mixing, name: entry.projection.name))
        }
        try LoRAAdapterAttachment.detach(from: model)
        for (p, a) in adapters { p.adapter = a }
        return Summary(modules: groups.reduce(0) { $0 + $1.groups.count }, projections: adapters.count, experts: experts.count)
    }
}

/// A causal language model whose routed layers need to know each input: before every forward it sets the routing
/// context's global scores (Glider: the input's embedding against each expert's description) from the request's
/// context text. The oracle's task is set per evaluation task by the caller (`context.task`).
public final class RoutedLanguageModel: CausalLanguageModel {
    public let inner: any CausalLanguageModel
    public let context: RoutingContext
    private let tokenizer: (any TextTokenizer)?
    /// Text → per-expert global scores (library order).
    private let globalScorer: ((String) throws -> [Float])?
    private var lastText: String?
    private var lastScores: [Float]?

    public init(_ inner: any CausalLanguageModel, context: RoutingContext, tokenizer: (any TextTokenizer)? = nil,
                globalScorer: ((String) throws -> [Float])? = nil) {
        self.inner = inner
        self.context = context
        self.tokenizer = tokenizer
        self.globalScorer = globalScorer
    }

    public var vocabularySize: Int { inner.vocabularySize }
    public var maxSequenceLength: Int { inner.maxSequenceLength }

    private func setGlobal(_ tokens: [Int]) throws {
        guard let globalScorer, let tokenizer else { return }
        let text = tokenizer.decode(tokens)
        if text != lastText {
            lastScores = try globalScorer(text)
            lastText = text
        }
        context.globalScores = lastScores
    }

    public func scoreContinuations(_ requests: [(context: [Int], continuation: [Int])]) throws -> [[Float]] {
        guard globalScorer != nil else { return try inner.scoreContinuations(requests) }
        // Requests sharing a context (a multiple-choice question's choices) share its global scores and its prefix.
        var out: [[Float]] = []
        var start = 0
        while start < requests.count {
            var end = start + 1
            while end < requests.count, requests[end].context == requests[start].context { end += 1 }
            try setGlobal(requests[start].context)
            out += try inner.scoreContinuations(Array(requests[start..<end]))
            start = end
        }
        return out
    }

    public func generate(prompt: [Int], maxNewTokens: Int, sampling: Sampling, stop: Set<Int>) throws -> [Int] {
        try setGlobal(prompt)
        return try inner.generate(prompt: prompt, maxNewTokens: maxNewTokens, sampling: sampling, stop: stop)
    }
}
