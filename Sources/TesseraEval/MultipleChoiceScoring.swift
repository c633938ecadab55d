import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// A multiple-choice question as lm-eval-harness scores it: the same context followed by each continuation.
public struct MultipleChoiceQuestion: Sendable, Equatable {
    public var id: String
    public var context: String
    /// The continuations exactly as appended to the context (ARC: " " + choice text).
    public var continuations: [String]
    public var gold: Int

    public init(id: String, context: String, continuations: [String], gold: Int) {
        self.id = id
        self.context = context
        self.continuations = continuations
        self.gold = gold
    }
}

/// What the model chose for one question.
public struct MultipleChoiceOutcome: Sendable, Equatable {
    public var id: String
    /// Sum of the continuation tokens' log-probabilities, per choice.
    public var logLikelihoods: [Double]
    public var prediction: Int
    /// The argmax after dividing each score by the continuation's UTF-8 byte length.
    public var normalizedPrediction: Int
    public var gold: Int
}

public enum MultipleChoiceScoring {
    /// The (context, continuation) token requests of one question: context and continuation tokenised separately,
    /// then concatenated by the model, as lm-eval-harness does. Trailing whitespace of the context moves to the
    /// front of the continuation first (lm-eval-harness `_encode_pair`), so a tokenizer sees " word" as one piece.
    public static func requests(for question: MultipleChoiceQuestion, tokenizer: any TextTokenizer) throws
        -> [(context: [Int], continuation: [Int])] {
        var context = question.context
        var moved = ""
        while let last = context.last, last.isWhitespace { moved = String(last) + moved; context.removeLast() }
        let contextIDs = try tokenizer.encode(context)
        return try question.continuations.map { (contextIDs, try tokenizer.encode(moved + $0)) }
    }

    public static func score(_ questions: [MultipleChoiceQuestion], model: any CausalLanguageModel,
                             tokenizer: any TextTokenizer, progress: ProgressReporter) throws -> [MultipleChoiceOutcome] {
        var outcomes: [MultipleChoiceOutcome] = []
        outcomes.reserveCapacity(questions.count)
        for q in questions {
            let logProbs = try model.scoreContinuations(try requests(for: q, tokenizer: tokenizer))
            let scores = logProbs.map { $0.reduce(0.0) { $0 + Double($1) } }
            let normalized = zip(scores, q.continuations).map { $0 / Double(max(1, $1.utf8.count)) }
            outcomes.append(MultipleChoiceOutcome(id: q.id, logLikelihoods: scores, prediction: argmax(scores),
                                                  normalizedPrediction: argmax(normalized), gold: q.gold))
            progress.advance()
        }
        return outcomes
    }

    /// acc and acc_norm with their standard errors.
    public static func metrics(_ outcomes: [MultipleChoiceOutcome]) -> [EvalMetric] {
        let acc = outcomes.map { $0.prediction == $0.gold ? 1.0 : 0.0 }
        let accNorm = outcomes.map { $0.normalizedPrediction == $0.gold ? 1.0 : 0.0 }
        let n = Double(max(1, outcomes.count))
        return [
            EvalMetric("acc", value: acc.reduce(0, +) / n, stderr: standardError(acc), count: outcomes.count),
            EvalMetric("acc_norm", value: accNorm.reduce(0, +) / n, stderr: standardError(accNorm), count: outcomes.count),
        ]
    }

    /// The first index of the largest value (numpy's argmax).
    static func argmax(_ values: [Double]) -> Int {
        var best = 0
        for i in values.indices where values[i] > values[best] { best = i }
        return best
    }
}
