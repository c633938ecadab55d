import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// `arc-easy` and `arc-challenge`: the AI2 Reasoning Challenge test sets with lm-eval-harness's recipe: context
/// "Question: {question}\nAnswer:", continuation " {choice}", score = summed continuation log-probability;
/// acc = argmax score, acc_norm = argmax score / UTF-8 bytes of the continuation. `arc-easy:N`: first N questions.
public struct ARCTask: EvalTask {
    public enum Subset: String, Sendable, CaseIterable {
        case easy = "arc-easy"
        case challenge = "arc-challenge"

        public var dataFile: String { self == .easy ? "ARC-Easy-test.jsonl" : "ARC-Challenge-test.jsonl" }
    }

    public let subset: Subset
    public let limit: Int?

    public init(_ subset: Subset, limit: Int? = nil) {
        self.subset = subset
        self.limit = limit
    }

    public var name: String { subset.rawValue + (limit.map { ":\($0)" } ?? "") }
    public var requirement: ModelRequirement { .causalLanguageModel }

    /// Reads ARC rows `{"id", "question", "choices": {"text", "label"}, "answerKey"}`; the gold index is the
    /// position of `answerKey` among the labels (which are letters or digits).
    public static func questions(fromFile path: String, limit: Int?) throws -> [MultipleChoiceQuestion] {
        var questions: [MultipleChoiceQuestion] = []
        for (line, row) in try jsonLines(path, for: "arc") {
            if let limit, questions.count >= limit { break }
            func fail(_ what: String) -> TesseraError {
                TesseraError(.invalidParameter, "\(path):\(line): \(what)", hint: "ARC rows are {\"id\", \"question\", \"choices\": {\"text\", \"label\"}, \"answerKey\"}")
            }
            guard let question = row["question"]?.stringValue else { throw fail("no 'question' string") }
            guard let texts = row["choices"]?["text"]?.arrayValue?.compactMap(\.stringValue),
                  let labels = row["choices"]?["label"]?.arrayValue?.compactMap(\.stringValue),
                  texts.count == labels.count, texts.count >= 2 else { throw fail("'choices' needs matching 'text' and 'label' lists") }
            guard let key = row["answerKey"]?.stringValue, let gold = labels.firstIndex(of: key) else {
                throw fail("'answerKey' is not one of the labels \(labels)")
            }
            questions.append(MultipleChoiceQuestion(
                id: row["id"]?.stringValue ?? "line \(line)",
                context: "Question: \(question)\nAnswer:",
                continuations: texts.map { " " + $0 },
                gold: gold))
        }
        return questions
    }

    public func prepare(data: EvalDataDirectory) throws -> PreparedEvaluation {
        let path = try data.file(subset.dataFile, for: name)
        let questions = try ARCTask.questions(fromFile: path, limit: limit)
        guard !questions.isEmpty else { throw TesseraError(.invalidParameter, "\(name): \(path) has no questions") }
        let name = self.name
        return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: questions.count) { models, progress in
            let (lm, tokenizer) = try models.requireLanguageModel(for: name)
            let outcomes = try MultipleChoiceScoring.score(questions, model: lm, tokenizer: tokenizer, progress: progress)
            return MultipleChoiceScoring.metrics(outcomes)
        }
    }
}
