import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// Which model a task computes with, so the caller loads the right one before running it.
public enum ModelRequirement: String, Sendable, Equatable, CaseIterable {
    /// A decoder-only language model and its tokenizer (perplexity, multiple choice, generation).
    case causalLanguageModel = "causal-lm"
    /// A BERT sentence embedder (classification over embeddings).
    case sentenceEmbedder = "sentence-embedder"
}

/// The models handed to a task. Only the one the task's requirement names needs to be set.
public struct EvalModels {
    public var languageModel: (any CausalLanguageModel)?
    public var tokenizer: (any TextTokenizer)?
    public var embedder: SentenceEmbedder?
    /// Called with each task's name before it runs (a routed model's oracle learns the task of the examples that
    /// follow).
    public var taskWillStart: ((String) -> Void)?

    public init(languageModel: (any CausalLanguageModel)? = nil, tokenizer: (any TextTokenizer)? = nil, embedder: SentenceEmbedder? = nil) {
        self.languageModel = languageModel
        self.tokenizer = tokenizer
        self.embedder = embedder
    }

    func requireLanguageModel(for task: String) throws -> (any CausalLanguageModel, any TextTokenizer) {
        guard let languageModel, let tokenizer else {
            throw TesseraError(.usage, "\(task) needs a causal language model and its tokenizer",
                               hint: "evaluate a decoder checkpoint (Llama, GPT-2) with this task")
        }
        return (languageModel, tokenizer)
    }

    func requireEmbedder(for task: String) throws -> SentenceEmbedder {
        guard let embedder else {
            throw TesseraError(.usage, "\(task) needs a sentence embedder (a BERT encoder such as all-MiniLM-L6-v2)",
                               hint: "evaluate a BERT checkpoint with this task")
        }
        return embedder
    }
}

/// One metric a task produced (before the revision is attached).
public struct EvalMetric: Sendable, Equatable {
    public var name: String
    public var value: Double
    /// Standard error of the mean over examples, when it is meaningful (nil for perplexity).
    public var stderr: Double?
    /// Number of examples the value is computed over.
    public var count: Int

    public init(_ name: String, value: Double, stderr: Double? = nil, count: Int) {
        self.name = name
        self.value = value
        self.stderr = stderr
        self.count = count
    }
}

/// A task whose data has been read and checked, ready to run on a model. Everything that can be wrong with the data
/// has been reported by the time this exists; `run` only computes.
public struct PreparedEvaluation {
    public let taskName: String
    public let requirement: ModelRequirement
    public let exampleCount: Int
    private let body: (EvalModels, ProgressReporter) throws -> [EvalMetric]

    public init(taskName: String, requirement: ModelRequirement, exampleCount: Int,
                run body: @escaping (EvalModels, ProgressReporter) throws -> [EvalMetric]) {
        self.taskName = taskName
        self.requirement = requirement
        self.exampleCount = exampleCount
        self.body = body
    }

    /// Runs the task; progress goes to stderr when it is a terminal (pass `ProgressReporter.silent` to mute).
    public func run(models: EvalModels, progress: ProgressReporter? = nil) throws -> [EvalMetric] {
        try body(models, progress ?? ProgressReporter(label: taskName, total: exampleCount))
    }
}

/// An evaluation task: a name, what model it needs, and how to read its data.
public protocol EvalTask: Sendable {
    /// The name results are reported under (`arc-easy`, `wikitext:20`, a user task's own name).
    var name: String { get }
    var requirement: ModelRequirement { get }
    /// Reads and validates the task's data from the data directory. Throws, naming the file and line, before any
    /// model computation.
    func prepare(data: EvalDataDirectory) throws -> PreparedEvaluation
}

/// Where the built-in tasks read their data files (the CLI defaults it to the project's `data/` folder).
public struct EvalDataDirectory: Sendable, Equatable {
    public static let environmentVariable = "TESSERA_DATA_DIR"
    public let path: String

    public init(_ path: String) { self.path = path }

    /// The directory to use: an explicit `--data-dir`, else `TESSERA_DATA_DIR`, else the caller's default (the
    /// project's embedded `data/` folder).
    public static func resolve(explicit: String?, default fallback: String,
                               environment: [String: String] = ProcessInfo.processInfo.environment) -> EvalDataDirectory {
        if let explicit, !explicit.isEmpty { return EvalDataDirectory(explicit) }
        if let fromEnvironment = environment[environmentVariable], !fromEnvironment.isEmpty { return EvalDataDirectory(fromEnvironment) }
        return EvalDataDirectory(fallback)
    }

    /// The full path of a data file, or an error that says where it looked and how to point elsewhere.
    public func file(_ name: String, for task: String) throws -> String {
        let full = URL(fileURLWithPath: path).appendingPathComponent(name).path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw TesseraError(.notFound, "\(task): data file '\(name)' not found (looked at \(full))",
                               hint: "set the data directory with --data-dir DIR or \(EvalDataDirectory.environmentVariable)=DIR; the project's data/ folder has the files")
        }
        return full
    }
}

/// Runs several tasks on one model for one revision label, in the given order.
public enum EvalRunner {
    /// Reads and checks every task's data first, so that a bad file fails before a model is even loaded.
    public static func prepare(_ tasks: [any EvalTask], data: EvalDataDirectory) throws -> [PreparedEvaluation] {
        try tasks.map { try $0.prepare(data: data) }
    }

    public static func run(_ prepared: [PreparedEvaluation], models: EvalModels, revision: String,
                           progress: (String, Int) -> ProgressReporter = { ProgressReporter(label: $0, total: $1) }) throws -> [EvalResult] {
        var results: [EvalResult] = []
        for task in prepared {
            // Two revisions evaluated one after the other must have bars that say which is which.
            models.taskWillStart?(task.taskName)
            let reporter = progress("\(revision) \(task.taskName)", task.exampleCount)
            let metrics = try task.run(models: models, progress: reporter)
            reporter.finish()
            results += metrics.map {
                EvalResult(task: task.taskName, metric: $0.name, value: $0.value, stderr: $0.stderr, count: $0.count, revision: revision)
            }
        }
        return results
    }
}

/// Standard error of the mean with the sample variance (n − 1), as lm-eval-harness reports it.
func standardError(_ values: [Double]) -> Double? {
    let n = Double(values.count)
    guard values.count > 1 else { return nil }
    let mean = values.reduce(0, +) / n
    let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)
    return (variance / n).squareRoot()
}

/// Reads a UTF-8 text file, with an error naming the task and file.
func readText(_ path: String, for task: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw TesseraError(.io, "\(task): cannot read \(path)", hint: "check that the file is readable")
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw TesseraError(.invalidParameter, "\(task): \(path) is not UTF-8 text")
    }
    return text
}

/// Lines of a JSONL file with their 1-based line numbers, blank lines skipped, each parsed strictly.
func jsonLines(_ path: String, for task: String) throws -> [(line: Int, value: JSONValue)] {
    let text = try readText(path, for: task)
    var out: [(Int, JSONValue)] = []
    for (i, line) in textLines(text).enumerated() {
        if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
        do {
            out.append((i + 1, try JSONParser.parse(String(line))))
        } catch {
            throw TesseraError(.invalidParameter, "\(path):\(i + 1): not valid JSON (\(error))",
                               hint: "each line must be one JSON object")
        }
    }
    return out
}

/// `:N` limits: the first N examples.
func applyLimit<T>(_ items: [T], _ limit: Int?) -> [T] {
    guard let limit else { return items }
    return Array(items.prefix(limit))
}

/// Lines split at LF or CRLF (the line end is dropped). Swift counts "\r\n" as one Character, so splitting a String
/// on "\n" alone would miss CRLF line ends (wikitext2_raw_test.txt has them).
func textLines(_ text: String) -> [Substring] {
    text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
}
