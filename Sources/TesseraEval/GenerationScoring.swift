import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// An instruction to answer and the human answers it is compared with.
public struct GenerationExample: Sendable, Equatable {
    public var id: String
    /// The user message (wrapped in the chat template when one is used) or the raw prompt.
    public var prompt: String
    public var references: [String]

    public init(id: String, prompt: String, references: [String]) {
        self.id = id
        self.prompt = prompt
        self.references = references
    }
}

public enum GenerationScoring {
    /// Generates an answer for each example (greedy unless `sampling` says otherwise, stopping at the tokenizer's
    /// end-of-turn ids) and scores it with Rouge-L F1 against the best reference. Returns the metric and the texts.
    public static func evaluate(_ examples: [GenerationExample], model: any CausalLanguageModel, tokenizer: any TextTokenizer,
                                template: ChatPromptFormat?, maxNewTokens: Int, sampling: Sampling = .greedy,
                                stemming: Bool = false, progress: ProgressReporter) throws -> (metrics: [EvalMetric], outputs: [String]) {
        var scores: [Double] = []
        var outputs: [String] = []
        for example in examples {
            let text = template.map { $0.prompt(user: example.prompt) } ?? example.prompt
            var prompt = try tokenizer.encode(text)
            // Keep the end of an over-long prompt: the generation prompt must survive.
            let room = max(1, model.maxSequenceLength - maxNewTokens)
            if prompt.count > room { prompt.removeFirst(prompt.count - room) }
            var generated = try model.generate(prompt: prompt, maxNewTokens: maxNewTokens, sampling: sampling, stop: tokenizer.stopTokenIDs)
            if let last = generated.last, tokenizer.stopTokenIDs.contains(last) { generated.removeLast() }
            let answer = tokenizer.decode(generated).trimmingCharacters(in: .whitespacesAndNewlines)
            outputs.append(answer)
            scores.append(RougeL.f1(prediction: answer, references: example.references, stemming: stemming))
            progress.advance()
        }
        let mean = scores.isEmpty ? 0 : scores.reduce(0, +) / Double(scores.count)
        return ([EvalMetric("rougeL", value: mean, stderr: standardError(scores), count: scores.count)], outputs)
    }
}
