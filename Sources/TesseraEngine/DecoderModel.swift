import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// The KV cache and scratch memory of one sequence being processed.
///
/// Keys and values of layer l are stored [kvHeads, capacity, headDim] so that each head's keys are one contiguous
/// matrix for sgemm. `final class @unchecked Sendable`: a state is used by one forward call at a time (the model
/// creates one per request batch and never shares it between threads).
public final class DecoderState: @unchecked Sendable {
    public let layers: Int
    public let kvHeads: Int
    public let headDim: Int
    public private(set) var capacity: Int
    /// Number of positions already in the cache; the next token goes at this position.
    public var length: Int = 0 {
        didSet { precondition(length >= 0 && length <= capacity, "cache length out of range") }
    }
    private(set) var keys: [UnsafeMutablePointer<Float>]
    private(set) var values: [UnsafeMutablePointer<Float>]
    let scratch = ScratchBuffers(slots: 12)
    /// Receives the activations of every forward pass run on this state (see `ActivationSite`); nil by default.
    public var recorder: (any ActivationRecorder)?

    init(layers: Int, kvHeads: Int, headDim: Int, capacity: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.capacity = max(1, capacity)
        let n = kvHeads * self.capacity * headDim
        keys = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: n) }
        values = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: n) }
    }

    deinit {
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
    }

    /// Grows the cache (keeping its contents) so it holds at least `needed` positions.
    func reserve(_ needed: Int) {
        guard needed > capacity else { return }
        let newCapacity = max(needed, capacity * 2)
        let n = kvHeads * newCapacity * headDim
        for l in 0..<layers {
            for pair in [(keys[l], true), (values[l], false)] {
                let bigger = UnsafeMutablePointer<Float>.allocate(capacity: n)
                for h in 0..<kvHeads {
                    (bigger + h * newCapacity * headDim).update(from: pair.0 + h * capacity * headDim, count: length * headDim)
                }
                pair.0.deallocate()
                if pair.1 { keys[l] = bigger } else { values[l] = bigger }
            }
        }
        capacity = newCapacity
    }

    /// Copies `tokens` rows of keys and values (each [kvHeads · headDim] at row stride `ld`) into layer `layer` at
    /// positions `start`..<`start + tokens`.
    func store(layer: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>, ld: Int, tokens: Int, start: Int) {
        let kc = keys[layer], vc = values[layer]
        for t in 0..<tokens {
            for h in 0..<kvHeads {
                let dst = (h * capacity + start + t) * headDim
                (kc + dst).update(from: k + t * ld + h * headDim, count: headDim)
                (vc + dst).update(from: v + t * ld + h * headDim, count: headDim)
            }
        }
    }
}

/// Where a forward pass hands an activation to a recorder: the values each operation reads, which a backward pass
/// needs (the architectures' `forward` documents which operation reads which). Rows are tokens of the pass.
public enum ActivationSite: String, Sendable, CaseIterable {
    /// The residual stream entering a layer's attention block (before its norm; BERT: the layer's input).
    case attentionNormInput
    /// The normalised input of the Q/K/V projection.
    case attentionInput
    /// Q, K and V as attention reads them (after RoPE where there is one), one row per token.
    case queryKeyValue
    /// Attention's output per head, the input of the attention output projection.
    case attentionOutput
    /// The residual stream entering the MLP block (before its norm; BERT: before the attention LayerNorm).
    case mlpNormInput
    /// The normalised input of the MLP's first projection.
    case mlpInput
    /// The MLP's first projection before the activation (Llama: gate and up side by side).
    case mlpUp
    /// The activation's output, the input of the MLP's down projection.
    case mlpHidden
    /// The residual stream entering the final norm (decoders) or a layer's output LayerNorm (BERT).
    case finalNormInput
    /// The normalised rows the output head multiplies.
    case headInput
}

/// Receives activations as a forward pass produces them (copy what is kept: the buffers are reused).
public protocol ActivationRecorder: AnyObject {
    /// `values` holds `rows` rows of `width` floats, valid during the call. `layer` is nil outside the layer stack.
    func record(_ site: ActivationSite, layer: Int?, values: UnsafePointer<Float>, rows: Int, width: Int)
}

/// Float scratch buffers reused across forward calls (no allocation per token once they have grown).
///
/// `final class @unchecked Sendable`: a scratch set belongs to one `DecoderState`, which one call uses at a time.
final class ScratchBuffers: @unchecked Sendable {
    private var buffers: [UnsafeMutablePointer<Float>?]
    private var sizes: [Int]

    init(slots: Int) {
        buffers = Array(repeating: nil, count: slots)
        sizes = Array(repeating: 0, count: slots)
    }

    deinit { for b in buffers { b?.deallocate() } }

    /// Slot `slot` with room for at least `count` floats (contents unspecified).
    func buffer(_ slot: Int, count: Int) -> UnsafeMutablePointer<Float> {
        if let existing = buffers[slot], sizes[slot] >= count { return existing }
        buffers[slot]?.deallocate()
        let n = max(count, sizes[slot] * 2, 1)
        let fresh = UnsafeMutablePointer<Float>.allocate(capacity: n)
        buffers[slot] = fresh
        sizes[slot] = n
        return fresh
    }
}

/// A decoder-only transformer the engine can run: each architecture implements `forward`, and scoring and
/// generation are shared (below).
public protocol DecoderArchitecture: CausalLanguageModel {
    var layerCount: Int { get }
    var kvHeadCount: Int { get }
    var headDimension: Int { get }
    /// Runs `tokens` after the `state.length` cached positions, appends their keys/values to the cache and returns
    /// the logits of the rows `logitRows` (indices into `tokens`), row-major [logitRows.count, vocabularySize].
    /// `segments` nil: the tokens continue the cached sequence. Otherwise `tokens` is several independent
    /// continuations of the cached context, concatenated, with these lengths: each sees the context and its own
    /// earlier tokens, at positions restarting after the context. (The caller then rolls `state.length` back.)
    func forward(_ tokens: [Int], state: DecoderState, logitRows: [Int], segments: [Int]?) throws -> [Float]
}

extension DecoderArchitecture {
    /// Runs `tokens` continuing the cached sequence (see `forward(_:state:logitRows:segments:)`).
    public func forward(_ tokens: [Int], state: DecoderState, logitRows: [Int]) throws -> [Float] {
        try forward(tokens, state: state, logitRows: logitRows, segments: nil)
    }

    /// The layout of a forward pass, checked against the vocabulary and the context length.
    func prepare(_ tokens: [Int], state: DecoderState, segments: [Int]?) throws -> TokenLayout {
        try checkTokens(tokens)
        let layout: TokenLayout
        if let segments {
            guard segments.allSatisfy({ $0 > 0 }), segments.reduce(0, +) == tokens.count else {
                throw TesseraError(.invalidParameter, "segment lengths \(segments) do not add up to \(tokens.count) tokens")
            }
            layout = TokenLayout(segments: segments, start: state.length)
        } else {
            layout = TokenLayout(causal: tokens.count, start: state.length)
        }
        try checkLength((layout.positions.max() ?? state.length - 1) + 1)
        state.reserve(state.length + tokens.count)
        return layout
    }

    public func makeState(capacity: Int) -> DecoderState {
        DecoderState(layers: layerCount, kvHeads: kvHeadCount, headDim: headDimension, capacity: capacity)
    }

    /// Logits of every position of one sequence, [tokens.count, vocabularySize].
    public func logits(_ tokens: [Int]) throws -> [Float] {
        try checkLength(tokens.count)
        return try forward(tokens, state: makeState(capacity: tokens.count), logitRows: Array(0..<tokens.count))
    }

    func checkLength(_ n: Int) throws {
        guard n <= maxSequenceLength else {
            throw TesseraError(.invalidParameter, "a sequence of \(n) tokens is longer than the model's context of \(maxSequenceLength)",
                               hint: "shorten the input")
        }
    }

    func checkTokens(_ tokens: [Int]) throws {
        for t in tokens where t < 0 || t >= vocabularySize {
            throw TesseraError(.invalidParameter, "token id \(t) is outside the model's vocabulary of \(vocabularySize)",
                               hint: "use the tokenizer that belongs to the model")
        }
    }

    /// Requests with the same context share one forward pass over it: the context is run once into the KV cache,
    /// then each continuation (without its last token, whose output is not needed) runs on top of it and the cache
    /// is rolled back to the context.
    public func scoreContinuations(_ requests: [(context: [Int], continuation: [Int])]) throws -> [[Float]] {
        var results = [[Float]](repeating: [], count: requests.count)
        var groups: [[Int]: [Int]] = [:]
        var order: [[Int]] = []
        for (i, r) in requests.enumerated() {
            guard !r.context.isEmpty else {
                throw TesseraError(.invalidParameter, "request \(i) has an empty context, so its first token has no prediction",
                                   hint: "start the context with a BOS/EOS token")
            }
            try checkTokens(r.context)
            try checkTokens(r.continuation)
            try checkLength(r.context.count + r.continuation.count)
            if groups[r.context] == nil { order.append(r.context) }
            groups[r.context, default: []].append(i)
        }
        let state = makeState(capacity: 64)
        let vocab = vocabularySize
        // Continuations sharing a context run together, but at most a context's worth of tokens per pass: logits
        // and attention scratch grow with the tokens of one pass, so an unbounded group (a long repetitive text
        // whose windows all start with the same token) would need memory in proportion to the whole text.
        let batchTokens = max(1, maxSequenceLength)
        for context in order {
            let members = groups[context]!
            state.length = 0
            let contextLogits = try forward(context, state: state, logitRows: [context.count - 1])
            for i in members where !requests[i].continuation.isEmpty {
                var scores = [Float](repeating: 0, count: requests[i].continuation.count)
                scores[0] = contextLogits.withUnsafeBufferPointer {
                    VectorKernels.logProbability($0.baseAddress!, count: vocab, at: requests[i].continuation[0])
                }
                results[i] = scores
            }
            var batches: [[Int]] = []
            var batchSize = 0
            for i in members where requests[i].continuation.count > 1 {
                let n = requests[i].continuation.count - 1
                if batches.isEmpty || batchSize + n > batchTokens {
                    batches.append([])
                    batchSize = 0
                }
                batches[batches.count - 1].append(i)
                batchSize += n
            }
            for batch in batches {
                // The batch's continuations (without their last tokens) in one pass, each seeing the context and itself.
                var inputs: [Int] = [], segments: [Int] = [], firstRow: [Int] = []
                for i in batch {
                    firstRow.append(inputs.count)
                    inputs += requests[i].continuation.dropLast()
                    segments.append(requests[i].continuation.count - 1)
                }
                state.reserve(context.count + inputs.count)
                let logits = try forward(inputs, state: state, logitRows: Array(0..<inputs.count), segments: segments)
                state.length = context.count
                logits.withUnsafeBufferPointer { l in
                    for (k, i) in batch.enumerated() {
                        let continuation = requests[i].continuation
                        for j in 1..<continuation.count {
                            results[i][j] = VectorKernels.logProbability(l.baseAddress! + (firstRow[k] + j - 1) * vocab, count: vocab, at: continuation[j])
                        }
                    }
                }
            }
        }
        return results
    }

    /// Generates with a KV cache. The stop token that ends generation is not included in the result.
    public func generate(prompt: [Int], maxNewTokens: Int, sampling: Sampling, stop: Set<Int>) throws -> [Int] {
        guard !prompt.isEmpty else {
            throw TesseraError(.invalidParameter, "cannot generate from an empty prompt", hint: "start the prompt with a BOS token")
        }
        try checkTokens(prompt)
        try checkLength(prompt.count)
        let budget = min(maxNewTokens, maxSequenceLength - prompt.count)
        guard budget > 0 else { return [] }
        let state = makeState(capacity: prompt.count + budget)
        var logits = try forward(prompt, state: state, logitRows: [prompt.count - 1])
        var sampler = TokenSampler(sampling)
        var generated: [Int] = []
        while generated.count < budget {
            let next = sampler.pick(&logits)
            if stop.contains(next) { break }
            generated.append(next)
            if generated.count == budget { break }
            logits = try forward([next], state: state, logitRows: [0])
        }
        return generated
    }
}

/// Picks the next token from one logits row: argmax, or temperature + nucleus (top-p) sampling from a seeded
/// SplitMix64 generator so that runs are reproducible.
struct TokenSampler {
    let sampling: Sampling
    var rngState: UInt64

    init(_ sampling: Sampling) {
        self.sampling = sampling
        if case let .temperature(_, _, seed) = sampling { rngState = seed } else { rngState = 0 }
    }

    mutating func nextUniform() -> Double {
        rngState &+= 0x9E37_79B9_7F4A_7C15
        var z = rngState
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }

    mutating func pick(_ logits: inout [Float]) -> Int {
        switch sampling {
        case .greedy:
            return pickGreedy(logits)
        case let .temperature(temperature, topP, _):
            if temperature <= 0 { return pickGreedy(logits) }
            var maxLogit = -Float.infinity
            for v in logits where v > maxLogit { maxLogit = v }
            var probs = [Double](repeating: 0, count: logits.count)
            var total = 0.0
            for j in 0..<logits.count {
                let e = exp(Double((logits[j] - maxLogit) / temperature))
                probs[j] = e
                total += e
            }
            var candidates = Array(0..<logits.count)
            var mass = total
            if topP < 1 {
                candidates.sort { probs[$0] > probs[$1] }
                var kept = 0
                var cumulative = 0.0
                while kept < candidates.count {
                    cumulative += probs[candidates[kept]]
                    kept += 1
                    if cumulative >= Double(topP) * total { break }
                }
                candidates.removeSubrange(kept...)
                mass = cumulative
            }
            var u = nextUniform() * mass
            for j in candidates {
                u -= probs[j]
                if u <= 0 { return j }
            }
            return candidates.last!
        }
    }

    func pickGreedy(_ logits: [Float]) -> Int {
        var best = 0
        for j in 1..<logits.count where logits[j] > logits[best] { best = j }
        return best
    }
}
