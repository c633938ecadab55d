import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

public enum ClassificationScoring {
    /// Embeds the texts, predicts with the head, and reports accuracy with its standard error.
    public static func evaluate(texts: [String], labels: [Int], embedder: SentenceEmbedder, head: LinearClassificationHead,
                                progress: ProgressReporter) throws -> (metrics: [EvalMetric], predictions: [Int]) {
        guard head.inputSize == embedder.dimension else {
            throw TesseraError(.shapeMismatch, "the classification head reads \(head.inputSize)-dimensional vectors, the embedder gives \(embedder.dimension)",
                               hint: "use a head trained on this embedding model")
        }
        var reported = 0
        let embeddings = try embedder.embed(texts, batchSize: 32) { done in
            progress.advance(by: done - reported)
            reported = done
        }
        let predictions = head.predict(batch: embeddings)
        let correct = zip(predictions, labels).map { $0 == $1 ? 1.0 : 0.0 }
        let accuracy = correct.isEmpty ? 0 : correct.reduce(0, +) / Double(correct.count)
        return ([EvalMetric("acc", value: accuracy, stderr: standardError(correct), count: correct.count)], predictions)
    }
}
