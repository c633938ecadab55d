import Foundation
import TesseraEngine
import TesseraIO
import TesseraMath

/// Backward passes through the engine's Llama (SmolLM2 and others, from a GGUF or Hugging Face safetensors): the
/// base stays frozen and only attached LoRA modules get gradients. One pass lays the batch out as one [tokens, ·]
/// matrix, so every projection is one sgemm over all sequences; attention runs per sequence.
///
/// Memory: per layer the forward keeps its input x, Q/K/V after RoPE, the attention output, the residual after
/// attention and the MLP's gate/up product; the norms' outputs and the SwiGLU output are recomputed in backward
/// (elementwise, cheap), the attention probabilities too (one product per block). The output head runs on the
/// counted positions only.
///
/// With `weightGradient`, the same pass also gives the frozen base's own gradient (`WeightGradientModel`): every
/// projection's dW = Σ_t dy_t ⊗ x_t (one sgemm each, into the caller's flat buffer), the norms' weights, the
/// embedding rows read (a tied head adds its own product there too) and the head; the backward then runs down to the
/// embedding whatever is attached.
public final class LlamaTraining: TrainableLanguageModel, WeightGradientModel {
    public let model: LlamaModel
    private let config: LlamaConfig
    private let layers: [Layer]
    private let sites: LoRASites
    private let space = Workspace()
    private let ropeCos: [Float], ropeSin: [Float]
    /// Where each block of the base's gradient lies in the flat vector.
    private let gradientOffsets: [GradientOffsets]
    private let embeddingOffset: Int, finalNormOffset: Int, headOffset: Int?
    public let weightTensors: [WeightTensorSlot]
    public let weightCount: Int

    struct GradientOffsets {
        let qkv: Int, output: Int, gateUp: Int, down: Int, attentionNorm: Int, mlpNorm: Int
    }

    struct Layer {
        let qkv: LoRALinear, output: LoRALinear, gateUp: LoRALinear, down: LoRALinear
        let attentionNorm: UnsafePointer<Float>, mlpNorm: UnsafePointer<Float>
        var linears: [LoRALinear] { [qkv, output, gateUp, down] }
    }

    /// What one layer's forward keeps for its backward.
    final class Tape {
        let input: TrainingBuffer, qkv: TrainingBuffer, attention: TrainingBuffer, middle: TrainingBuffer, gateUp: TrainingBuffer
        var qkvTape = LinearTape(), outputTape = LinearTape(), gateUpTape = LinearTape(), downTape = LinearTape()
        /// The attention probabilities kept for the backward (layers that run it only).
        var probabilities: TrainingBuffer?

        init(rows n: Int, hidden d: Int, qkvDim: Int, queryDim: Int, ffn: Int, space: Workspace) {
            input = space.take(n * d)
            qkv = space.take(n * qkvDim)
            attention = space.take(n * queryDim)
            middle = space.take(n * d)
            gateUp = space.take(n * 2 * ffn)
        }
    }

    public init(_ model: LlamaModel) {
        self.model = model
        config = model.config
        let c = model.config
        let names = LlamaTensorNames(convention: .huggingFace)
        let sites = LoRASites()
        var layers: [Layer] = []
        for (i, l) in model.layers.enumerated() {
            let layer = Layer(qkv: LoRALinear(l.attention.qkv), output: LoRALinear(l.attention.output), gateUp: LoRALinear(l.mlp.gateUp),
                              down: LoRALinear(l.mlp.down), attentionNorm: l.attentionNormWeights, mlpNorm: l.mlpNormWeights)
            func module(_ t: LlamaTensorNames.LayerTensor) -> String { String(names.name(t, layer: i).dropLast(".weight".count)) }
            let gguf = c.ropeRotatesAdjacentPairs
            for (tensor, slice, heads) in [(LlamaTensorNames.LayerTensor.query, "query", c.heads), (.key, "key", c.kvHeads), (.value, "value", 0)] {
                sites.add(module(tensor), linear: layer.qkv, rows: l.attention.qkv.slice(slice)?.rows,
                          ropeHeads: gguf && heads > 0 ? heads : nil)
            }
            sites.add(module(.attentionOutput), linear: layer.output)
            sites.add(module(.gate), linear: layer.gateUp, rows: l.mlp.gateUp.slice("gate")?.rows)
            sites.add(module(.up), linear: layer.gateUp, rows: l.mlp.gateUp.slice("up")?.rows)
            sites.add(module(.down), linear: layer.down)
            layers.append(layer)
        }
        self.layers = layers
        self.sites = sites

        // The flat gradient: the embedding, then per layer its blocks in the engine's fused row order, the final norm,
        // an untied head. Tensors are named as the Hugging Face checkpoint (and `tessera import`) names them.
        let d = c.hiddenSize, qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, ffn = c.intermediateSize
        var layout = WeightLayout()
        embeddingOffset = layout.block(rows: c.vocabularySize, columns: d)
        layout.name(names.embedding, shape: [c.vocabularySize, d], offset: embeddingOffset, rows: 0..<c.vocabularySize, columns: d)
        var offsets: [GradientOffsets] = []
        let gguf = c.ropeRotatesAdjacentPairs
        for (i, layer) in layers.enumerated() {
            func name(_ t: LlamaTensorNames.LayerTensor) -> String { names.name(t, layer: i) }
            let attentionNorm = layout.block(rows: 1, columns: d)
            layout.name(name(.attentionNorm), shape: [d], offset: attentionNorm, rows: 0..<1, columns: d)
            let qkv = layout.block(rows: layer.qkv.outputs, columns: d)
            layout.name(name(.query), shape: [qd, d], offset: qkv, rows: 0..<qd, columns: d, ropeHeads: gguf ? c.heads : nil)
            layout.name(name(.key), shape: [kvd, d], offset: qkv, rows: qd..<(qd + kvd), columns: d, ropeHeads: gguf ? c.kvHeads : nil)
            layout.name(name(.value), shape: [kvd, d], offset: qkv, rows: (qd + kvd)..<(qd + 2 * kvd), columns: d)
            let output = layout.block(rows: d, columns: qd)
            layout.name(name(.attentionOutput), shape: [d, qd], offset: output, rows: 0..<d, columns: qd)
            let mlpNorm = layout.block(rows: 1, columns: d)
            layout.name(name(.mlpNorm), shape: [d], offset: mlpNorm, rows: 0..<1, columns: d)
            let gateUp = layout.block(rows: 2 * ffn, columns: d)
            layout.name(name(.gate), shape: [ffn, d], offset: gateUp, rows: 0..<ffn, columns: d)
            layout.name(name(.up), shape: [ffn, d], offset: gateUp, rows: ffn..<(2 * ffn), columns: d)
            let down = layout.block(rows: d, columns: ffn)
            layout.name(name(.down), shape: [d, ffn], offset: down, rows: 0..<d, columns: ffn)
            offsets.append(GradientOffsets(qkv: qkv, output: output, gateUp: gateUp, down: down, attentionNorm: attentionNorm, mlpNorm: mlpNorm))
        }
        finalNormOffset = layout.block(rows: 1, columns: d)
        layout.name(names.finalNorm, shape: [d], offset: finalNormOffset, rows: 0..<1, columns: d)
        if c.tiedEmbeddings {
            headOffset = nil
        } else {
            let head = layout.block(rows: c.vocabularySize, columns: d)
            layout.name(names.output, shape: [c.vocabularySize, d], offset: head, rows: 0..<c.vocabularySize, columns: d)
            headOffset = head
        }
        gradientOffsets = offsets
        weightTensors = layout.slots
        weightCount = layout.count
        (ropeCos, ropeSin) = VectorKernels.ropeTables(positions: model.maxSequenceLength, headDim: c.headDim, base: c.ropeTheta)
    }

    public var vocabularySize: Int { config.vocabularySize }
    public var maxSequenceLength: Int { model.maxSequenceLength }
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
        let c = config, n = batch.rows, d = c.hiddenSize
        let qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim, qkvDim = qd + 2 * kvd, ffn = c.intermediateSize
        let counted = batch.countedRows.count
        guard n > 0, counted > 0 else { return LossSum(sum: 0, count: 0) }
        space.begin(rows: n)
        // The lowest layer with a LoRA module: backward stops there (nothing below it is trained).
        // With the base's gradient, every layer is.
        let lowest = backward && weights != nil ? 0 : layers.firstIndex { $0.linears.contains { !$0.bindings.isEmpty } }
        let keep = backward && lowest != nil
        let shape = CausalAttention.Shape(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, scale: 1 / Float(c.headDim).squareRoot(),
                                          window: nil, ld: qkvDim, qOffset: 0, kOffset: qd, vOffset: qd + kvd, ldo: qd)
        let layout: VectorKernels.RoPELayout = c.ropeRotatesAdjacentPairs ? .adjacentPairs : .splitHalves
        let scratch = space.take(CausalAttention.scratchCount(sequences: batch.sequences, heads: c.heads))
        let x = space.take(n * d), normed = space.take(n * d), hidden = space.take(n * ffn)
        for (row, token) in batch.tokens.enumerated() { (x.p + row * d).update(from: model.embeddingWeights + token * d, count: d) }
        let grads = keep ? weights : nil
        func gradient(_ offset: Int) -> UnsafeMutablePointer<Float>? { grads.map { $0 + offset } }

        var tapes: [Tape] = []
        var shared: Tape?
        return batch.positions.withUnsafeBufferPointer { positionBuffer in
          ropeCos.withUnsafeBufferPointer { cosBuffer in
            ropeSin.withUnsafeBufferPointer { sinBuffer in
              guard let positions = positionBuffer.baseAddress, let cos = cosBuffer.baseAddress, let sin = sinBuffer.baseAddress else {
                  return LossSum()
              }
              func rope(_ buffer: UnsafeMutablePointer<Float>, forward: Bool) {
                  for (offset, heads) in [(0, c.heads), (qd, c.kvHeads)] {
                      if forward {
                          RoPEOp.forward(buffer + offset, ld: qkvDim, rows: n, heads: heads, headDim: c.headDim, positions: positions, cos: cos, sin: sin, layout: layout)
                      } else {
                          RoPEOp.backward(buffer + offset, ld: qkvDim, rows: n, heads: heads, headDim: c.headDim, positions: positions, cos: cos, sin: sin, layout: layout)
                      }
                  }
              }
              // Forward.
              for (l, layer) in layers.enumerated() {
                  let tape: Tape
                  if keep && l >= (lowest ?? 0) {
                      tape = Tape(rows: n, hidden: d, qkvDim: qkvDim, queryDim: qd, ffn: ffn, space: space)
                      tape.probabilities = space.take(CausalAttention.probabilityCount(sequences: batch.sequences, shape))
                      tapes.append(tape)
                  } else {
                      if shared == nil { shared = Tape(rows: n, hidden: d, qkvDim: qkvDim, queryDim: qd, ffn: ffn, space: space) }
                      tape = shared!
                  }
                  tape.input.p.update(from: x.p, count: n * d)
                  RMSNormOp.forward(x.p, weight: layer.attentionNorm, normed.p, rows: n, dim: d, eps: c.rmsNormEps)
                  tape.qkvTape = layer.qkv.forward(normed.p, rows: n, into: tape.qkv.p, dropout: dropout)
                  rope(tape.qkv.p, forward: true)
                  CausalAttention.forward(tape.qkv.p, out: tape.attention.p, sequences: batch.sequences, shape: shape, scratch: scratch.p,
                                          probabilities: tape.probabilities?.p)
                  tape.outputTape = layer.output.forward(tape.attention.p, rows: n, into: x.p, accumulate: true, dropout: dropout)
                  tape.middle.p.update(from: x.p, count: n * d)
                  RMSNormOp.forward(x.p, weight: layer.mlpNorm, normed.p, rows: n, dim: d, eps: c.rmsNormEps)
                  tape.gateUpTape = layer.gateUp.forward(normed.p, rows: n, into: tape.gateUp.p, dropout: dropout)
                  SwiGLUOp.forward(tape.gateUp.p, hidden.p, rows: n, ffn: ffn)
                  tape.downTape = layer.down.forward(hidden.p, rows: n, into: x.p, accumulate: true, dropout: dropout)
              }
              // Final norm and the output head on the counted rows.
              let final = space.take(counted * d), finalNormed = space.take(counted * d)
              for (i, row) in batch.countedRows.enumerated() { (final.p + i * d).update(from: x.p + row * d, count: d) }
              RMSNormOp.forward(final.p, weight: model.finalNormWeights, finalNormed.p, rows: counted, dim: d, eps: c.rmsNormEps)
              let dFinalNormed = keep ? space.take(counted * d) : nil
              let sum = SoftmaxCrossEntropy.lossAndGradient(finalNormed.p, rows: counted, dim: d, head: model.head.weightPointer,
                                                            vocabulary: c.vocabularySize, targets: batch.countedTargets, lossScale: lossScale,
                                                            dx: dFinalNormed?.p, dHead: gradient(headOffset ?? embeddingOffset))
              guard keep, let dFinalNormed, let lowest else { return LossSum(sum: sum, count: counted) }
              if let g = gradient(finalNormOffset) {
                  RMSNormOp.weightGradient(final.p, dy: dFinalNormed.p, into: g, rows: counted, dim: d, eps: c.rmsNormEps)
              }

              // Backward: dx is the gradient with respect to the residual stream.
              RMSNormOp.backward(final.p, weight: model.finalNormWeights, dy: dFinalNormed.p, dx: finalNormed.p, rows: counted, dim: d,
                                 eps: c.rmsNormEps, accumulate: false)
              let dx = space.take(n * d, zeroed: true)
              for (i, row) in batch.countedRows.enumerated() { (dx.p + row * d).update(from: finalNormed.p + i * d, count: d) }
              let dNormed = space.take(n * d), dHidden = space.take(n * ffn), dGateUp = space.take(n * 2 * ffn)
              let dAttention = space.take(n * qd), dQKV = space.take(n * qkvDim)
              for l in stride(from: layers.count - 1, through: lowest, by: -1) {
                  let layer = layers[l], tape = tapes[l - lowest], at = gradientOffsets[l]
                  // MLP: x = middle + down(swiglu(gateUp(norm(middle)))).
                  SwiGLUOp.forward(tape.gateUp.p, hidden.p, rows: n, ffn: ffn)
                  layer.down.backward(dx.p, input: hidden.p, rows: n, tape: tape.downTape, dropout: dropout, dx: dHidden.p, accumulate: false,
                                      weightGradient: gradient(at.down))
                  SwiGLUOp.backward(tape.gateUp.p, dh: dHidden.p, dGateUp: dGateUp.p, rows: n, ffn: ffn)
                  RMSNormOp.forward(tape.middle.p, weight: layer.mlpNorm, normed.p, rows: n, dim: d, eps: c.rmsNormEps)
                  layer.gateUp.backward(dGateUp.p, input: normed.p, rows: n, tape: tape.gateUpTape, dropout: dropout, dx: dNormed.p, accumulate: false,
                                        weightGradient: gradient(at.gateUp))
                  if let g = gradient(at.mlpNorm) {
                      RMSNormOp.weightGradient(tape.middle.p, dy: dNormed.p, into: g, rows: n, dim: d, eps: c.rmsNormEps)
                  }
                  RMSNormOp.backward(tape.middle.p, weight: layer.mlpNorm, dy: dNormed.p, dx: dx.p, rows: n, dim: d, eps: c.rmsNormEps, accumulate: true)
                  // Attention: middle = input + output(attention(rope(qkv(norm(input))))).
                  layer.output.backward(dx.p, input: tape.attention.p, rows: n, tape: tape.outputTape, dropout: dropout, dx: dAttention.p, accumulate: false,
                                        weightGradient: gradient(at.output))
                  CausalAttention.backward(tape.qkv.p, dOut: dAttention.p, dqkv: dQKV.p, sequences: batch.sequences, shape: shape, scratch: scratch.p,
                                           probabilities: tape.probabilities?.p)
                  rope(dQKV.p, forward: false)
                  RMSNormOp.forward(tape.input.p, weight: layer.attentionNorm, normed.p, rows: n, dim: d, eps: c.rmsNormEps)
                  // The base's gradient needs dx below the lowest layer too (the embedding's rows).
                  let below = l > lowest || grads != nil
                  layer.qkv.backward(dQKV.p, input: normed.p, rows: n, tape: tape.qkvTape, dropout: dropout, dx: below ? dNormed.p : nil, accumulate: false,
                                     weightGradient: gradient(at.qkv))
                  if below {
                      if let g = gradient(at.attentionNorm) {
                          RMSNormOp.weightGradient(tape.input.p, dy: dNormed.p, into: g, rows: n, dim: d, eps: c.rmsNormEps)
                      }
                      RMSNormOp.backward(tape.input.p, weight: layer.attentionNorm, dy: dNormed.p, dx: dx.p, rows: n, dim: d, eps: c.rmsNormEps, accumulate: true)
                  }
              }
              if let g = gradient(embeddingOffset) {
                  for (row, token) in batch.tokens.enumerated() {
                      let e = g + token * d, r = dx.p + row * d
                      for j in 0..<d { e[j] += r[j] }
                  }
              }
              return LossSum(sum: sum, count: counted)
            }
          }
        }
    }
}
