import Foundation
import TesseraEngine
import TesseraIO
import TesseraMath

/// Backward passes through the pre-LayerNorm decoder GPT-2 and GPT-Neo share (see `GPT2Training`,
/// `GPTNeoTraining`): learned positions, LN → fused Q/K/V → attention → output projection, LN → FC → GELU (tanh) →
/// projection, final LN, head tied to the token embedding. Same memory plan as `LlamaTraining`: per layer the input,
/// Q/K/V, the attention output, the residual after attention and the FC output are kept; norms, GELU and attention
/// probabilities are recomputed.
///
/// With `weightGradient` (`WeightGradientModel`), the same pass also gives the frozen base's own gradient, as
/// `LlamaTraining` does: every projection's dW = Σ_t dy_t ⊗ x_t and db = Σ_t dy_t, the LayerNorms' weights and biases,
/// the token embedding's rows read plus the tied head's product, the position embedding's rows read.
public class LayerNormDecoderTraining: TrainableLanguageModel, WeightGradientModel {
    struct Layer {
        let qkv: LoRALinear, output: LoRALinear, up: LoRALinear, down: LoRALinear
        let norm1Weight: UnsafePointer<Float>, norm1Bias: UnsafePointer<Float>
        let norm2Weight: UnsafePointer<Float>, norm2Bias: UnsafePointer<Float>
        let window: Int?
        var linears: [LoRALinear] { [qkv, output, up, down] }
    }

    final class Tape {
        let input: TrainingBuffer, qkv: TrainingBuffer, attention: TrainingBuffer, middle: TrainingBuffer, up: TrainingBuffer
        var qkvTape = LinearTape(), outputTape = LinearTape(), upTape = LinearTape(), downTape = LinearTape()
        /// The attention probabilities kept for the backward (layers that run it only).
        var probabilities: TrainingBuffer?

        init(rows n: Int, hidden d: Int, inner: Int, space: Workspace) {
            input = space.take(n * d)
            qkv = space.take(n * 3 * d)
            attention = space.take(n * d)
            middle = space.take(n * d)
            up = space.take(n * inner)
        }
    }

    /// The engine's model (kept alive: the weights read here are its buffers).
    public let engineModel: AnyObject
    public let vocabularySize: Int
    public let maxSequenceLength: Int
    private let hidden: Int, heads: Int, inner: Int
    private let globals: LayerNormDecoderGlobals
    private let head: Projection
    private let layers: [Layer]
    private let sites: LoRASites
    private let space = Workspace()
    /// Where each block of the base's gradient lies in the flat vector.
    private let gradientOffsets: [GradientOffsets]
    private let tokenEmbeddingOffset: Int, positionEmbeddingOffset: Int, finalNormOffset: Int, finalNormBiasOffset: Int
    public let weightTensors: [WeightTensorSlot]
    public let weightCount: Int

    /// One layer's blocks in the flat gradient: each norm's weight and bias, each projection's weight [outputs, inputs]
    /// and, when it has one, its bias [outputs].
    struct GradientOffsets {
        let norm1: Int, norm1Bias: Int, qkv: Int, qkvBias: Int?, output: Int, outputBias: Int?
        let norm2: Int, norm2Bias: Int, up: Int, upBias: Int?, down: Int, downBias: Int?
    }

    /// `transposedWeights`: the checkpoint stores the projections' weights [in, out] (GPT-2's Conv1D), the gradient's
    /// tensors are written that way too.
    init(engineModel: AnyObject, layers engineLayers: [LayerNormDecoderLayer], globals: LayerNormDecoderGlobals, head: Projection,
         vocabularySize: Int, maxSequenceLength: Int, hidden: Int, heads: Int, inner: Int, transposedWeights: Bool) {
        self.engineModel = engineModel
        self.vocabularySize = vocabularySize
        self.maxSequenceLength = maxSequenceLength
        self.hidden = hidden
        self.heads = heads
        self.inner = inner
        self.globals = globals
        self.head = head
        let sites = LoRASites(prefixes: ["transformer."])
        var layers: [Layer] = []
        for l in engineLayers {
            let layer = Layer(qkv: LoRALinear(l.attention.qkv), output: LoRALinear(l.attention.output), up: LoRALinear(l.mlp.up),
                              down: LoRALinear(l.mlp.down), norm1Weight: l.norm1Weights, norm1Bias: l.norm1Biases,
                              norm2Weight: l.norm2Weights, norm2Bias: l.norm2Biases, window: l.window)
            // One module per checkpoint tensor (GPT-2's c_attn is one tensor over Q, K and V; GPT-Neo's are three).
            for linear in layer.linears {
                var order: [String] = [], ranges: [String: Range<Int>] = [:]
                for s in linear.projection.slices {
                    if let r = ranges[s.tensor] {
                        ranges[s.tensor] = min(r.lowerBound, s.rows.lowerBound)..<max(r.upperBound, s.rows.upperBound)
                    } else {
                        ranges[s.tensor] = s.rows
                        order.append(s.tensor)
                    }
                }
                for tensor in order {
                    var name = tensor.hasSuffix(".weight") ? String(tensor.dropLast(".weight".count)) : tensor
                    if !name.hasPrefix("transformer.") { name = "transformer." + name }
                    sites.add(name, linear: linear, rows: ranges[tensor])
                }
            }
            layers.append(layer)
        }
        self.layers = layers
        self.sites = sites

        // The flat gradient: the embeddings, then per layer its blocks (a fused projection's rows in the engine's
        // order, one slot per checkpoint tensor), the final norm. Names are the checkpoint's: the projections' from
        // their slices, the rest from the prefix the tied head's tensor (`[transformer.]wte.weight`) carries.
        let d = hidden
        let wte = head.slices.first?.tensor ?? "wte.weight"
        let prefix = wte.hasSuffix("wte.weight") ? String(wte.dropLast("wte.weight".count)) : ""
        var layout = WeightLayout()
        tokenEmbeddingOffset = layout.block(rows: vocabularySize, columns: d)
        layout.name(wte, shape: [vocabularySize, d], offset: tokenEmbeddingOffset, rows: 0..<vocabularySize, columns: d)
        positionEmbeddingOffset = layout.block(rows: maxSequenceLength, columns: d)
        layout.name(prefix + "wpe.weight", shape: [maxSequenceLength, d], offset: positionEmbeddingOffset, rows: 0..<maxSequenceLength, columns: d)
        func norm(_ name: String) -> (Int, Int) {
            let weight = layout.block(rows: 1, columns: d)
            layout.name(name + ".weight", shape: [d], offset: weight, rows: 0..<1, columns: d)
            let bias = layout.block(rows: 1, columns: d)
            layout.name(name + ".bias", shape: [d], offset: bias, rows: 0..<1, columns: d)
            return (weight, bias)
        }
        // One weight slot per checkpoint tensor of the projection, and its bias (a [outputs, 1] block, so that a
        // fused bias splits by rows the same way).
        func projection(_ linear: LoRALinear) -> (Int, Int?) {
            let p = linear.projection
            let tensors = p.tensorRows
            let weight = layout.block(rows: p.outputs, columns: p.inputs)
            for (tensor, rows) in tensors {
                layout.name(tensor, shape: transposedWeights ? [p.inputs, rows.count] : [rows.count, p.inputs], offset: weight, rows: rows,
                            columns: p.inputs, transposed: transposedWeights)
            }
            guard p.hasBias else { return (weight, nil) }
            let bias = layout.block(rows: p.outputs, columns: 1)
            for (tensor, rows) in tensors {
                let name = tensor.hasSuffix(".weight") ? String(tensor.dropLast(".weight".count)) + ".bias" : tensor + ".bias"
                layout.name(name, shape: [rows.count], offset: bias, rows: rows, columns: 1)
            }
            return (weight, bias)
        }
        var offsets: [GradientOffsets] = []
        for (i, layer) in layers.enumerated() {
            let n1 = norm("\(prefix)h.\(i).ln_1")
            let qkv = projection(layer.qkv), output = projection(layer.output)
            let n2 = norm("\(prefix)h.\(i).ln_2")
            let up = projection(layer.up), down = projection(layer.down)
            offsets.append(GradientOffsets(norm1: n1.0, norm1Bias: n1.1, qkv: qkv.0, qkvBias: qkv.1, output: output.0, outputBias: output.1,
                                           norm2: n2.0, norm2Bias: n2.1, up: up.0, upBias: up.1, down: down.0, downBias: down.1))
        }
        (finalNormOffset, finalNormBiasOffset) = norm(prefix + "ln_f")
        gradientOffsets = offsets
        weightTensors = layout.slots
        weightCount = layout.count
    }

    public var adaptableModules: [AdaptableModule] { sites.modules }

    public func attach(_ parameters: LoRAParameters?) throws { try sites.attach(parameters) }

    public func accumulateGradients(_ batch: [TrainingSequence], lossScale: Float, dropoutSeed: UInt64) throws -> LossSum {
        guard lossScale.isFinite else {
            throw TesseraError(.invalidParameter, "loss scale \(lossScale) is not finite", hint: "scale the loss by a finite number")
        }
        return run(try TrainingBatch(batch, vocabularySize: vocabularySize, maxSequenceLength: maxSequenceLength), lossScale: lossScale,
                   dropout: sites.dropout(seed: dropoutSeed), backward: true)
    }

    public func loss(_ batch: [TrainingSequence]) throws -> LossSum {
        run(try TrainingBatch(batch, vocabularySize: vocabularySize, maxSequenceLength: maxSequenceLength), lossScale: 1, dropout: nil, backward: false)
    }

    public func weightGradient(_ batch: [TrainingSequence], into gradient: UnsafeMutablePointer<Float>, accumulate: Bool) throws -> LossSum {
        let checked = try TrainingBatch(batch, vocabularySize: vocabularySize, maxSequenceLength: maxSequenceLength)
        if !accumulate { gradient.update(repeating: 0, count: weightCount) }
        return run(checked, lossScale: 1, dropout: nil, backward: true, weights: gradient)
    }

    /// `weights`: the flat base gradient to add to (nil: LoRA gradients only, the training path).
    private func run(_ batch: TrainingBatch, lossScale: Float, dropout: DropoutMasks?, backward: Bool,
                     weights: UnsafeMutablePointer<Float>? = nil) -> LossSum {
        let n = batch.rows, d = hidden, ffn = inner, eps = globals.layerNormEps
        let counted = batch.countedRows.count
        guard n > 0, counted > 0 else { return LossSum(sum: 0, count: 0) }
        space.begin(rows: n)
        // The lowest layer with a LoRA module: backward stops there. With the base's gradient, every layer is.
        let lowest = backward && weights != nil ? 0 : layers.firstIndex { $0.linears.contains { !$0.bindings.isEmpty } }
        let keep = backward && lowest != nil
        let grads = keep ? weights : nil
        func gradient(_ offset: Int?) -> UnsafeMutablePointer<Float>? { offset.flatMap { o in grads.map { $0 + o } } }
        func shape(_ layer: Layer) -> CausalAttention.Shape {
            CausalAttention.Shape(heads: heads, kvHeads: heads, headDim: d / heads, scale: globals.attentionScale, window: layer.window,
                                  ld: 3 * d, qOffset: 0, kOffset: d, vOffset: 2 * d, ldo: d)
        }
        let scratch = space.take(CausalAttention.scratchCount(sequences: batch.sequences, heads: heads))
        let x = space.take(n * d), normed = space.take(n * d), activated = space.take(n * ffn)
        for row in 0..<n {
            let out = x.p + row * d, te = globals.tokenEmbedding + batch.tokens[row] * d, pe = globals.positionEmbedding + batch.positions[row] * d
            for j in 0..<d { out[j] = te[j] + pe[j] }
        }
        var tapes: [Tape] = []
        var shared: Tape?
        for (l, layer) in layers.enumerated() {
            let tape: Tape
            if keep && l >= (lowest ?? 0) {
                tape = Tape(rows: n, hidden: d, inner: ffn, space: space)
                tape.probabilities = space.take(CausalAttention.probabilityCount(sequences: batch.sequences, shape(layer)))
                tapes.append(tape)
            } else {
                if shared == nil { shared = Tape(rows: n, hidden: d, inner: ffn, space: space) }
                tape = shared!
            }
            tape.input.p.update(from: x.p, count: n * d)
            LayerNormOp.forward(x.p, weight: layer.norm1Weight, bias: layer.norm1Bias, normed.p, rows: n, dim: d, eps: eps)
            tape.qkvTape = layer.qkv.forward(normed.p, rows: n, into: tape.qkv.p, dropout: dropout)
            CausalAttention.forward(tape.qkv.p, out: tape.attention.p, sequences: batch.sequences, shape: shape(layer), scratch: scratch.p,
                                    probabilities: tape.probabilities?.p)
            tape.outputTape = layer.output.forward(tape.attention.p, rows: n, into: x.p, accumulate: true, dropout: dropout)
            tape.middle.p.update(from: x.p, count: n * d)
            LayerNormOp.forward(x.p, weight: layer.norm2Weight, bias: layer.norm2Bias, normed.p, rows: n, dim: d, eps: eps)
            tape.upTape = layer.up.forward(normed.p, rows: n, into: tape.up.p, dropout: dropout)
            GELUOp.forward(tape.up.p, activated.p, count: n * ffn, .tanh)
            tape.downTape = layer.down.forward(activated.p, rows: n, into: x.p, accumulate: true, dropout: dropout)
        }
        let final = space.take(counted * d), finalNormed = space.take(counted * d)
        for (i, row) in batch.countedRows.enumerated() { (final.p + i * d).update(from: x.p + row * d, count: d) }
        LayerNormOp.forward(final.p, weight: globals.finalNormWeight, bias: globals.finalNormBias, finalNormed.p, rows: counted, dim: d, eps: eps)
        let dFinalNormed = keep ? space.take(counted * d) : nil
        let sum = SoftmaxCrossEntropy.lossAndGradient(finalNormed.p, rows: counted, dim: d, head: head.weightPointer, vocabulary: vocabularySize,
                                                      targets: batch.countedTargets, lossScale: lossScale, dx: dFinalNormed?.p,
                                                      dHead: gradient(tokenEmbeddingOffset))
        guard keep, let dFinalNormed, let lowest else { return LossSum(sum: sum, count: counted) }
        if let w = gradient(finalNormOffset), let b = gradient(finalNormBiasOffset) {
            LayerNormOp.weightGradient(final.p, dy: dFinalNormed.p, weight: w, bias: b, rows: counted, dim: d, eps: eps)
        }

        LayerNormOp.backward(final.p, weight: globals.finalNormWeight, dy: dFinalNormed.p, dx: finalNormed.p, rows: counted, dim: d, eps: eps,
                             accumulate: false)
        let dx = space.take(n * d, zeroed: true)
        for (i, row) in batch.countedRows.enumerated() { (dx.p + row * d).update(from: finalNormed.p + i * d, count: d) }
        let dNormed = space.take(n * d), dActivated = space.take(n * ffn), dUp = space.take(n * ffn)
        let dAttention = space.take(n * d), dQKV = space.take(n * 3 * d)
        for l in stride(from: layers.count - 1, through: lowest, by: -1) {
            let layer = layers[l], tape = tapes[l - lowest], at = gradientOffsets[l]
            GELUOp.forward(tape.up.p, activated.p, count: n * ffn, .tanh)
            layer.down.backward(dx.p, input: activated.p, rows: n, tape: tape.downTape, dropout: dropout, dx: dActivated.p, accumulate: false,
                                weightGradient: gradient(at.down), biasGradient: gradient(at.downBias))
            GELUOp.backward(tape.up.p, dy: dActivated.p, dx: dUp.p, count: n * ffn, .tanh)
            LayerNormOp.forward(tape.middle.p, weight: layer.norm2Weight, bias: layer.norm2Bias, normed.p, rows: n, dim: d, eps: eps)
            layer.up.backward(dUp.p, input: normed.p, rows: n, tape: tape.upTape, dropout: dropout, dx: dNormed.p, accumulate: false,
                              weightGradient: gradient(at.up), biasGradient: gradient(at.upBias))
            if let w = gradient(at.norm2), let b = gradient(at.norm2Bias) {
                LayerNormOp.weightGradient(tape.middle.p, dy: dNormed.p, weight: w, bias: b, rows: n, dim: d, eps: eps)
            }
            LayerNormOp.backward(tape.middle.p, weight: layer.norm2Weight, dy: dNormed.p, dx: dx.p, rows: n, dim: d, eps: eps, accumulate: true)
            layer.output.backward(dx.p, input: tape.attention.p, rows: n, tape: tape.outputTape, dropout: dropout, dx: dAttention.p, accumulate: false,
                                  weightGradient: gradient(at.output), biasGradient: gradient(at.outputBias))
            CausalAttention.backward(tape.qkv.p, dOut: dAttention.p, dqkv: dQKV.p, sequences: batch.sequences, shape: shape(layer), scratch: scratch.p,
                                     probabilities: tape.probabilities?.p)
            LayerNormOp.forward(tape.input.p, weight: layer.norm1Weight, bias: layer.norm1Bias, normed.p, rows: n, dim: d, eps: eps)
            // The base's gradient needs dx below the lowest layer too (the embeddings' rows).
            let below = l > lowest || grads != nil
            layer.qkv.backward(dQKV.p, input: normed.p, rows: n, tape: tape.qkvTape, dropout: dropout, dx: below ? dNormed.p : nil, accumulate: false,
                               weightGradient: gradient(at.qkv), biasGradient: gradient(at.qkvBias))
            if below {
                if let w = gradient(at.norm1), let b = gradient(at.norm1Bias) {
                    LayerNormOp.weightGradient(tape.input.p, dy: dNormed.p, weight: w, bias: b, rows: n, dim: d, eps: eps)
                }
                LayerNormOp.backward(tape.input.p, weight: layer.norm1Weight, dy: dNormed.p, dx: dx.p, rows: n, dim: d, eps: eps, accumulate: true)
            }
        }
        if let te = gradient(tokenEmbeddingOffset), let pe = gradient(positionEmbeddingOffset) {
            for row in 0..<n {
                let r = dx.p + row * d, t = te + batch.tokens[row] * d, p = pe + batch.positions[row] * d
                for j in 0..<d {
                    t[j] += r[j]
                    p[j] += r[j]
                }
            }
        }
        return LossSum(sum: sum, count: counted)
    }
}
