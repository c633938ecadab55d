import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMath

/// The diagonal Fisher information of every weight of a causal language model on a task (`tessera fisher` on a
/// decoder), in the layout `tessera merge --method fisher` reads: one tensor per checkpoint tensor, same name, same
/// shape. Two estimates, by task kind:
///
/// - multiple choice, and classification by label words (each label's `" " + name` a choice, as evaluation scores
///   them): the exact expectation over the model's own distribution restricted to the choices. With
///   ll_c = Σ over the continuation's tokens of log p(token | context, earlier tokens) and
///   p(c|x) = exp(ll_c) / Σ_c' exp(ll_c'), log p(c|x) = ll_c − log Σ_c' exp(ll_c'), whose gradient is
///   ∇ll_c − Σ_c' p(c'|x) ∇ll_c' = g_c − ḡ. So F = mean over examples of Σ_c p(c|x) (g_c − ḡ)²: one backward pass
///   per choice, the choices' gradients kept (C + 2 vectors of the model's size), then combined exactly (no
///   E[g²] − ḡ² cancellation). The gold answer is not used.
/// - perplexity (plain text) and generation: the empirical Fisher, F = mean over examples of (∇ Σ_t log p(x_t|x_<t))²
///   over the example's own counted tokens (a text: every token after the first, all its windows summed into one
///   gradient; generation: the reference completion and the end-of-turn token after the prompt) — the gradient at
///   the observed tokens, not an expectation over samples.
///
/// Sign: the passes give ∇(−ll); every estimate is a square of a difference of such gradients, so it is the same.
public final class LanguageModelFisher {
    public enum Estimate: String, Sendable {
        /// Σ_c p(c|x) (∇ log p(c|x))², p restricted to the choices: exact.
        case expectationOverChoices = "expectation_over_choices"
        /// (∇ Σ_t log p(x_t|x_<t))² at the example's own tokens.
        case empirical

        public var description: String {
            switch self {
            case .expectationOverChoices:
                return "exact expectation over the model's distribution restricted to the choices: sum_c p(c|x) (grad log p(c|x))^2, p(c|x) = softmax over choices of the summed continuation log-probability; mean over examples"
            case .empirical:
                return "empirical Fisher: (grad sum_t log p(x_t|x_<t))^2 over each example's own counted tokens (text: every token after the first; generation: the reference completion); mean over examples"
            }
        }
    }

    /// One example: its choices (one sequence each, the continuation counted) or the sequences of one text (its
    /// windows, or a prompt and its counted completion), whose gradients add.
    public struct Example: Sendable {
        public var sequences: [TrainingSequence]
        public var choices: Bool

        public init(sequences: [TrainingSequence], choices: Bool) {
            self.sequences = sequences
            self.choices = choices
        }
    }

    public struct Examples: Sendable {
        public var examples: [Example]
        public var estimate: Estimate
        /// Examples in the file, and how many were left out (nothing to predict) or cut to the length.
        public var inFile: Int
        public var dropped: Int
        public var truncated: Int
    }

    /// The examples of a task file, rendered as `train lora` renders them (the same contexts, continuations,
    /// templates and truncation), the first `limit` usable ones.
    public static func examples(_ task: UserTask, tokenizer: any TextTokenizer, maxLength: Int, limit: Int?) throws -> Examples {
        guard maxLength >= 2 else { throw TesseraError(.usage, "the maximum length must be at least 2 tokens", hint: "e.g. --max-length 512") }
        if let limit, limit <= 0 { throw TesseraError(.usage, "the number of examples must be positive", hint: "e.g. --examples 100") }
        var out = Examples(examples: [], estimate: .empirical, inFile: 0, dropped: 0, truncated: 0)
        func full() -> Bool { limit.map { out.examples.count >= $0 } ?? false }
        func addChoices(_ pairs: [(context: [Int], continuation: [Int])]) {
            var sequences: [TrainingSequence] = []
            var cut = false
            for p in pairs {
                guard let (s, truncated) = TrainingData.fitted(context: p.context, continuation: p.continuation, maxLength: maxLength) else {
                    out.dropped += 1
                    return
                }
                cut = cut || truncated
                sequences.append(s)
            }
            if cut { out.truncated += 1 }
            out.examples.append(Example(sequences: sequences, choices: true))
        }
        switch task.examples {
        case let .multipleChoice(questions):
            out.estimate = .expectationOverChoices
            out.inFile = questions.count
            for q in questions where !full() {
                let requests = try MultipleChoiceScoring.requests(for: q, tokenizer: tokenizer)
                addChoices(requests.map { ($0.context, $0.continuation) })
            }
        case let .classification(texts, _):
            out.estimate = .expectationOverChoices
            out.inFile = texts.count
            let continuations = task.labelNames.map { " " + $0 }
            for text in texts where !full() {
                let q = MultipleChoiceQuestion(id: "", context: text, continuations: continuations, gold: 0)
                let requests = try MultipleChoiceScoring.requests(for: q, tokenizer: tokenizer)
                addChoices(requests.map { ($0.context, $0.continuation) })
            }
        case let .perplexity(texts):
            out.inFile = texts.count
            for text in texts where !full() {
                let ids = try tokenizer.encode(text)
                let windows = TrainingData.windows(ids, maxLength: maxLength)
                guard !windows.isEmpty else { out.dropped += 1; continue }
                if ids.count > maxLength { out.truncated += 1 }
                out.examples.append(Example(sequences: windows, choices: false))
            }
        case let .generation(examples):
            out.inFile = examples.count
            let end = try TrainingData.endOfTurn(tokenizer: tokenizer, chat: task.template != nil)
            for example in examples where !full() {
                let (prompt, continuation) = try TrainingData.generationPair(example, task: task, tokenizer: tokenizer, end: end, maxLength: maxLength)
                guard let (s, truncated) = TrainingData.fitted(context: prompt, continuation: continuation, maxLength: maxLength) else {
                    out.dropped += 1
                    continue
                }
                if truncated { out.truncated += 1 }
                out.examples.append(Example(sequences: [s], choices: false))
            }
        }
        guard !out.examples.isEmpty else {
            throw TesseraError(.invalidParameter, "no example to take the Fisher over (\(out.inFile) in the task, \(out.dropped) with nothing to predict)",
                               hint: "give a task file with examples that have tokens to predict")
        }
        return out
    }

    public let model: any WeightGradientModel

    public init(model: any WeightGradientModel) { self.model = model }

    /// The diagonal Fisher as a flat vector laid out as `model.weightTensors` say. `progress(k)` after example k.
    public func diagonal(_ examples: [Example], progress: ((Int) -> Void)? = nil) throws -> [Float] {
        guard !examples.isEmpty else {
            throw TesseraError(.invalidParameter, "Fisher: no examples to take the expectation over", hint: "give a task file with examples")
        }
        let count = model.weightCount
        let widest = examples.map { $0.choices ? $0.sequences.count : 1 }.max() ?? 1
        var fisher = [Float](repeating: 0, count: count)
        // One gradient per choice (a text needs one), and their weighted mean.
        let gradients = (0..<widest).map { _ in TrainingBuffer(count) }
        let mean = TrainingBuffer(count)
        for (k, example) in examples.enumerated() {
            if example.choices {
                var logLikelihoods: [Double] = []
                for (c, sequence) in example.sequences.enumerated() {
                    let loss = try model.weightGradient([sequence], into: gradients[c].p, accumulate: false)
                    logLikelihoods.append(-loss.sum)
                }
                guard logLikelihoods.allSatisfy(\.isFinite) else {
                    throw TesseraError(.invalidParameter, "Fisher: example \(k + 1) has a choice whose log-probability is not finite",
                                       hint: "check the model (NaN weights?) and the task")
                }
                let top = logLikelihoods.max() ?? 0
                let e = logLikelihoods.map { Foundation.exp($0 - top) }
                let z = e.reduce(0, +)
                let p = e.map { Float($0 / z) }
                fisher.withUnsafeMutableBufferPointer { f in
                    guard let f = f.baseAddress else { return }
                    Self.forChunks(count) { range in
                        for i in range { mean.p[i] = 0 }
                        for (c, pc) in p.enumerated() {
                            let g = gradients[c].p
                            for i in range { mean.p[i] += pc * g[i] }
                        }
                        for (c, pc) in p.enumerated() {
                            let g = gradients[c].p
                            for i in range {
                                let d = g[i] - mean.p[i]
                                f[i] += pc * d * d
                            }
                        }
                    }
                }
            } else {
                let g = gradients[0]
                g.zero()
                for sequence in example.sequences {
                    _ = try model.weightGradient([sequence], into: g.p, accumulate: true)
                }
                fisher.withUnsafeMutableBufferPointer { f in
                    guard let f = f.baseAddress else { return }
                    Self.forChunks(count) { range in
                        for i in range { f[i] += g.p[i] * g.p[i] }
                    }
                }
            }
            progress?(k + 1)
        }
        let scale = 1 / Float(examples.count)
        fisher.withUnsafeMutableBufferPointer { f in
            guard let f = f.baseAddress else { return }
            Self.forChunks(count) { range in
                for i in range { f[i] *= scale }
            }
        }
        guard let bad = fisher.firstIndex(where: { !$0.isFinite }) else { return fisher }
        let name = model.weightTensors.first { $0.offset <= bad && bad < $0.offset + $0.rows.upperBound * $0.columns }?.name ?? "?"
        throw TesseraError(.invalidParameter, "the Fisher of \(name) is not finite", hint: "check the model's weights (NaN or huge values)")
    }

    /// The Fisher's tensors, named and shaped as the checkpoint's (Hugging Face names, q/k rows in Hugging Face order).
    public func tensors(_ flat: [Float]) -> [(name: String, shape: [Int], values: [Float])] {
        flat.withUnsafeBufferPointer { f in
            guard let base = f.baseAddress, f.count == model.weightCount else { return [] }
            return model.weightTensors.map { ($0.name, $0.shape, model.values(of: $0, from: base)) }
        }
    }

    /// Elementwise work over `count` floats in blocks split over the cores.
    static func forChunks(_ count: Int, _ body: (Range<Int>) -> Void) {
        let block = 1 << 16
        let chunks = (count + block - 1) / block
        Parallel.forEach(chunks) { c in
            let lo = c * block, hi = min(count, lo + block)
            if lo < hi { body(lo..<hi) }
        }
    }
}

public enum LanguageModelFisherDefaults {
    /// Examples `tessera fisher` reads when not told: enough for a stable diagonal, bounded in time (a SmolLM2
    /// multiple-choice example is one backward pass per choice).
    public static let examples = 100
}
