import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO

/// Training sequences made from `tessera eval`'s task files (docs/task-format.md), rendered as evaluation renders
/// them so that training and evaluation see the same text:
/// - generation: the prompt (inside the task's chat template unless `"chat": false`) tokenised as
///   `GenerationScoring` tokenises it, then the first reference and the end-of-turn token; only the reference and
///   the end token are counted;
/// - multiple choice: the context and the correct continuation, split and tokenised as `MultipleChoiceScoring`
///   does (lm-eval-harness `_encode_pair`); only the continuation is counted;
/// - classification: the text as context and `" " + label name` as its continuation, the same pair form; only
///   the label is counted;
/// - perplexity: plain text, every token after the first counted, cut into windows of `maxLength` tokens that
///   overlap by one token so that each token is predicted once.
/// A (context, continuation) pair longer than `maxLength` keeps the end of its context and, if the continuation
/// alone does not fit, the start of its continuation: `maxLength − 1` tokens of it after one context token.
public enum TrainingData {
    public struct Rendered: Sendable {
        public var sequences: [TrainingSequence]
        /// Examples cut to `maxLength`.
        public var truncated: Int
        /// Examples that predict nothing (an empty continuation, a one-token text).
        public var dropped: Int
        public var examples: Int
    }

    /// The sequences of one task file.
    public static func render(_ task: UserTask, tokenizer: any TextTokenizer, maxLength: Int) throws -> Rendered {
        guard maxLength >= 2 else {
            throw TesseraError(.usage, "the maximum length must be at least 2 tokens", hint: "e.g. --max-length 512")
        }
        var out = Rendered(sequences: [], truncated: 0, dropped: 0, examples: 0)
        func add(context: [Int], continuation: [Int]) {
            out.examples += 1
            guard let (sequence, truncated) = fitted(context: context, continuation: continuation, maxLength: maxLength) else {
                out.dropped += 1
                return
            }
            if truncated { out.truncated += 1 }
            out.sequences.append(sequence)
        }
        switch task.examples {
        case let .perplexity(texts):
            for text in texts {
                out.examples += 1
                let ids = try tokenizer.encode(text)
                guard ids.count >= 2 else { out.dropped += 1; continue }
                if ids.count > maxLength { out.truncated += 1 }
                out.sequences += windows(ids, maxLength: maxLength)
            }
        case let .multipleChoice(questions):
            for q in questions {
                let requests = try MultipleChoiceScoring.requests(for: q, tokenizer: tokenizer)
                let gold = requests[q.gold]
                add(context: gold.context, continuation: gold.continuation)
            }
        case let .classification(texts, labels):
            for (text, label) in zip(texts, labels) {
                let q = MultipleChoiceQuestion(id: "", context: text, continuations: task.labelNames.map { " " + $0 }, gold: label)
                let requests = try MultipleChoiceScoring.requests(for: q, tokenizer: tokenizer)
                add(context: requests[label].context, continuation: requests[label].continuation)
            }
        case let .generation(examples):
            let end = try endOfTurn(tokenizer: tokenizer, chat: task.template != nil)
            for example in examples {
                let (prompt, continuation) = try generationPair(example, task: task, tokenizer: tokenizer, end: end, maxLength: maxLength)
                add(context: prompt, continuation: continuation)
            }
        }
        return out
    }

    /// A generation example's prompt (in the task's chat template) and its first reference followed by `end`.
    static func generationPair(_ example: GenerationExample, task: UserTask, tokenizer: any TextTokenizer, end: [Int],
                               maxLength: Int) throws -> (prompt: [Int], continuation: [Int]) {
        let text = task.template.map { $0.prompt(user: example.prompt) } ?? example.prompt
        let prompt = try tokenizer.encode(text)
        let answer = try tokenizer.encode(example.references.first ?? "")
        // The end token comes after the answer even when the answer is cut: the model learns to stop.
        var continuation = answer + end
        if prompt.count + continuation.count > maxLength, continuation.count > maxLength - 1, !end.isEmpty {
            continuation = Array(answer.prefix(max(0, maxLength - 1 - end.count))) + end
        }
        return (prompt, continuation)
    }

    /// The token generation stops at after an answer: the chat template's `<|im_end|>` when it is one token the
    /// tokenizer stops at, else the tokenizer's end-of-sequence token, else its smallest stop id, else nothing.
    static func endOfTurn(tokenizer: any TextTokenizer, chat: Bool) throws -> [Int] {
        if chat, let ids = try? tokenizer.encode("<|im_end|>"), ids.count == 1, tokenizer.stopTokenIDs.contains(ids[0]) { return ids }
        if let eos = (tokenizer as? BPETokenizer)?.eosTokenID { return [eos] }
        return tokenizer.stopTokenIDs.min().map { [$0] } ?? []
    }

    /// The pair as one sequence cut to `maxLength` as described above (and whether it was cut), or nil when it
    /// predicts nothing.
    static func fitted(context: [Int], continuation: [Int], maxLength: Int) -> (TrainingSequence, truncated: Bool)? {
        guard !continuation.isEmpty, !context.isEmpty || continuation.count > 1 else { return nil }
        var context = context, continuation = continuation
        let truncated = context.count + continuation.count > maxLength
        if truncated {
            if continuation.count > maxLength - 1 { continuation = Array(continuation.prefix(maxLength - 1)) }
            let room = maxLength - continuation.count
            if context.count > room { context = Array(context.suffix(room)) }
        }
        return (pair(context: context, continuation: continuation), truncated)
    }

    /// Plain text in windows of `maxLength` tokens overlapping by one, so that each token after the first is
    /// predicted once (empty when the text has fewer than two tokens).
    static func windows(_ ids: [Int], maxLength: Int) -> [TrainingSequence] {
        var out: [TrainingSequence] = []
        var start = 0
        while start + 1 < ids.count {
            let end = min(ids.count, start + maxLength)
            out.append(TrainingSequence(text: ids[start..<end].map { Int32(truncatingIfNeeded: $0) }))
            start = end - 1
        }
        return out
    }

    /// Context then continuation in one sequence; only the continuation's tokens are targets.
    public static func pair(context: [Int], continuation: [Int]) -> TrainingSequence {
        let tokens = (context + continuation).map { Int32(truncatingIfNeeded: $0) }
        var targets = [Int32](repeating: TrainingSequence.ignored, count: tokens.count)
        // Position t predicts token t + 1: the continuation's tokens are predicted from the position before each.
        for i in 0..<continuation.count {
            let position = context.count + i - 1
            if position >= 0 { targets[position] = tokens[position + 1] }
        }
        return TrainingSequence(tokens: tokens, targets: targets)
    }
}

/// Every task file's sequences, in order: the data set the trainer draws batches from.
public struct TrainingDataSet: Sendable {
    public struct File: Sendable {
        public var path: String
        public var taskName: String
        public var kind: UserTask.Kind
        public var examples: Int
        public var sequences: Int
        public var truncated: Int
        public var dropped: Int
    }

    public var sequences: [TrainingSequence]
    public var files: [File]

    public init(sequences: [TrainingSequence], files: [File] = []) {
        self.sequences = sequences
        self.files = files
    }

    /// Reads, checks and renders the task files (every file is checked before any is rendered).
    public static func load(_ paths: [String], tokenizer: any TextTokenizer, maxLength: Int) throws -> TrainingDataSet {
        let tasks = try paths.map { try UserTask(path: $0) }
        var sequences: [TrainingSequence] = []
        var files: [File] = []
        for (path, task) in zip(paths, tasks) {
            let rendered = try TrainingData.render(task, tokenizer: tokenizer, maxLength: maxLength)
            guard !rendered.sequences.isEmpty else {
                throw TesseraError(.invalidParameter, "\(path): none of its \(rendered.examples) examples has a token to predict",
                                   hint: "give completions, answers or texts of at least two tokens")
            }
            sequences += rendered.sequences
            files.append(File(path: path, taskName: task.taskName, kind: task.kind, examples: rendered.examples,
                              sequences: rendered.sequences.count, truncated: rendered.truncated, dropped: rendered.dropped))
        }
        return TrainingDataSet(sequences: sequences, files: files)
    }

    public var countedTargets: Int { sequences.reduce(0) { $0 + $1.countedTargets } }
}

/// Which sequences make each step's batch: epoch e visits the data in a seeded permutation of its own, in
/// ⌈N / batch⌉ batches (the last one short, as a PyTorch DataLoader without `drop_last`), so that a step's batch
/// depends only on the seed and the step (a resumed run needs no other state to continue the order).
public struct BatchOrder: Sendable {
    public let count: Int
    public let batchSize: Int
    public let seed: UInt64

    public init(count: Int, batchSize: Int, seed: UInt64) {
        precondition(count > 0 && batchSize > 0, "BatchOrder: empty")
        self.count = count
        self.batchSize = batchSize
        self.seed = seed
    }

    public var batchesPerEpoch: Int { (count + batchSize - 1) / batchSize }

    public func permutation(epoch: Int) -> [Int] {
        var rng = SplitMix64(seed: SplitMix64.derive(seed, 0x6461_7461, UInt64(epoch)))
        var order = Array(0..<count)
        rng.shuffle(&order)
        return order
    }

    /// The indices of step `step`'s batch (0-based).
    public func batch(step: Int) -> [Int] {
        let epoch = step / batchesPerEpoch, index = step % batchesPerEpoch
        let order = permutation(epoch: epoch)
        return Array(order[(index * batchSize)..<min(count, (index + 1) * batchSize)])
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small seeded generator whose whole state is one word, and a mixer to
/// derive independent seeds (per epoch, per step and micro-batch) from the run's seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return Self.mix(state)
    }

    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public static func derive(_ seed: UInt64, _ parts: UInt64...) -> UInt64 {
        var h = mix(seed ^ 0x5445_5353_4552_4121)
        for p in parts { h = mix(h ^ mix(p &+ 0x9E37_79B9_7F4A_7C15)) }
        return h
    }

    /// A uniform float in [0, 1) with 24 random bits.
    public mutating func nextUnitFloat() -> Float { Float(next() >> 40) * 0x1p-24 }

    /// Fisher–Yates with unbiased bounded draws, written out so that the order does not depend on the standard
    /// library's shuffle algorithm.
    public mutating func shuffle(_ items: inout [Int]) {
        guard items.count > 1 else { return }
        for i in stride(from: items.count - 1, to: 0, by: -1) {
            let j = Int(boundedDraw(UInt64(i + 1)))
            items.swapAt(i, j)
        }
    }

    /// A uniform integer in [0, bound) by rejection (no modulo bias).
    public mutating func boundedDraw(_ bound: UInt64) -> UInt64 {
        let limit = UInt64.max - UInt64.max % bound
        while true {
            let x = next()
            if x < limit { return x % bound }
        }
    }
}
