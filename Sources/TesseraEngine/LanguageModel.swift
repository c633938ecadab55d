import TesseraCore

/// Token ids in, text out: byte-level BPE (tokenizer.json or GGUF metadata) and WordPiece implement this.
public protocol TextTokenizer: AnyObject {
    func encode(_ text: String) throws -> [Int]
    func decode(_ ids: [Int]) -> String
    var vocabularySize: Int { get }
    /// End-of-sequence / end-of-turn ids that stop generation.
    var stopTokenIDs: Set<Int> { get }
}

/// How generation picks the next token. Sampling is seeded so that results are reproducible.
public enum Sampling: Sendable, Equatable {
    case greedy
    case temperature(Float, topP: Float = 1, seed: UInt64)
}

/// A decoder-only language model (Llama, GPT-2, GPT-Neo) as evaluation tasks see it.
public protocol CausalLanguageModel: AnyObject {
    var vocabularySize: Int { get }
    var maxSequenceLength: Int { get }
    /// For each request, the log-probability of every continuation token given the context and the continuation
    /// tokens before it. Requests that share a context may be computed once (the engine shares the prefix).
    func scoreContinuations(_ requests: [(context: [Int], continuation: [Int])]) throws -> [[Float]]
    /// Generates up to `maxNewTokens` after `prompt` with a KV cache, stopping at any of `stop`.
    func generate(prompt: [Int], maxNewTokens: Int, sampling: Sampling, stop: Set<Int>) throws -> [Int]
}
