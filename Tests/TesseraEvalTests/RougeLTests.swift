import Foundation
import Testing
import TesseraEval

@Suite struct RougeLTests {
    /// Reference: Google's rouge-score (no stemming) over the stored text-davinci-003 answers.
    @Test func selfInstructPredictionsMatchRougeScore() throws {
        let rows = try EvalTestFiles.jsonLines(EvalTestFiles.vendoredData + "/selfinstruct_text-davinci-003_predictions.jsonl")
        #expect(rows.count == 252)
        let scores = rows.map { RougeL.score(prediction: $0["response"] as! String, reference: $0["target"] as! String).f1 }
        let firstFive = [0.55, 0.0, 0.962963, 0.944444, 0.307692]
        for (k, expected) in firstFive.enumerated() {
            #expect(abs(scores[k] - expected) < 5e-7, "item \(k): \(scores[k]) vs \(expected)")
        }
        let mean = scores.reduce(0, +) / Double(scores.count)
        #expect(abs(mean - 0.330146) < 5e-7, "mean \(mean)")
    }

    /// With rouge-score's use_stemmer=True (NLTK Porter on tokens longer than three characters): 0.336378.
    @Test func stemmedRougeLMatchesRougeScore() throws {
        let rows = try EvalTestFiles.jsonLines(EvalTestFiles.vendoredData + "/selfinstruct_text-davinci-003_predictions.jsonl")
        let scores = rows.map { RougeL.score(prediction: $0["response"] as! String, reference: $0["target"] as! String, stemming: true).f1 }
        let mean = scores.reduce(0, +) / Double(scores.count)
        #expect(abs(mean - 0.336378) < 5e-7, "mean \(mean)")
    }

    /// Every distinct token of the predictions file, stemmed by NLTK (scripts/make_eval_fixtures.py).
    @Test func porterStemsMatchNLTK() throws {
        let path = EvalTestFiles.packageRoot + "/Tests/TesseraEvalTests/Fixtures/porter_stems.tsv"
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.count > 4000)
        var wrong: [String] = []
        for line in lines {
            let parts = line.split(separator: "\t").map(String.init)
            let got = PorterStemmer.stem(parts[0])
            if got != parts[1] { wrong.append("\(parts[0]): \(got), NLTK \(parts[1])") }
        }
        #expect(wrong.isEmpty, "\(wrong.count) differ: \(wrong.prefix(30).joined(separator: "; "))")
    }

    @Test func tokenizationAndEdgeCases() {
        #expect(RougeL.tokenize("Hello, World! It's 2024-11-24.") == ["hello", "world", "it", "s", "2024", "11", "24"])
        #expect(RougeL.tokenize("Café  naïve") == ["caf", "na", "ve"])
        #expect(RougeL.score(prediction: "", reference: "something").f1 == 0)
        #expect(RougeL.score(prediction: "the cat sat", reference: "the cat sat").f1 == 1)
        // LCS of "a b c d" and "a c b d" is 3: P = R = 3/4.
        let s = RougeL.score(prediction: "a b c d", reference: "a c b d")
        #expect(abs(s.f1 - 0.75) < 1e-12)
        // Different lengths: LCS 2, P = 2/2, R = 2/4 → F = 2/3.
        #expect(abs(RougeL.score(prediction: "a d", reference: "a b c d").f1 - 2.0 / 3.0) < 1e-12)
        #expect(RougeL.f1(prediction: "x y", references: ["a b", "x y"]) == 1)
    }
}
