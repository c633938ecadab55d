import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// `selfinstruct`: the 252 user-oriented Self-Instruct tasks (one example per instance). The user turn is the
/// instruction, followed by a blank line and the instance input when there is one, in the ChatML template; greedy
/// generation of up to `maxNewTokens`; Rouge-L F1 against the human `output`. `selfinstruct:N`: first N examples.
public struct SelfInstructTask: EvalTask {
    public static let dataFile = "selfinstruct_user_oriented_instructions.jsonl"
    public let limit: Int?
    public let maxNewTokens: Int
    public let template: ChatPromptFormat

    public init(limit: Int? = nil, maxNewTokens: Int = 128, template: ChatPromptFormat = ChatPromptFormat()) {
        self.limit = limit
        self.maxNewTokens = maxNewTokens
        self.template = template
    }

    public var name: String { "selfinstruct" + (limit.map { ":\($0)" } ?? "") }
    public var requirement: ModelRequirement { .causalLanguageModel }

    public static func examples(fromFile path: String, limit: Int?) throws -> [GenerationExample] {
        var examples: [GenerationExample] = []
        for (line, row) in try jsonLines(path, for: "selfinstruct") {
            func fail(_ what: String) -> TesseraError {
                TesseraError(.invalidParameter, "\(path):\(line): \(what)",
                             hint: "Self-Instruct rows are {\"id\", \"instruction\", \"instances\": [{\"input\", \"output\"}]}")
            }
            guard let instruction = row["instruction"]?.stringValue else { throw fail("no 'instruction' string") }
            guard let instances = row["instances"]?.arrayValue, !instances.isEmpty else { throw fail("no 'instances' list") }
            let id = row["id"]?.stringValue ?? "line \(line)"
            for (k, instance) in instances.enumerated() {
                if let limit, examples.count >= limit { return examples }
                guard let output = instance["output"]?.stringValue else { throw fail("instance \(k) has no 'output' string") }
                let input = instance["input"]?.stringValue ?? ""
                let message = input.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
                    ? instruction : instruction + "\n\n" + input
                examples.append(GenerationExample(id: instances.count > 1 ? "\(id)#\(k)" : id, prompt: message, references: [output]))
            }
        }
        return examples
    }

    public func prepare(data: EvalDataDirectory) throws -> PreparedEvaluation {
        let path = try data.file(SelfInstructTask.dataFile, for: name)
        let examples = try SelfInstructTask.examples(fromFile: path, limit: limit)
        guard !examples.isEmpty else { throw TesseraError(.invalidParameter, "\(name): \(path) has no examples") }
        let name = self.name, maxNewTokens = self.maxNewTokens, template = self.template
        return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: examples.count) { models, progress in
            let (lm, tokenizer) = try models.requireLanguageModel(for: name)
            return try GenerationScoring.evaluate(examples, model: lm, tokenizer: tokenizer, template: template,
                                                  maxNewTokens: maxNewTokens, progress: progress).metrics
        }
    }
}
