import Foundation
import TesseraCore

/// Sentence embeddings the sentence-transformers way: WordPiece, the BERT encoder, mean pooling over the real
/// (non-padding) tokens, `[CLS]` and `[SEP]` included, then L2 normalisation.
///
/// Immutable; safe to share. Batches are formed from sentences of similar length (fewer padded positions to
/// compute), and results come back in input order.
public final class SentenceEmbedder: @unchecked Sendable {
    public let model: BERTModel
    public let tokenizer: WordPieceTokenizer

    public init(model: BERTModel, tokenizer: WordPieceTokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    /// Loads the model (config.json, model.safetensors) and the tokenizer from a model directory.
    public static func load(directory: String, maxLength: Int? = nil) throws -> SentenceEmbedder {
        let tokenizer = try WordPieceTokenizer.load(directory: directory, maxLength: maxLength)
        return SentenceEmbedder(model: try BERTModel.load(directory: directory), tokenizer: tokenizer)
    }

    public var dimension: Int { model.config.hiddenSize }

    /// Unit-length embeddings of `texts`, in order. `progress` is told how many sentences are done.
    public func embed(_ texts: [String], batchSize: Int = 32, progress: ((Int) -> Void)? = nil) throws -> [[Float]] {
        let ids = try texts.map { try tokenizer.encode($0) }
        return try embed(tokenIDs: ids, batchSize: batchSize, progress: progress)
    }

    public func embed(_ text: String) throws -> [Float] { try embed([text])[0] }

    /// Embeddings of already tokenised sequences (each with its `[CLS]` and `[SEP]`).
    public func embed(tokenIDs: [[Int]], batchSize: Int = 32, progress: ((Int) -> Void)? = nil) throws -> [[Float]] {
        let h = dimension
        var result = [[Float]](repeating: [], count: tokenIDs.count)
        // Longest first, ties by index: deterministic batches with little padding.
        let order = tokenIDs.indices.sorted { tokenIDs[$0].count != tokenIDs[$1].count ? tokenIDs[$0].count > tokenIDs[$1].count : $0 < $1 }
        var done = 0
        var start = 0
        while start < order.count {
            let members = Array(order[start..<min(order.count, start + max(1, batchSize))])
            let (states, t) = try model.encode(members.map { tokenIDs[$0] })
            states.withUnsafeBufferPointer { sp in
                for (row, index) in members.enumerated() {
                    let len = tokenIDs[index].count
                    var pooled = [Float](repeating: 0, count: h)
                    if len > 0 {
                        for pos in 0..<len {
                            let v = sp.baseAddress! + (row * t + pos) * h
                            for k in 0..<h { pooled[k] += v[k] }
                        }
                        let inv = 1 / Float(len)
                        for k in 0..<h { pooled[k] *= inv }
                    }
                    var norm: Float = 0
                    for k in 0..<h { norm += pooled[k] * pooled[k] }
                    // sentence-transformers' Normalize: x / max(‖x‖, 1e-12)
                    let scale = 1 / max(norm.squareRoot(), 1e-12)
                    for k in 0..<h { pooled[k] *= scale }
                    result[index] = pooled
                }
            }
            start += members.count
            done += members.count
            progress?(done)
        }
        return result
    }

    /// Cosine similarity of two vectors (the dot product for the unit vectors `embed` returns).
    public static func cosine(_ a: [Float], _ b: [Float]) -> Float {
        var dot: Float = 0, na: Float = 0, nb: Float = 0
        for k in 0..<min(a.count, b.count) { dot += a[k] * b[k]; na += a[k] * a[k]; nb += b[k] * b[k] }
        return dot / max((na * nb).squareRoot(), 1e-12)
    }
}
