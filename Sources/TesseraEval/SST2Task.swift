import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// `sst2`: GLUE SST-2 dev sentiment accuracy of a sentence embedder plus a linear head checkpoint (`weight` [C, D],
/// `bias` [C]; C = 1 is logistic). The head is read from `minilm_sst2_head.safetensors` in the data directory unless
/// a path is given. `sst2:N`: first N sentences.
public struct SST2Task: EvalTask {
    public static let dataFile = "sst2_dev.tsv"
    public static let defaultHeadFile = "minilm_sst2_head.safetensors"
    public let limit: Int?
    public let headPath: String?

    public init(limit: Int? = nil, headPath: String? = nil) {
        self.limit = limit
        self.headPath = headPath
    }

    public var name: String { "sst2" + (limit.map { ":\($0)" } ?? "") }
    public var requirement: ModelRequirement { .sentenceEmbedder }

    /// Rows of a `text<TAB>label` file with a header line; labels are 0 or 1.
    public static func examples(fromFile path: String, limit: Int?) throws -> [(text: String, label: Int)] {
        let text = try readText(path, for: "sst2")
        var rows: [(String, Int)] = []
        for (i, line) in textLines(text).enumerated() {
            if i == 0 {
                guard line.split(separator: "\t").map(String.init) == ["text", "label"] else {
                    throw TesseraError(.invalidParameter, "\(path):1: expected the header 'text<TAB>label'")
                }
                continue
            }
            if line.isEmpty { continue }
            if let limit, rows.count >= limit { break }
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count == 2, let label = Int(fields[1].trimmingCharacters(in: .whitespaces)), label == 0 || label == 1 else {
                throw TesseraError(.invalidParameter, "\(path):\(i + 1): expected 'text<TAB>0|1'")
            }
            rows.append((String(fields[0]), label))
        }
        return rows
    }

    public func prepare(data: EvalDataDirectory) throws -> PreparedEvaluation {
        let path = try data.file(SST2Task.dataFile, for: name)
        let examples = try SST2Task.examples(fromFile: path, limit: limit)
        guard !examples.isEmpty else { throw TesseraError(.invalidParameter, "\(name): \(path) has no examples") }
        let head = try LinearClassificationHead(path: headPath ?? data.file(SST2Task.defaultHeadFile, for: name))
        guard head.classCount == 2 else {
            throw TesseraError(.shapeMismatch, "\(name): the head predicts \(head.classCount) classes, SST-2 has 2")
        }
        let name = self.name
        return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: examples.count) { models, progress in
            let embedder = try models.requireEmbedder(for: name)
            return try ClassificationScoring.evaluate(texts: examples.map(\.text), labels: examples.map(\.label),
                                                      embedder: embedder, head: head, progress: progress).metrics
        }
    }
}
