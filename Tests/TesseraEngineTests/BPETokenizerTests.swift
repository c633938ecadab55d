import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// Byte-level BPE against ids computed by Hugging Face `tokenizers` (scripts/make_tokenizer_fixtures.py) for the
/// reference SmolLM2 tokenizer.json in Tests/Fixtures/reference/engine.
@Suite("BPE tokenizer")
struct BPETokenizerTests {
    typealias Support = TokenizerTestSupport

    @Test("\"= Robert Boulter =\" gives the ids in Tests/Fixtures/reference/engine/README.md")
    func robertBoulter() throws {
        let tokenizer = try Support.reference.get()
        #expect(try tokenizer.encode("= Robert Boulter =") == [45, 6356, 389, 9226, 352, 446])
        #expect(tokenizer.vocabularySize == 49152)
        #expect(tokenizer.stopTokenIDs.contains(2))  // <|im_end|>, the EOS in tokenizer_config.json
        #expect(tokenizer.eosTokenID == 2)
        #expect(tokenizer.bosTokenID == 1)
    }

    @Test("every WikiText-2 test line encodes to Hugging Face's ids and decodes back to itself")
    func wikitextLines() throws {
        let tokenizer = try Support.reference.get()
        let lines = try Support.wikitextLines()
        let reference = try Support.wikitextReferenceIDs()
        #expect(lines.count == 2891)
        #expect(reference.count == lines.count)
        var mismatches = 0
        var roundTripFailures = 0
        let start = Date()
        var encoded: [[Int]] = []
        encoded.reserveCapacity(lines.count)
        for line in lines { encoded.append(try tokenizer.encode(line)) }
        let seconds = Date().timeIntervalSince(start)
        for (k, line) in lines.enumerated() where k < reference.count {
            if encoded[k] != reference[k] {
                mismatches += 1
                if mismatches <= 5 {
                    Issue.record("line \(k + 1) \(line.prefix(80).debugDescription): \(encoded[k].prefix(40)) != \(reference[k].prefix(40))")
                }
            }
            if tokenizer.decode(encoded[k]) != line {
                roundTripFailures += 1
                if roundTripFailures <= 5 { Issue.record("line \(k + 1) does not round-trip") }
            }
        }
        #expect(mismatches == 0)
        #expect(roundTripFailures == 0)
        let tokens = encoded.reduce(0) { $0 + $1.count }
        #expect(tokens == 301_948)
        print("BPE: encoded \(lines.count) WikiText-2 lines, \(tokens) tokens, in \(String(format: "%.3f", seconds)) s")
    }

    @Test("the whole WikiText-2 file as one text: fresh tokenizer, no warm cache")
    func wikitextWholeFile() throws {
        // A fresh tokenizer so that the timing printed includes filling the word cache.
        let loadStart = Date()
        let tokenizer = try BPETokenizer(tokenizerJSONPath: Support.referenceTokenizerJSON)
        print("BPE: loaded tokenizer.json in \(String(format: "%.3f", Date().timeIntervalSince(loadStart))) s")
        let text = String(decoding: try Support.read(Support.wikitextPath), as: UTF8.self)
        let start = Date()
        let ids = try tokenizer.encode(text)
        let seconds = Date().timeIntervalSince(start)
        #expect(tokenizer.decode(ids) == text)
        #expect(ids.count > 290_000)
        print("BPE: whole WikiText-2 test file (\(text.utf8.count) bytes) → \(ids.count) tokens in \(String(format: "%.3f", seconds)) s (cold cache)")
    }

    @Test("encoding from several threads at once gives the same ids (the shared word cache is locked)")
    func concurrentEncoding() throws {
        let tokenizer = try BPETokenizer(tokenizerJSONPath: Support.referenceTokenizerJSON)
        let lines = Array(try Support.wikitextLines().prefix(800))
        let reference = try Support.wikitextReferenceIDs()
        final class Results: @unchecked Sendable {  // `ids` is only touched under `lock`
            let lock = NSLock()
            var ids: [[Int]]
            init(_ n: Int) { ids = Array(repeating: [], count: n) }
        }
        let results = Results(lines.count)
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for k in stride(from: worker, to: lines.count, by: 4) {
                let ids = tokenizer.encode(lines[k], addSpecialTokens: true)
                results.lock.lock()
                results.ids[k] = ids
                results.lock.unlock()
            }
        }
        for k in 0..<lines.count { #expect(results.ids[k] == reference[k], "line \(k + 1)") }
    }

    @Test("ARC-Easy test requests (lm-eval-harness contexts and continuations) and all of tinyshakespeare")
    func arcEasyAndShakespeare() throws {
        let tokenizer = try Support.reference.get()
        let document = try Support.cases()
        let requests = try #require(document["arc_easy_test_first100"]?.arrayValue)
        #expect(requests.count == 100)
        for request in requests {
            let context = try #require(request["context"]?.stringValue)
            #expect(try tokenizer.encode(context) == (request["context_ids"]?.arrayValue ?? []).compactMap(\.intValue))
            let continuations = (request["continuations"]?.arrayValue ?? []).compactMap(\.stringValue)
            let expected = (request["continuation_ids"]?.arrayValue ?? []).map { ($0.arrayValue ?? []).compactMap(\.intValue) }
            #expect(try continuations.map { try tokenizer.encode($0) } == expected)
        }
        let text = String(decoding: try Support.read(Support.vendoredDirectory + "/data/tinyshakespeare.txt"), as: UTF8.self)
        let ids = try tokenizer.encode(text)
        // FNV-1a 64 over the ids as little-endian u32, as the fixture script computes it.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for id in ids {
            for shift in stride(from: 0, to: 32, by: 8) {
                hash = (hash ^ UInt64((UInt32(id) >> UInt32(shift)) & 0xFF)) &* 0x0000_0100_0000_01b3
            }
        }
        #expect(ids.count == document["tinyshakespeare"]?["tokens"]?.intValue)
        let fingerprint = String(hash, radix: 16)
        #expect(String(repeating: "0", count: 16 - fingerprint.count) + fingerprint
                == document["tinyshakespeare"]?["fnv1a64"]?.stringValue)
        #expect(tokenizer.decode(ids) == text)
    }

    @Test("hard strings: unicode, digits, whitespace runs, contractions, emoji, special tokens in text")
    func hardStrings() throws {
        let tokenizer = try Support.reference.get()
        let cases = try #require(try Support.cases()["cases"]?.arrayValue)
        #expect(cases.count >= 40)
        for item in cases {
            let text = try #require(item["text"]?.stringValue)
            let expected = try #require(item["ids"]?.arrayValue).compactMap(\.intValue)
            let ids = try tokenizer.encode(text)
            #expect(ids == expected, "\(text.debugDescription)")
            #expect(tokenizer.decode(ids) == item["decoded"]?.stringValue, "\(text.debugDescription)")
            #expect(tokenizer.decode(ids, skipSpecialTokens: true) == item["decoded_skip_special"]?.stringValue,
                    "\(text.debugDescription)")
        }
    }

    @Test("variants: Digits, Split with GPT-2 / Llama 3 / Qwen 2 regexes, prefix space, ignore_merges, added-token flags",
          arguments: ["digits", "digits_contiguous", "split_gpt2", "split_llama3", "split_qwen2", "prefix_space",
                      "ignore_merges", "added_token_flags"])
    func variants(name: String) throws {
        let document = try Support.cases()
        let variant = try #require(document["variants"]?[name])
        let tokenizer = try Support.variant(variant)
        for item in try #require(document["cases"]?.arrayValue) {
            let text = try #require(item["text"]?.stringValue)
            let expected = try #require(item["variants"]?[name]?.arrayValue).compactMap(\.intValue)
            let ids = try tokenizer.encode(text)
            #expect(ids == expected, "\(name): \(text.debugDescription)")
            if name == "added_token_flags" {
                #expect(tokenizer.decode(ids, skipSpecialTokens: true) == item["added_token_flags_decoded"]?.stringValue,
                        "\(text.debugDescription)")
            }
        }
        let lines = try Support.wikitextLines()
        let indices = try #require(document["wikitext_variant_lines"]?.arrayValue).compactMap(\.intValue)
        let expectedLines = try #require(document["wikitext_variant_ids"]?[name]?.arrayValue)
        #expect(indices.count == expectedLines.count && indices.count > 50)
        for (index, expected) in zip(indices, expectedLines) {
            let ids = try tokenizer.encode(lines[index])
            #expect(ids == (expected.arrayValue ?? []).compactMap(\.intValue), "\(name): WikiText line \(index + 1)")
        }
    }

    @Test("the tokenizer built from the SmolLM2 GGUF's metadata equals the tokenizer.json one")
    func ggufMatchesTokenizerJSON() throws {
        let metadata = try TestGGUFMetadata(path: Support.smolLM2GGUF)
        let fromGGUF = try metadata.tokenizer()
        let fromJSON = try Support.reference.get()
        #expect(fromGGUF.vocabulary == fromJSON.vocabulary)
        #expect(fromGGUF.vocabularySize == fromJSON.vocabularySize)
        #expect(fromGGUF.addedTokens == fromJSON.addedTokens)
        #expect(fromGGUF.specialTokenIDs == fromJSON.specialTokenIDs)
        #expect(fromGGUF.eosTokenID == 2 && fromGGUF.bosTokenID == 1)
        #expect(fromGGUF.stopTokenIDs.contains(2))
        #expect(fromGGUF.prefixIDs.isEmpty)  // tokenizer.ggml.add_bos_token is false
        #expect(try fromGGUF.encode("= Robert Boulter =") == [45, 6356, 389, 9226, 352, 446])

        let reference = try Support.wikitextReferenceIDs()
        var mismatches = 0
        for (k, line) in try Support.wikitextLines().enumerated() where try fromGGUF.encode(line) != reference[k] {
            mismatches += 1
        }
        #expect(mismatches == 0)
        for item in try #require(try Support.cases()["cases"]?.arrayValue) {
            let text = try #require(item["text"]?.stringValue)
            #expect(try fromGGUF.encode(text) == (item["ids"]?.arrayValue ?? []).compactMap(\.intValue),
                    "\(text.debugDescription)")
        }
    }

    @Test("vocab.json + merges.txt (GPT-2 layout) holding SmolLM2's vocabulary tokenize like its tokenizer.json")
    func vocabAndMergesFiles() throws {
        let json = try JSONParser.parse(try Support.read(Support.referenceTokenizerJSON))
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bpe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let vocabPath = directory.appendingPathComponent("vocab.json").path
        let mergesPath = directory.appendingPathComponent("merges.txt").path
        let vocab = try #require(json["model"]?["vocab"])
        #expect(FileManager.default.createFile(atPath: vocabPath, contents: Data(vocab.serialized().utf8)))
        var merges = "#version: 0.2\n"
        for merge in try #require(json["model"]?["merges"]?.arrayValue) {
            let pair = (merge.arrayValue ?? []).compactMap(\.stringValue)
            merges += pair.joined(separator: " ") + "\n"
        }
        #expect(FileManager.default.createFile(atPath: mergesPath, contents: Data(merges.utf8)))
        let specials = (json["added_tokens"]?.arrayValue ?? []).compactMap { $0["content"]?.stringValue }
        let tokenizer = try BPETokenizer(vocabJSONPath: vocabPath, mergesPath: mergesPath, specialTokens: specials,
                                         bosToken: "<|im_start|>", eosToken: "<|im_end|>")
        #expect(tokenizer.eosTokenID == 2)
        let reference = try Support.wikitextReferenceIDs()
        var mismatches = 0
        for (k, line) in try Support.wikitextLines().enumerated() where try tokenizer.encode(line) != reference[k] {
            mismatches += 1
        }
        #expect(mismatches == 0)
        for item in try #require(try Support.cases()["cases"]?.arrayValue) {
            let text = try #require(item["text"]?.stringValue)
            #expect(try tokenizer.encode(text) == (item["ids"]?.arrayValue ?? []).compactMap(\.intValue),
                    "\(text.debugDescription)")
        }
    }

    @Test("llama.cpp's reading of tokenizer.ggml.pre \"smollm\" is the Digits variant")
    func ggufLlamaCppConvention() throws {
        let metadata = try TestGGUFMetadata(path: Support.smolLM2GGUF)
        #expect(metadata.values["tokenizer.ggml.pre"]?.string == "smollm")
        let tokenizer = try metadata.tokenizer(convention: .llamaCpp)
        let document = try Support.cases()
        for item in try #require(document["cases"]?.arrayValue) {
            let text = try #require(item["text"]?.stringValue)
            let expected = try #require(item["variants"]?["digits"]?.arrayValue).compactMap(\.intValue)
            #expect(try tokenizer.encode(text) == expected, "\(text.debugDescription)")
        }
    }

    @Test("GGUF initializer: control tokens are special, BOS/EOS added on request, bad input rejected")
    func ggufInitializerOptions() throws {
        // A toy byte-level vocabulary: the 256 byte characters plus one merge and one control token.
        var tokens: [String] = ["<|end|>"]
        for byte in 0..<256 {
            let scalar: Unicode.Scalar
            if (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte) {
                scalar = Unicode.Scalar(UInt8(byte))
            } else {
                let shifted = (0..<byte).filter { !((33...126).contains($0) || (161...172).contains($0) || (174...255).contains($0)) }.count
                scalar = Unicode.Scalar(UInt32(256 + shifted))!
            }
            tokens.append(String(Character(scalar)))
        }
        tokens.append("ab")
        let types = [3] + Array(repeating: 1, count: tokens.count - 1)
        let tokenizer = try BPETokenizer(tokens: tokens, merges: ["a b"], tokenTypes: types, preTokenizer: "gpt2",
                                         bosID: 0, eosID: 0, addBOS: true, addEOS: true)
        let ab = tokens.firstIndex(of: "ab")!
        let ids = try tokenizer.encode("ab<|end|>a")
        #expect(ids == [0, ab, 0, tokens.firstIndex(of: "a")!, 0])
        #expect(tokenizer.encode("ab", addSpecialTokens: false) == [ab])
        #expect(tokenizer.decode(ids, skipSpecialTokens: true) == "aba")
        #expect(tokenizer.decode(ids) == "<|end|>ab<|end|>a<|end|>")
        #expect(throws: TesseraError.self) {
            try BPETokenizer(tokens: tokens, merges: ["a zz"], tokenTypes: types, preTokenizer: "gpt2", eosID: 0)
        }
        #expect(throws: TesseraError.self) {
            try BPETokenizer(tokens: tokens, merges: [], tokenTypes: types, preTokenizer: "made-up", eosID: 0,
                             convention: .llamaCpp)
        }
    }

    @Test("unsupported tokenizer.json features are reported, not silently mis-tokenized")
    func unsupportedFeatures() throws {
        let metaspace = JSONValue.object([("type", .string("Metaspace")), ("replacement", .string("▁"))])
        #expect(throws: TesseraError.self) { try Support.variant(preTokenizer: metaspace) }
        let unknownRegex = JSONValue.object([
            ("type", .string("Split")), ("pattern", .object([("Regex", .string("\\w+"))])),
            ("behavior", .string("Isolated")), ("invert", .bool(false)),
        ])
        #expect(throws: TesseraError.self) { try Support.variant(preTokenizer: unknownRegex) }
    }
}
