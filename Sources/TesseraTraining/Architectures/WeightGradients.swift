import Foundation
import TesseraEngine
import TesseraIO

/// One tensor of the base checkpoint, by its Hugging Face name and shape, and where its gradient lies in the flat
/// gradient vector a `WeightGradientModel` writes: rows `rows` of a row-major block of `columns` columns starting at
/// `offset` (a fused projection holds several tensors; a GGUF Llama's q/k rows are in llama.cpp's RoPE order, put
/// back in Hugging Face order by `values(of:from:)`; a GPT-2 Conv1D weight is stored [in, out], the transpose of
/// its block, `transposed`).
public struct WeightTensorSlot: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    let offset: Int
    let rows: Range<Int>
    let columns: Int
    let ropeHeads: Int?
    /// The checkpoint holds the block's rows as columns: shape [columns, rows.count].
    var transposed = false

    public var count: Int { rows.count * columns }
}

/// A causal language model that can give the gradient of its loss with respect to every weight of the frozen base
/// (the full-model gradient: linear projections, norms, embedding, head). Off the training path: `train lora` never
/// asks for it, so its passes stay as they were.
public protocol WeightGradientModel: TrainableLanguageModel {
    /// Every tensor of the base, in checkpoint (Hugging Face) names; a tied head is folded into the embedding.
    var weightTensors: [WeightTensorSlot] { get }
    /// Floats in the flat gradient vector.
    var weightCount: Int { get }
    /// Forward and backward over `batch` with the base alone (no LoRA module may be attached): returns the sum of
    /// the counted targets' cross-entropy and writes `∂(that sum)/∂θ` into `gradient` (`weightCount` floats),
    /// overwriting it, or adding to it when `accumulate`.
    func weightGradient(_ batch: [TrainingSequence], into gradient: UnsafeMutablePointer<Float>, accumulate: Bool) throws -> LossSum
}

extension WeightGradientModel {
    /// The values of one tensor taken out of a flat vector laid out as the gradient (rows in Hugging Face order,
    /// a transposed slot in the checkpoint's [in, out] order).
    public func values(of slot: WeightTensorSlot, from flat: UnsafePointer<Float>) -> [Float] {
        var out = [Float](repeating: 0, count: slot.count)
        out.withUnsafeMutableBufferPointer { o in
            guard let o = o.baseAddress else { return }
            if slot.transposed {
                let block = flat + slot.offset + slot.rows.lowerBound * slot.columns, rows = slot.rows.count
                for r in 0..<rows {
                    for c in 0..<slot.columns { o[c * rows + r] = block[r * slot.columns + c] }
                }
                return
            }
            LoRALinear.permuteRows(from: flat + slot.offset + slot.rows.lowerBound * slot.columns, to: o, rows: slot.rows.count,
                                   cols: slot.columns, heads: slot.ropeHeads, toProjection: false)
        }
        return out
    }
}

/// Lays tensors out one after another in a flat vector.
struct WeightLayout {
    private(set) var slots: [WeightTensorSlot] = []
    private(set) var count = 0

    /// Reserves a block of `rows × columns` floats; returns its offset.
    mutating func block(rows: Int, columns: Int) -> Int {
        defer { count += rows * columns }
        return count
    }

    mutating func name(_ name: String, shape: [Int], offset: Int, rows: Range<Int>, columns: Int, ropeHeads: Int? = nil, transposed: Bool = false) {
        slots.append(WeightTensorSlot(name: name, shape: shape, offset: offset, rows: rows, columns: columns, ropeHeads: ropeHeads,
                                      transposed: transposed))
    }
}
