/// Rouge-L as Google's `rouge-score` computes it without stemming: lower-case, every run of characters other than
/// ASCII letters and digits becomes a space, whitespace-separated tokens; precision = LCS / prediction length,
/// recall = LCS / reference length, F = 2PR / (P + R) (0 when either side has no tokens). With `stemming`, tokens
/// longer than three characters are reduced by the Porter stemmer first (rouge-score's `use_stemmer=True`).
public enum RougeL {
    public struct Score: Sendable, Equatable {
        public var precision: Double
        public var recall: Double
        public var f1: Double
    }

    public static func tokenize(_ text: String, stemming: Bool = false) -> [String] {
        var tokens: [String] = []
        var current = String.UnicodeScalarView()
        for u in text.lowercased().unicodeScalars {
            if (u >= "a" && u <= "z") || (u >= "0" && u <= "9") {
                current.append(u)
            } else if !current.isEmpty {
                tokens.append(String(current))
                current = String.UnicodeScalarView()
            }
        }
        if !current.isEmpty { tokens.append(String(current)) }
        return stemming ? tokens.map { $0.utf8.count > 3 ? PorterStemmer.stem($0) : $0 } : tokens
    }

    public static func score(prediction: String, reference: String, stemming: Bool = false) -> Score {
        score(predictionTokens: tokenize(prediction, stemming: stemming), referenceTokens: tokenize(reference, stemming: stemming))
    }

    public static func score(predictionTokens p: [String], referenceTokens r: [String]) -> Score {
        guard !p.isEmpty, !r.isEmpty else { return Score(precision: 0, recall: 0, f1: 0) }
        let lcs = Double(longestCommonSubsequence(p, r))
        let precision = lcs / Double(p.count), recall = lcs / Double(r.count)
        let f1 = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0
        return Score(precision: precision, recall: recall, f1: f1)
    }

    /// F1 against the best of several references (rouge-score's `score_multi` keeps the highest F).
    public static func f1(prediction: String, references: [String], stemming: Bool = false) -> Double {
        let p = tokenize(prediction, stemming: stemming)
        return references.map { score(predictionTokens: p, referenceTokens: tokenize($0, stemming: stemming)).f1 }.max() ?? 0
    }

    /// Length of the LCS by dynamic programming over two rows, tokens interned to integers first.
    static func longestCommonSubsequence(_ a: [String], _ b: [String]) -> Int {
        var ids: [String: Int] = [:]
        let x = a.map { t in ids[t] ?? { ids[t] = ids.count; return ids.count - 1 }() }
        let y = b.map { ids[$0] ?? -1 }
        var previous = [Int](repeating: 0, count: y.count + 1)
        var row = previous
        for i in 0..<x.count {
            for j in 0..<y.count {
                row[j + 1] = x[i] == y[j] ? previous[j] + 1 : max(previous[j + 1], row[j])
            }
            swap(&previous, &row)
        }
        return previous[y.count]
    }
}
