import Foundation
import TesseraEngine
import TesseraIO
import TesseraMath

/// One example for a sequence classifier: its tokens and the index of its class.
public struct ClassificationExample: Sendable, Equatable {
    public var tokens: [Int32]
    public var label: Int

    public init(tokens: [Int32], label: Int) {
        self.tokens = tokens
        self.label = label
    }
}

/// A linear classification head being trained: logits = W · x + b, W [classes, inputs] and b [classes] row-major
/// float32 (the layout `LinearClassificationHead` reads), and their gradients. One output is logistic regression
/// (class 1 iff the logit is positive), as `LinearClassificationHead` predicts it.
public final class LinearHeadParameters {
    public let outputs: Int
    public let inputs: Int
    public var weight: [Float]
    public var bias: [Float]
    public var gradientWeight: [Float]
    public var gradientBias: [Float]

    public init(outputs: Int, inputs: Int, weight: [Float], bias: [Float]) {
        precondition(outputs > 0 && inputs > 0 && weight.count == outputs * inputs && bias.count == outputs, "head sizes")
        self.outputs = outputs
        self.inputs = inputs
        self.weight = weight
        self.bias = bias
        gradientWeight = [Float](repeating: 0, count: weight.count)
        gradientBias = [Float](repeating: 0, count: bias.count)
    }

    /// Classes predicted: 2 for a single logistic output.
    public var classCount: Int { outputs == 1 ? 2 : outputs }

    public func zeroGradients() {
        for i in gradientWeight.indices { gradientWeight[i] = 0 }
        for i in gradientBias.indices { gradientBias[i] = 0 }
    }
}

/// A sequence classifier (BERT) trained through LoRA modules and a linear head on its pooled output, the base
/// frozen: the classification counterpart of `TrainableLanguageModel`.
public protocol TrainableSequenceClassifier: AnyObject {
    var vocabularySize: Int { get }
    var maxSequenceLength: Int { get }
    /// The width of the pooled vector the head reads.
    var pooledSize: Int { get }
    var adaptableModules: [AdaptableModule] { get }
    /// Uses `parameters` in every following pass (nil: the base alone); throws, changing nothing, on a module that
    /// does not fit.
    func attach(_ parameters: LoRAParameters?) throws
    /// Uses `head` on the pooled output; throws, changing nothing, if its input size is not `pooledSize`.
    func attachHead(_ head: LinearHeadParameters) throws
    /// Forward and backward: the sum of the examples' cross-entropies (count: the examples), and `lossScale ·` its
    /// gradient added to every attached LoRA factor's and the head's gradients.
    func accumulateGradients(_ batch: [ClassificationExample], lossScale: Float, dropoutSeed: UInt64) throws -> LossSum
    /// Forward only (no dropout).
    func loss(_ batch: [ClassificationExample]) throws -> LossSum
}

/// BERT as the engine classifies with it (`SentenceEmbedder` + `LinearClassificationHead`): token type 0, each
/// sequence attending to its own tokens only (what padding with an attention mask gives), post-LayerNorm layers, the
/// last hidden states averaged over the sequence, divided by max(‖·‖, 1e-12), then the head. LoRA modules may sit on
/// the query, key, value, attention output, intermediate and output dense layers.
///
/// Memory: per layer its input, Q/K/V, the attention context, the residual sums before both LayerNorms and the
/// intermediate product are kept; LayerNorm outputs and GELU are recomputed.
public final class BERTTraining: TrainableSequenceClassifier {
    public let model: BERTModel
    private let config: BERTConfig
    private let layers: [Layer]
    private let sites: LoRASites
    private let space = Workspace()
    private var head: LinearHeadParameters?
    private let tables: (word: [Float], position: [Float], tokenType: [Float], normWeight: [Float], normBias: [Float])

    struct Layer {
        let qkv: LoRALinear, output: LoRALinear, up: LoRALinear, down: LoRALinear
        let norm1Weight: UnsafePointer<Float>, norm1Bias: UnsafePointer<Float>
        let norm2Weight: UnsafePointer<Float>, norm2Bias: UnsafePointer<Float>
        var linears: [LoRALinear] { [qkv, output, up, down] }
    }

    final class Tape {
        let input: TrainingBuffer, qkv: TrainingBuffer, context: TrainingBuffer, attentionSum: TrainingBuffer
        let up: TrainingBuffer, outputSum: TrainingBuffer
        var qkvTape = LinearTape(), outputTape = LinearTape(), upTape = LinearTape(), downTape = LinearTape()

        init(rows n: Int, hidden h: Int, inner: Int, space: Workspace) {
            input = space.take(n * h)
            qkv = space.take(n * 3 * h)
            context = space.take(n * h)
            attentionSum = space.take(n * h)
            up = space.take(n * inner)
            outputSum = space.take(n * h)
        }
    }

    public init(_ model: BERTModel) {
        self.model = model
        config = model.config
        tables = model.embeddingTables
        let sites = LoRASites(prefixes: ["bert."])
        var layers: [Layer] = []
        for l in model.layers {
            let layer = Layer(qkv: LoRALinear(l.attention.qkv), output: LoRALinear(l.attention.output), up: LoRALinear(l.mlp.up),
                              down: LoRALinear(l.mlp.down), norm1Weight: l.attentionNormWeights, norm1Bias: l.attentionNormBiases,
                              norm2Weight: l.outputNormWeights, norm2Bias: l.outputNormBiases)
            for linear in layer.linears {
                for s in linear.projection.slices {
                    sites.add(s.tensor.hasSuffix(".weight") ? String(s.tensor.dropLast(".weight".count)) : s.tensor, linear: linear, rows: s.rows)
                }
            }
            layers.append(layer)
        }
        self.layers = layers
        self.sites = sites
    }

    public var vocabularySize: Int { config.vocabularySize }
    public var maxSequenceLength: Int { config.maxPositions }
    public var pooledSize: Int { config.hiddenSize }
    public var adaptableModules: [AdaptableModule] { sites.modules }

    public func attach(_ parameters: LoRAParameters?) throws { try sites.attach(parameters) }

    public func attachHead(_ head: LinearHeadParameters) throws {
        guard head.inputs == pooledSize, head.weight.count == head.outputs * head.inputs, head.bias.count == head.outputs,
              head.gradientWeight.count == head.weight.count, head.gradientBias.count == head.bias.count else {
            throw TesseraError(.shapeMismatch, "a classification head of \(head.outputs) × \(head.inputs) does not fit BERT's \(pooledSize)-wide pooled output",
                               hint: "make the head [classes, \(pooledSize)]")
        }
        self.head = head
    }

    public func accumulateGradients(_ batch: [ClassificationExample], lossScale: Float, dropoutSeed: UInt64) throws -> LossSum {
        guard lossScale.isFinite else {
            throw TesseraError(.invalidParameter, "loss scale \(lossScale) is not finite", hint: "scale the loss by a finite number")
        }
        return try run(batch, lossScale: lossScale, dropout: sites.dropout(seed: dropoutSeed), backward: true)
    }

    public func loss(_ batch: [ClassificationExample]) throws -> LossSum {
        try run(batch, lossScale: 1, dropout: nil, backward: false)
    }

    private func run(_ examples: [ClassificationExample], lossScale: Float, dropout: DropoutMasks?, backward: Bool) throws -> LossSum {
        guard let head else {
            throw TesseraError(.usage, "no classification head is attached", hint: "call attachHead before training or scoring")
        }
        for (i, e) in examples.enumerated() where e.label < 0 || e.label >= head.classCount {
            throw TesseraError(.invalidParameter, "example \(i) has label \(e.label), but the head has \(head.classCount) classes",
                               hint: "labels are class indices 0..<\(head.classCount)")
        }
        let batch = try TrainingBatch(examples.map { TrainingSequence(tokens: $0.tokens, targets: [Int32](repeating: TrainingSequence.ignored, count: $0.tokens.count)) },
                                      vocabularySize: vocabularySize, maxSequenceLength: maxSequenceLength)
        let n = batch.rows, h = config.hiddenSize, inner = config.intermediateSize, eps = config.layerNormEpsilon
        guard n > 0 else { return LossSum() }
        space.begin(rows: n)
        let lowest = layers.firstIndex { $0.linears.contains { !$0.bindings.isEmpty } }
        let keep = backward && lowest != nil
        let gelu: VectorKernels.GELU = config.activation == .geluErf ? .erf : .tanh
        let shape = CausalAttention.Shape(heads: config.headCount, kvHeads: config.headCount, headDim: config.headDimension,
                                          scale: 1 / Float(config.headDimension).squareRoot(), window: nil, ld: 3 * h, qOffset: 0, kOffset: h,
                                          vOffset: 2 * h, ldo: h, bidirectional: true)
        let scratch = space.take(CausalAttention.scratchCount(sequences: batch.sequences, heads: config.headCount))
        let x = space.take(n * h), normed = space.take(n * h), activated = space.take(n * inner)
        tables.word.withUnsafeBufferPointer { word in
          tables.position.withUnsafeBufferPointer { position in
            tables.tokenType.withUnsafeBufferPointer { type in
                guard let word = word.baseAddress, let position = position.baseAddress, let type = type.baseAddress else { return }
                for row in 0..<n {
                    let out = x.p + row * h, w = word + batch.tokens[row] * h, p = position + batch.positions[row] * h
                    for j in 0..<h { out[j] = w[j] + p[j] + type[j] }
                }
            }
          }
        }
        tables.normWeight.withUnsafeBufferPointer { w in
            tables.normBias.withUnsafeBufferPointer { b in
                if let w = w.baseAddress, let b = b.baseAddress { LayerNormOp.forward(x.p, weight: w, bias: b, x.p, rows: n, dim: h, eps: eps) }
            }
        }
        var tapes: [Tape] = []
        var shared: Tape?
        for (l, layer) in layers.enumerated() {
            let tape: Tape
            if keep && l >= (lowest ?? 0) {
                tape = Tape(rows: n, hidden: h, inner: inner, space: space)
                tapes.append(tape)
            } else {
                if shared == nil { shared = Tape(rows: n, hidden: h, inner: inner, space: space) }
                tape = shared!
            }
            tape.input.p.update(from: x.p, count: n * h)
            tape.qkvTape = layer.qkv.forward(x.p, rows: n, into: tape.qkv.p, dropout: dropout)
            CausalAttention.forward(tape.qkv.p, out: tape.context.p, sequences: batch.sequences, shape: shape, scratch: scratch.p)
            tape.outputTape = layer.output.forward(tape.context.p, rows: n, into: x.p, accumulate: true, dropout: dropout)
            tape.attentionSum.p.update(from: x.p, count: n * h)
            LayerNormOp.forward(x.p, weight: layer.norm1Weight, bias: layer.norm1Bias, x.p, rows: n, dim: h, eps: eps)
            tape.upTape = layer.up.forward(x.p, rows: n, into: tape.up.p, dropout: dropout)
            GELUOp.forward(tape.up.p, activated.p, count: n * inner, gelu)
            tape.downTape = layer.down.forward(activated.p, rows: n, into: x.p, accumulate: true, dropout: dropout)
            tape.outputSum.p.update(from: x.p, count: n * h)
            LayerNormOp.forward(x.p, weight: layer.norm2Weight, bias: layer.norm2Bias, x.p, rows: n, dim: h, eps: eps)
        }
        // Mean over each sequence, normalised, then the head and the cross-entropy.
        let b = batch.sequences.count, classes = head.outputs
        var pooled = [Float](repeating: 0, count: b * h), norms = [Float](repeating: 0, count: b)
        var dLogits = [Float](repeating: 0, count: b * classes)
        var sum = 0.0
        for (s, rows) in batch.sequences.enumerated() {
            for row in rows { for j in 0..<h { pooled[s * h + j] += x.p[row * h + j] } }
            var norm: Float = 0
            for j in 0..<h {
                pooled[s * h + j] /= Float(rows.count)
                norm += pooled[s * h + j] * pooled[s * h + j]
            }
            norms[s] = max(norm.squareRoot(), 1e-12)
            for j in 0..<h { pooled[s * h + j] /= norms[s] }
            var logits = [Double](repeating: 0, count: classes)
            for c in 0..<classes {
                var z = Double(head.bias[c])
                for j in 0..<h { z += Double(head.weight[c * h + j]) * Double(pooled[s * h + j]) }
                logits[c] = z
            }
            let label = examples[s].label
            if classes == 1 {
                // Logistic: −log σ(z) for class 1, −log(1 − σ(z)) for class 0.
                let z = logits[0], y = Double(label)
                sum += max(z, 0) - z * y + log1p(exp(-abs(z)))
                dLogits[s] = lossScale * Float(1 / (1 + exp(-z)) - y)
            } else {
                let m = logits.max() ?? 0
                let lse = m + log(logits.reduce(0) { $0 + exp($1 - m) })
                sum += lse - logits[label]
                for c in 0..<classes { dLogits[s * classes + c] = lossScale * Float(exp(logits[c] - lse) - (c == label ? 1 : 0)) }
            }
        }
        guard backward else { return LossSum(sum: sum, count: b) }

        // Head gradients, then back through the pooling into every row.
        let dx = space.take(n * h, zeroed: true)
        for (s, rows) in batch.sequences.enumerated() {
            var dq = [Float](repeating: 0, count: h)
            for c in 0..<classes {
                let g = dLogits[s * classes + c]
                head.gradientBias[c] += g
                for j in 0..<h {
                    head.gradientWeight[c * h + j] += g * pooled[s * h + j]
                    dq[j] += g * head.weight[c * h + j]
                }
            }
            var dot: Float = 0
            for j in 0..<h { dot += dq[j] * pooled[s * h + j] }
            let k = 1 / (norms[s] * Float(rows.count))
            // q = p/‖p‖: dp = (dq − q (q·dq)) / ‖p‖ (the clamp at 1e-12 is a constant there: dq / 1e-12).
            let project: Float = norms[s] > 1e-12 ? 1 : 0
            for row in rows { for j in 0..<h { dx.p[row * h + j] = k * (dq[j] - project * pooled[s * h + j] * dot) } }
        }
        guard let lowest else { return LossSum(sum: sum, count: b) }
        let dActivated = space.take(n * inner), dUp = space.take(n * inner)
        let dSum = space.take(n * h), dContext = space.take(n * h), dQKV = space.take(n * 3 * h)
        for l in stride(from: layers.count - 1, through: lowest, by: -1) {
            let layer = layers[l], tape = tapes[l - lowest]
            // out = LN2(y + down(gelu(up(y)))), y = LN1(a).
            LayerNormOp.backward(tape.outputSum.p, weight: layer.norm2Weight, dy: dx.p, dx: dSum.p, rows: n, dim: h, eps: eps, accumulate: false)
            GELUOp.forward(tape.up.p, activated.p, count: n * inner, gelu)
            layer.down.backward(dSum.p, input: activated.p, rows: n, tape: tape.downTape, dropout: dropout, dx: dActivated.p, accumulate: false)
            GELUOp.backward(tape.up.p, dy: dActivated.p, dx: dUp.p, count: n * inner, gelu)
            LayerNormOp.forward(tape.attentionSum.p, weight: layer.norm1Weight, bias: layer.norm1Bias, normed.p, rows: n, dim: h, eps: eps)
            layer.up.backward(dUp.p, input: normed.p, rows: n, tape: tape.upTape, dropout: dropout, dx: dSum.p, accumulate: true)
            // a = input + output(attention(qkv(input))).
            LayerNormOp.backward(tape.attentionSum.p, weight: layer.norm1Weight, dy: dSum.p, dx: dx.p, rows: n, dim: h, eps: eps, accumulate: false)
            layer.output.backward(dx.p, input: tape.context.p, rows: n, tape: tape.outputTape, dropout: dropout, dx: dContext.p, accumulate: false)
            CausalAttention.backward(tape.qkv.p, dOut: dContext.p, dqkv: dQKV.p, sequences: batch.sequences, shape: shape, scratch: scratch.p)
            layer.qkv.backward(dQKV.p, input: tape.input.p, rows: n, tape: tape.qkvTape, dropout: dropout, dx: l > lowest ? dx.p : nil, accumulate: true)
        }
        return LossSum(sum: sum, count: b)
    }
}
