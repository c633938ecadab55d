import Foundation
import TesseraCore

/// One number of an evaluation: a task's metric for one revision.
public struct EvalResult: Sendable, Equatable {
    public var task: String
    public var metric: String
    public var value: Double
    public var stderr: Double?
    /// Number of examples behind the value.
    public var count: Int
    /// The revision label the model was loaded from (`HEAD`, `main~2:model.safetensors`, a file name).
    public var revision: String
    /// LoRA adapters the model ran with, unmerged (`tessera eval --adapter`), so that the score can be reproduced.
    public var adapters: [EvalAdapterRecord]

    public init(task: String, metric: String, value: Double, stderr: Double? = nil, count: Int, revision: String,
                adapters: [EvalAdapterRecord] = []) {
        self.task = task
        self.metric = metric
        self.value = value
        self.stderr = stderr
        self.count = count
        self.revision = revision
        self.adapters = adapters
    }
}

/// An adapter a result was computed with: the folder as named, and a hash of its content.
public struct EvalAdapterRecord: Sendable, Equatable {
    public var path: String
    public var sha256: String

    public init(path: String, sha256: String) {
        self.path = path
        self.sha256 = sha256
    }
}

/// Results of one or more revisions on one or more tasks, rendered as a text table, JSON or SVG charts. Order is
/// the order of first appearance (tasks, metrics and revisions), so output is deterministic.
public struct EvalReport: Sendable, Equatable {
    public var results: [EvalResult]

    public init(_ results: [EvalResult]) { self.results = results }

    public var revisions: [String] { ordered(results.map(\.revision)) }
    public var tasks: [String] { ordered(results.map(\.task)) }

    public func metrics(of task: String) -> [String] { ordered(results.filter { $0.task == task }.map(\.metric)) }

    public func result(task: String, metric: String, revision: String) -> EvalResult? {
        results.last { $0.task == task && $0.metric == metric && $0.revision == revision }
    }

    private func ordered(_ names: [String]) -> [String] {
        var seen = Set<String>()
        return names.filter { seen.insert($0).inserted }
    }
}

/// Number formatting shared by the renderers: fixed decimals, never locale-dependent.
enum EvalFormat {
    static func value(_ v: Double, decimals: Int = 4) -> String {
        guard v.isFinite else { return v.isNaN ? "nan" : (v > 0 ? "inf" : "-inf") }
        return String(format: "%.\(decimals)f", v)
    }
}
