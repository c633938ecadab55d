import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// `wikitext`: WikiText-2 (raw) test perplexity. Each non-empty line, stripped, is scored as its own sequence
/// without BOS; reports mean NLL per predicted token (nats) and perplexity = exp(mean NLL). `wikitext:N` takes the
/// first N non-empty lines.
public struct WikitextTask: EvalTask {
    public static let dataFile = "wikitext2_raw_test.txt"
    public let limit: Int?

    public init(limit: Int? = nil) { self.limit = limit }

    public var name: String { "wikitext" + (limit.map { ":\($0)" } ?? "") }
    public var requirement: ModelRequirement { .causalLanguageModel }

    /// The texts scored: non-empty lines with surrounding whitespace removed (Python's `str.strip()`).
    public static func texts(fromFile path: String, limit: Int?) throws -> [String] {
        let text = try readText(path, for: "wikitext")
        var lines: [String] = []
        for line in textLines(text) {
            let stripped = line.trimmingCharacters(in: .whitespacesAndNewlines)
            if !stripped.isEmpty { lines.append(stripped) }
            if let limit, lines.count >= limit { break }
        }
        return lines
    }

    public func prepare(data: EvalDataDirectory) throws -> PreparedEvaluation {
        let path = try data.file(WikitextTask.dataFile, for: name)
        let texts = try WikitextTask.texts(fromFile: path, limit: limit)
        guard !texts.isEmpty else {
            throw TesseraError(.invalidParameter, "\(name): \(path) has no non-empty line", hint: "check the data file")
        }
        let name = self.name
        return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: texts.count) { models, progress in
            let (lm, tokenizer) = try models.requireLanguageModel(for: name)
            return try PerplexityScoring.evaluate(texts: texts, model: lm, tokenizer: tokenizer, progress: progress)
        }
    }
}
