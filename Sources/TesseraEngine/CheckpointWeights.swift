import TesseraIO
import Foundation
import TesseraCore
import TesseraMath

/// Reads a checkpoint's tensors into a model being built: float32 copies (GGUF blocks dequantised as ggml defines
/// them), and for a GGUF whose matrices are Q4_1 or Q8_0, those blocks as well, for single-token products. What kind
/// of source it is gets decided once, here; forward passes only see `Projection`s.
///
/// Loaders check every tensor's presence and shape against the architecture's table before building (see
/// `ModelLoader.check`); the counts are checked again here, so a source that changed in between gives an error, not
/// a wrong-sized buffer.
struct CheckpointWeights {
    let source: TensorSource
    /// The source as a GGUF file, whose blocks projections may keep (nil for safetensors and stored checkpoints).
    private let gguf: GGUFFile?

    init(_ source: TensorSource) {
        self.source = source
        gguf = source as? GGUFFile
    }

    /// A tensor as float32. GGUF tensors are dequantised straight into the result; other sources decode their bytes.
    /// (`TensorSource.floats` is a protocol extension, so a call through the protocol would not reach `GGUFFile`'s.)
    func floats(_ name: String) throws -> [Float] {
        if let gguf { return try gguf.dequantized(name) }
        return try source.floats(name)
    }

    /// A tensor of exactly `count` values as an immutable buffer.
    func buffer(_ name: String, count: Int) throws -> WeightBuffer {
        let values = try floats(name)
        guard values.count == count else { throw mismatch(name, values.count, count) }
        return WeightBuffer(values)
    }

    /// One projection from the [rows, inputs] tensors of `parts` stacked in order (a fused projection when there are
    /// several), each part one named output slice, with optional per-part biases. `transposed`: the tensors are
    /// stored [inputs, rows] (GPT-2's Conv1D) and are transposed at load.
    /// `slices`, when given, names the output rows of a single fused tensor instead (GPT-2's c_attn: query, key,
    /// value), in order; their rows must add up to the tensor's.
    func projection(_ name: String, inputs: Int, parts: [(slice: String, tensor: String, rows: Int)], biases: [String]? = nil,
                    transposed: Bool = false, slices named: [(name: String, rows: Int)]? = nil) throws -> Projection {
        var slices: [Projection.Slice] = []
        var total = 0
        for part in parts {
            let (end, overflow) = total.addingReportingOverflow(part.rows)
            guard !overflow else { throw mismatch(part.tensor, part.rows, total) }
            slices.append(Projection.Slice(name: part.slice, rows: total..<end, tensor: part.tensor))
            total = end
        }
        let (count, overflow) = total.multipliedReportingOverflow(by: inputs)
        guard !overflow else { throw mismatch(name, total, inputs) }
        let weights = WeightBuffer(count: count)
        for (part, slice) in zip(parts, slices) {
            let values = try floats(part.tensor)
            guard values.count == part.rows * inputs else { throw mismatch(part.tensor, values.count, part.rows * inputs) }
            let destination = weights.pointer + slice.rows.lowerBound * inputs
            values.withUnsafeBufferPointer { v in
                guard let source = v.baseAddress else { return }
                if transposed {
                    for i in 0..<inputs { for r in 0..<part.rows { destination[r * inputs + i] = source[i * part.rows + r] } }
                } else {
                    destination.update(from: source, count: values.count)
                }
            }
        }
        var bias: WeightBuffer?
        if let biases {
            let b = WeightBuffer(count: total)
            for (tensor, slice) in zip(biases, slices) {
                let values = try floats(tensor)
                guard values.count == slice.rows.count else { throw mismatch(tensor, values.count, slice.rows.count) }
                values.withUnsafeBufferPointer { v in
                    if let source = v.baseAddress { (b.pointer + slice.rows.lowerBound).update(from: source, count: values.count) }
                }
            }
            bias = b
        }
        if let named, let tensor = parts.first?.tensor {
            var rows = 0
            slices = named.map { entry in
                defer { rows += entry.rows }
                return Projection.Slice(name: entry.name, rows: rows..<(rows + entry.rows), tensor: tensor)
            }
            guard rows == total else { throw mismatch(tensor, total, rows) }
        }
        let blocks = transposed ? nil : gguf.flatMap { BlockQuantizedMatrix(gguf: $0, names: parts.map(\.tensor)) }
        return Projection(name: name, inputs: inputs, outputs: total, slices: slices, weights: weights, bias: bias, blocks: blocks)
    }

    /// A projection over weights already loaded (an output head tied to the embedding: one float32 copy for both),
    /// with the GGUF blocks of `tensor` when it has some.
    func projection(_ name: String, sharing weights: WeightBuffer, tensor: String, rows: Int, inputs: Int) -> Projection {
        let blocks = gguf.flatMap { BlockQuantizedMatrix(gguf: $0, names: [tensor]) }
        return Projection(name: name, inputs: inputs, outputs: rows, slices: [Projection.Slice(name: name, rows: 0..<rows, tensor: tensor)],
                          weights: weights, bias: nil, blocks: blocks)
    }

    private func mismatch(_ name: String, _ got: Int, _ want: Int) -> TesseraError {
        TesseraError(.shapeMismatch, "\(source.sourceName): tensor '\(name)' has \(got) values where the model needs \(want)",
                     hint: "the checkpoint changed while it was loaded, or does not match its config")
    }
}

/// Weights held as one immutable float buffer. `@unchecked Sendable`: written once while loading, then only read.
final class WeightBuffer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int

    init(_ values: [Float]) {
        count = values.count
        pointer = .allocate(capacity: max(1, count))
        values.withUnsafeBufferPointer { if let base = $0.baseAddress { pointer.initialize(from: base, count: count) } }
    }

    /// `count` zeros, to be filled while loading.
    init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: max(1, count))
        pointer.initialize(repeating: 0, count: max(1, count))
    }

    deinit { pointer.deallocate() }
    var p: UnsafePointer<Float> { UnsafePointer(pointer) }
}
