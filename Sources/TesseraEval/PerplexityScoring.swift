import Foundation
import TesseraCore
import TesseraEngine
import TesseraIO

/// Loss and perplexity of texts under a causal LM: each text is its own sequence, no BOS, so its first token is
/// context only and every later token is predicted. Texts longer than the model's window are scored in windows:
/// each window predicts the next tokens given as much of the preceding text as fits.
public enum PerplexityScoring {
    /// The scoring requests for one tokenised text.
    public static func requests(tokens: [Int], maxLength: Int) -> [(context: [Int], continuation: [Int])] {
        guard tokens.count > 1 else { return [] }
        let window = max(2, maxLength)
        var out: [(context: [Int], continuation: [Int])] = []
        var start = 1
        while start < tokens.count {
            let end = min(tokens.count, start + window - 1)
            let contextStart = max(0, end - window)
            out.append((Array(tokens[contextStart..<start]), Array(tokens[start..<end])))
            start = end
        }
        return out
    }

    /// Mean NLL per predicted token (nats; stderr over tokens) and perplexity = exp(mean NLL).
    public static func evaluate(texts: [String], model: any CausalLanguageModel, tokenizer: any TextTokenizer,
                                progress: ProgressReporter) throws -> [EvalMetric] {
        var tokenNLL: [Double] = []
        for text in texts {
            let ids = try tokenizer.encode(text)
            let requests = requests(tokens: ids, maxLength: model.maxSequenceLength)
            if !requests.isEmpty {
                let logProbs = try model.scoreContinuations(requests)
                for lp in logProbs { tokenNLL += lp.map { -Double($0) } }
            }
            progress.advance()
        }
        guard !tokenNLL.isEmpty else {
            throw TesseraError(.invalidParameter, "no token was predicted: every text is a single token or empty",
                               hint: "perplexity needs texts of two tokens or more")
        }
        let meanNLL = tokenNLL.reduce(0, +) / Double(tokenNLL.count)
        return [
            EvalMetric("nll", value: meanNLL, stderr: standardError(tokenNLL), count: texts.count),
            EvalMetric("perplexity", value: exp(meanNLL), count: texts.count),
        ]
    }
}
