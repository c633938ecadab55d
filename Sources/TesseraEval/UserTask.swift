import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// A task defined by the user in a JSONL file (format: docs/task-format.md): a header line
/// `{"tessera_task": 1, "type": ..., "name": ...}` and one example per line. The whole file is read and checked
/// when the task is created, so a malformed file fails, naming its line, before any model is loaded or run.
public struct UserTask: EvalTask {
    public enum Kind: String, Sendable, CaseIterable {
        case perplexity
        case multipleChoice = "multiple_choice"
        case generation
        case classification
    }

    public enum Examples: Sendable {
        case perplexity([String])
        case multipleChoice([MultipleChoiceQuestion])
        case generation([GenerationExample])
        case classification(texts: [String], labels: [Int])
    }

    public static let formatVersion = 1
    public let path: String
    public let taskName: String
    public let kind: Kind
    public let description: String?
    public let examples: Examples
    public let limit: Int?
    /// Classification: class names, index = head output; the head checkpoint path (resolved against the file).
    public let labelNames: [String]
    public let headPath: String?
    /// Generation settings.
    public let maxNewTokens: Int
    public let template: ChatPromptFormat?
    /// Generation: Rouge-L with the Porter stemmer.
    public let stemming: Bool

    public var name: String { taskName + (limit.map { ":\($0)" } ?? "") }
    public var requirement: ModelRequirement { kind == .classification ? .sentenceEmbedder : .causalLanguageModel }

    public var exampleCount: Int {
        switch examples {
        case let .perplexity(t): return t.count
        case let .multipleChoice(q): return q.count
        case let .generation(g): return g.count
        case let .classification(texts, _): return texts.count
        }
    }

    public init(path: String, limit: Int? = nil) throws {
        self.path = path
        self.limit = limit
        let hint = "the task file format is described in docs/task-format.md (a header line {\"tessera_task\": 1, \"type\", \"name\"}, then one JSON example per line)"
        func fail(_ line: Int, _ what: String) -> TesseraError {
            TesseraError(.invalidParameter, "\(path):\(line): \(what)", hint: hint)
        }
        guard FileManager.default.fileExists(atPath: path) else {
            throw TesseraError(.notFound, "task file \(path) not found", hint: "give the path of a .jsonl task file")
        }
        let lines = try Self.readLines(path, hint: hint)
        guard let (headerLine, header) = lines.first else {
            throw TesseraError(.invalidParameter, "\(path): the task file is empty", hint: hint)
        }

        // Header.
        guard let headerPairs = header.objectValue else { throw fail(headerLine, "the header must be a JSON object") }
        guard let version = header["tessera_task"] else { throw fail(headerLine, "the header has no \"tessera_task\" version (the first line must be the header)") }
        guard version.intValue == UserTask.formatVersion else {
            throw fail(headerLine, "\"tessera_task\" is \(version.serialized()); this Tessera reads version \(UserTask.formatVersion)")
        }
        guard let typeName = header["type"]?.stringValue else { throw fail(headerLine, "the header has no \"type\" string") }
        guard let kind = Kind(rawValue: typeName) else {
            throw fail(headerLine, "unknown type '\(typeName)' (expected \(Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard let name = header["name"]?.stringValue, !name.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw fail(headerLine, "the header has no non-empty \"name\" string")
        }
        let headerKeys: [Kind: Set<String>] = [
            .perplexity: [], .multipleChoice: ["choice_prefix"], .generation: ["max_new_tokens", "chat", "system", "stemming"],
            .classification: ["labels", "head"],
        ]
        let allowedHeader = Set(["tessera_task", "type", "name", "description"]).union(headerKeys[kind]!)
        for (key, _) in headerPairs where !allowedHeader.contains(key) {
            throw fail(headerLine, "unknown header field \"\(key)\" for type \(typeName) (allowed: \(allowedHeader.sorted().joined(separator: ", ")))")
        }
        self.taskName = name
        self.kind = kind
        self.description = header["description"]?.stringValue

        var labelNames: [String] = []
        var headPath: String? = nil
        var maxNewTokens = 128
        var template: ChatPromptFormat? = ChatPromptFormat()
        var choicePrefix = " "
        var stemming = false
        switch kind {
        case .multipleChoice:
            if let p = header["choice_prefix"] {
                guard let s = p.stringValue else { throw fail(headerLine, "\"choice_prefix\" must be a string") }
                choicePrefix = s
            }
        case .generation:
            if let m = header["max_new_tokens"] {
                guard let v = m.intValue, v > 0 else { throw fail(headerLine, "\"max_new_tokens\" must be a positive integer") }
                maxNewTokens = v
            }
            if let c = header["chat"] {
                guard let b = c.boolValue else { throw fail(headerLine, "\"chat\" must be true or false") }
                if !b { template = nil }
            }
            if let st = header["stemming"] {
                guard let b = st.boolValue else { throw fail(headerLine, "\"stemming\" must be true or false") }
                stemming = b
            }
            if let s = header["system"], template != nil {
                if s == .null { template = ChatPromptFormat(system: nil) } else {
                    guard let text = s.stringValue else { throw fail(headerLine, "\"system\" must be a string or null") }
                    template = ChatPromptFormat(system: text)
                }
            }
        case .classification:
            guard let labels = header["labels"]?.arrayValue, labels.count >= 2,
                  labels.allSatisfy({ $0.stringValue != nil }) else {
                throw fail(headerLine, "a classification task needs \"labels\": a list of at least two class names")
            }
            labelNames = labels.compactMap(\.stringValue)
            guard Set(labelNames).count == labelNames.count else { throw fail(headerLine, "\"labels\" has a repeated name") }
            guard let head = header["head"]?.stringValue, !head.isEmpty else {
                throw fail(headerLine, "a classification task needs \"head\": the path of a safetensors head (weight [C, D], bias [C])")
            }
            guard !head.contains("\0") else { throw fail(headerLine, "\"head\" contains a NUL character") }
            headPath = head.hasPrefix("/") ? head
                : URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent(head).path
        case .perplexity:
            break
        }
        self.labelNames = labelNames
        self.headPath = headPath
        self.maxNewTokens = maxNewTokens
        self.template = template
        self.stemming = stemming

        // Examples.
        let rows = Array(lines.dropFirst())
        guard !rows.isEmpty else { throw fail(headerLine, "the task has a header but no examples") }
        let exampleKeys: [Kind: Set<String>] = [
            .perplexity: ["text"], .multipleChoice: ["context", "choices", "answer"],
            .generation: ["prompt", "reference", "references"], .classification: ["text", "label"],
        ]
        let allowed = exampleKeys[kind]!.union(["id"])
        var texts: [String] = [], labels: [Int] = []
        var questions: [MultipleChoiceQuestion] = []
        var generations: [GenerationExample] = []
        for (line, row) in rows {
            guard let pairs = row.objectValue else { throw fail(line, "an example must be a JSON object") }
            for (key, _) in pairs where !allowed.contains(key) {
                throw fail(line, "unknown field \"\(key)\" for a \(typeName) example (allowed: \(allowed.sorted().joined(separator: ", ")))")
            }
            if let id = row["id"], id.stringValue == nil, id.intValue == nil { throw fail(line, "\"id\" must be a string or an integer") }
            let id = row["id"]?.stringValue ?? row["id"]?.intValue.map(String.init) ?? "line \(line)"
            func string(_ key: String, nonEmpty: Bool = true) throws -> String {
                guard let v = row[key] else { throw fail(line, "missing \"\(key)\"") }
                guard let s = v.stringValue else { throw fail(line, "\"\(key)\" must be a string") }
                if nonEmpty && s.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { throw fail(line, "\"\(key)\" is empty") }
                return s
            }
            switch kind {
            case .perplexity:
                texts.append(try string("text"))
            case .multipleChoice:
                // A continuation is scored given its context, so the context cannot be empty.
                let context = try string("context")
                guard let choices = row["choices"]?.arrayValue, choices.count >= 2,
                      choices.allSatisfy({ $0.stringValue != nil }) else {
                    throw fail(line, "\"choices\" must be a list of at least two strings")
                }
                guard let answerValue = row["answer"] else { throw fail(line, "missing \"answer\" (the index of the correct choice)") }
                guard let answer = answerValue.intValue, answer >= 0, answer < choices.count else {
                    throw fail(line, "\"answer\" \(answerValue.serialized()) is not an index into the \(choices.count) choices (0-based)")
                }
                questions.append(MultipleChoiceQuestion(id: id, context: context,
                                                        continuations: choices.compactMap(\.stringValue).map { choicePrefix + $0 }, gold: answer))
            case .generation:
                let prompt = try string("prompt")
                var references: [String] = []
                switch (row["reference"], row["references"]) {
                case (nil, nil): throw fail(line, "missing \"reference\" (or \"references\", a list)")
                case (.some, .some): throw fail(line, "give either \"reference\" or \"references\", not both")
                case (.some, nil): references = [try string("reference", nonEmpty: false)]
                case let (nil, .some(list)):
                    guard let items = list.arrayValue, !items.isEmpty, items.allSatisfy({ $0.stringValue != nil }) else {
                        throw fail(line, "\"references\" must be a non-empty list of strings")
                    }
                    references = items.compactMap(\.stringValue)
                }
                generations.append(GenerationExample(id: id, prompt: prompt, references: references))
            case .classification:
                texts.append(try string("text"))
                guard let labelValue = row["label"] else { throw fail(line, "missing \"label\"") }
                if let s = labelValue.stringValue, let index = labelNames.firstIndex(of: s) {
                    labels.append(index)
                } else if let index = labelValue.intValue, index >= 0, index < labelNames.count {
                    labels.append(index)
                } else {
                    throw fail(line, "\"label\" \(labelValue.serialized()) is not one of \(labelNames) nor an index into them")
                }
            }
        }
        switch kind {
        case .perplexity: examples = .perplexity(applyLimit(texts, limit))
        case .multipleChoice: examples = .multipleChoice(applyLimit(questions, limit))
        case .generation: examples = .generation(applyLimit(generations, limit))
        case .classification: examples = .classification(texts: applyLimit(texts, limit), labels: applyLimit(labels, limit))
        }
    }

    /// Task files are read whole, so they are bounded: far above any real task (a 5 MB document is fine).
    public static let maxFileBytes = 1 << 30

    /// "a directory", "a FIFO", ... for a path that exists but is not a regular file (nil for a regular file).
    static func nonRegularKind(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return nil
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR, S_IFBLK: return "a device"
        case S_IFSOCK: return "a socket"
        default: return "not a regular file"
        }
    }

    /// The file's non-blank lines (LF or CRLF ends), each checked as UTF-8 and parsed as strict JSON, with 1-based
    /// line numbers: every problem names its line.
    static func readLines(_ path: String, hint: String) throws -> [(line: Int, value: JSONValue)] {
        if let kind = nonRegularKind(path) {
            throw TesseraError(.invalidParameter, "task file \(path) is \(kind), not a JSONL file", hint: "give the path of a .jsonl task file")
        }
        var st = stat()
        if stat(path, &st) == 0, st.st_size > maxFileBytes {
            throw TesseraError(.invalidParameter, "task file \(path) is \(st.st_size) bytes, more than the \(maxFileBytes) a task file may have",
                               hint: "split the task into smaller files")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TesseraError(.io, "task file: cannot read \(path)", hint: "check that the file is readable")
        }
        guard data.count <= maxFileBytes else {
            throw TesseraError(.invalidParameter, "task file \(path) is more than \(maxFileBytes) bytes", hint: "split the task into smaller files")
        }
        var out: [(Int, JSONValue)] = []
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let bytes = raw.bindMemory(to: UInt8.self)
            var start = 0
            var number = 0
            while start <= bytes.count {
                var end = start
                while end < bytes.count && bytes[end] != 0x0A { end += 1 }
                number += 1
                var lineEnd = end
                if lineEnd > start && bytes[lineEnd - 1] == 0x0D { lineEnd -= 1 }
                let line = UnsafeBufferPointer(rebasing: bytes[start..<lineEnd])
                if !line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
                    guard String(validating: line, as: UTF8.self) != nil else {
                        throw TesseraError(.invalidParameter, "\(path):\(number): not UTF-8 text", hint: "save the task file as UTF-8")
                    }
                    do {
                        out.append((number, try JSONParser.parse(line)))
                    } catch {
                        throw TesseraError(.invalidParameter, "\(path):\(number): not valid JSON (\(error))", hint: hint)
                    }
                }
                start = end + 1
            }
        }
        return out
    }

    public func prepare(data: EvalDataDirectory) throws -> PreparedEvaluation {
        let name = self.name
        switch examples {
        case let .perplexity(texts):
            return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: texts.count) { models, progress in
                let (lm, tokenizer) = try models.requireLanguageModel(for: name)
                return try PerplexityScoring.evaluate(texts: texts, model: lm, tokenizer: tokenizer, progress: progress)
            }
        case let .multipleChoice(questions):
            return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: questions.count) { models, progress in
                let (lm, tokenizer) = try models.requireLanguageModel(for: name)
                return MultipleChoiceScoring.metrics(try MultipleChoiceScoring.score(questions, model: lm, tokenizer: tokenizer, progress: progress))
            }
        case let .generation(examples):
            let maxNewTokens = self.maxNewTokens, template = self.template, stemming = self.stemming
            return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: examples.count) { models, progress in
                let (lm, tokenizer) = try models.requireLanguageModel(for: name)
                return try GenerationScoring.evaluate(examples, model: lm, tokenizer: tokenizer, template: template,
                                                      maxNewTokens: maxNewTokens, stemming: stemming, progress: progress).metrics
            }
        case let .classification(texts, labels):
            guard let headPath, FileManager.default.fileExists(atPath: headPath) else {
                throw TesseraError(.notFound, "\(path): the classification head '\(headPath ?? "")' does not exist",
                                   hint: "\"head\" in the header is a safetensors file, relative to the task file's folder")
            }
            // A directory or a FIFO named as the head would fail obscurely or block the read forever.
            if let kind = Self.nonRegularKind(headPath) {
                throw TesseraError(.invalidParameter, "\(path): the classification head '\(headPath)' is \(kind), not a safetensors file",
                                   hint: "\"head\" in the header is a safetensors file, relative to the task file's folder")
            }
            let head = try LinearClassificationHead(path: headPath)
            guard head.classCount == labelNames.count else {
                throw TesseraError(.shapeMismatch, "\(path): the head \(headPath) predicts \(head.classCount) classes, the header lists \(labelNames.count) labels",
                                   hint: "a head with C outputs predicts C classes (C = 1: two classes, logistic)")
            }
            return PreparedEvaluation(taskName: name, requirement: requirement, exampleCount: texts.count) { models, progress in
                let embedder = try models.requireEmbedder(for: name)
                return try ClassificationScoring.evaluate(texts: texts, labels: labels, embedder: embedder, head: head, progress: progress).metrics
            }
        }
    }
}
