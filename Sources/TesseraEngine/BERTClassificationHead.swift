import Foundation
import TesseraCore
import TesseraIO

/// A linear classifier over sentence embeddings: logits = W·x + b with `weight` [C, D] and `bias` [C].
/// With C = 1 it is logistic regression: class 1 iff x·w + b > 0, else class 0. With C > 1, the argmax.
public struct LinearClassificationHead: Sendable {
    public let weight: [Float]  // [classes, inputSize]
    public let bias: [Float]    // [classes]
    public let outputCount: Int
    public let inputSize: Int

    /// Number of classes predicted: 2 for a single logistic output.
    public var classCount: Int { outputCount == 1 ? 2 : outputCount }

    public init(weight: [Float], bias: [Float], outputCount: Int, inputSize: Int) throws {
        guard outputCount > 0, inputSize > 0, weight.count == outputCount * inputSize, bias.count == outputCount else {
            throw TesseraError(.shapeMismatch, "classification head: weight of \(weight.count) values and bias of \(bias.count) do not fit [\(outputCount), \(inputSize)]")
        }
        self.weight = weight
        self.bias = bias
        self.outputCount = outputCount
        self.inputSize = inputSize
    }

    /// Reads `weight` [C, D] and `bias` [C] from a tensor source (a safetensors head checkpoint); `inputSize`, when
    /// given, is checked against D (the embedder's dimension).
    public init(source: TensorSource, inputSize expected: Int? = nil) throws {
        guard let w = source.tensorInfo("weight") else {
            throw TesseraError(.invalidCheckpoint, "\(source.sourceName): missing tensor 'weight' (the head's [classes, dim] matrix)",
                               hint: "a classification head checkpoint holds 'weight' [C, D] and 'bias' [C]")
        }
        guard let b = source.tensorInfo("bias") else {
            throw TesseraError(.invalidCheckpoint, "\(source.sourceName): missing tensor 'bias' (the head's [classes] vector)",
                               hint: "a classification head checkpoint holds 'weight' [C, D] and 'bias' [C]")
        }
        guard w.shape.count == 2, b.shape == [w.shape[0]] else {
            throw TesseraError(.shapeMismatch, "\(source.sourceName): head tensors 'weight' \(w.shape) and 'bias' \(b.shape) do not form a [C, D] / [C] pair")
        }
        if let expected, w.shape[1] != expected {
            throw TesseraError(.shapeMismatch, "\(source.sourceName): tensor 'weight' has shape \(w.shape), the embedder gives \(expected)-dimensional vectors",
                               hint: "use a head trained on this embedding model")
        }
        try self.init(weight: try source.floats("weight"), bias: try source.floats("bias"), outputCount: w.shape[0], inputSize: w.shape[1])
    }

    public init(path: String, inputSize: Int? = nil) throws {
        try self.init(source: try SafetensorsFile(path: path), inputSize: inputSize)
    }

    public func logits(_ x: [Float]) -> [Float] {
        precondition(x.count == inputSize, "embedding of \(x.count) values for a head over \(inputSize)")
        return (0..<outputCount).map { c in
            var s = bias[c]
            for k in 0..<inputSize { s += weight[c * inputSize + k] * x[k] }
            return s
        }
    }

    public func predict(_ x: [Float]) -> Int {
        let z = logits(x)
        if outputCount == 1 { return z[0] > 0 ? 1 : 0 }
        var best = 0
        for c in 1..<outputCount where z[c] > z[best] { best = c }
        return best
    }

    public func predict(batch: [[Float]]) -> [Int] { batch.map(predict) }
}
