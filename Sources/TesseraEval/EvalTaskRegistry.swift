import Foundation
import TesseraCore
import TesseraIO

/// Options for the built-in tasks that a caller (the CLI) may set.
public struct EvalTaskOptions: Sendable {
    /// The SST-2 head checkpoint; default `minilm_sst2_head.safetensors` in the data directory.
    public var sst2HeadPath: String?
    /// Generation length for `selfinstruct`.
    public var maxNewTokens: Int
    /// The chat template for generation tasks (system turn).
    public var chatTemplate: ChatPromptFormat

    public init(sst2HeadPath: String? = nil, maxNewTokens: Int = 128, chatTemplate: ChatPromptFormat = ChatPromptFormat()) {
        self.sst2HeadPath = sst2HeadPath
        self.maxNewTokens = maxNewTokens
        self.chatTemplate = chatTemplate
    }
}

/// Turns a task spec into a task: a built-in name (`arc-easy`), optionally limited to the first N examples
/// (`arc-easy:50`), or the path of a user task file (`my_task.jsonl`, `my_task.jsonl:20`).
public enum EvalTaskRegistry {
    public struct Entry: Sendable {
        public let name: String
        public let requirement: ModelRequirement
        public let summary: String
    }

    public static let builtIn: [Entry] = [
        Entry(name: "wikitext", requirement: .causalLanguageModel, summary: "WikiText-2 test perplexity, one sequence per line (nll, perplexity)"),
        Entry(name: "arc-easy", requirement: .causalLanguageModel, summary: "ARC-Easy test, lm-eval-harness recipe (acc, acc_norm)"),
        Entry(name: "arc-challenge", requirement: .causalLanguageModel, summary: "ARC-Challenge test, lm-eval-harness recipe (acc, acc_norm)"),
        Entry(name: "sst2", requirement: .sentenceEmbedder, summary: "SST-2 dev sentiment, sentence embeddings + linear head (acc)"),
        Entry(name: "selfinstruct", requirement: .causalLanguageModel, summary: "Self-Instruct user-oriented tasks, greedy chat generation (rougeL)"),
    ]

    public static func task(_ spec: String, options: EvalTaskOptions = EvalTaskOptions()) throws -> any EvalTask {
        var base = spec
        var limit: Int? = nil
        if let colon = spec.lastIndex(of: ":") {
            let suffix = spec[spec.index(after: colon)...]
            if !suffix.isEmpty, suffix.allSatisfy(\.isASCII), suffix.allSatisfy(\.isNumber) {
                guard let n = Int(suffix), n > 0 else {
                    throw TesseraError(.usage, "task '\(spec)': the limit after ':' must be a positive number of examples")
                }
                limit = n
                base = String(spec[..<colon])
            }
        }
        if base.hasSuffix(".jsonl") || base.contains("/") {
            return try UserTask(path: base, limit: limit)
        }
        switch base {
        case "wikitext": return WikitextTask(limit: limit)
        case "arc-easy": return ARCTask(.easy, limit: limit)
        case "arc-challenge": return ARCTask(.challenge, limit: limit)
        case "sst2": return SST2Task(limit: limit, headPath: options.sst2HeadPath)
        case "selfinstruct": return SelfInstructTask(limit: limit, maxNewTokens: options.maxNewTokens, template: options.chatTemplate)
        default:
            throw TesseraError(.usage, "unknown task '\(base)'",
                               hint: "built-in tasks: \(builtIn.map(\.name).joined(separator: ", ")); or give the path of a .jsonl task file; add :N to take the first N examples")
        }
    }
}
