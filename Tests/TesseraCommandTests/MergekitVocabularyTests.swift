import Foundation
import Testing
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// Merges across different vocabularies (Tests/Fixtures/mergekit-vocab, made by
/// scripts/make_mergekit_vocab_fixtures.py, which ran mergekit 0.1.5 on each config): `tokenizer_source: base`, a
/// model, `union`, `tokenizer.tokens` overrides, `pad_to_multiple_of`, a base stripped to its vocab_size, bfloat16.
/// `tessera merge --config` must give mergekit's tensors bit for bit (vocabulary tensors compared row by row through
/// the tokens, since union ids differ from one mergekit run to the next), a tokenizer with mergekit's token ids, and
/// config.json's vocab_size.
@Suite struct MergekitVocabularyTests {
    static let fixtures = PackagePaths.fixtures + "/mergekit-vocab"
    static let configs = ["base", "model", "union", "tokens", "tokens-base", "pad", "stripped", "bf16"]
    /// Configs built on `union`: mergekit appends the ordinary tokens new to the base in the iteration order of a Rust
    /// HashMap (tokenizers' get_vocab), which changes from run to run; these are the fixture's such tokens.
    static let unionConfigs: Set<String> = ["union", "tokens", "bf16"]
    static let unorderedTokens: Set<String> = ["ba", "bacd", "mn", "nm"]
    static let vocabularyTensors: Set<String> = ["model.embed_tokens.weight", "lm_head.weight"]

    static func json(_ path: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    /// token → id of a tokenizer.json as transformers reads it (the model's vocabulary, then the added tokens),
    /// read independently of tessera's parser.
    static func vocabulary(_ tokenizerJSON: String) throws -> [String: Int] {
        let j = try json(tokenizerJSON)
        var out = try #require((j["model"] as? [String: Any])?["vocab"] as? [String: Int])
        for t in j["added_tokens"] as? [[String: Any]] ?? [] {
            out[try #require(t["content"] as? String)] = try #require(t["id"] as? Int)
        }
        return out
    }

    /// Runs a fixture config from a sandbox (model paths made absolute) and returns the output folder.
    static func merge(_ stem: String, in s: Sandbox) throws -> String {
        let text = try String(contentsOfFile: fixtures + "/configs/\(stem).yml", encoding: .utf8)
            .replacingOccurrences(of: "models/", with: fixtures + "/models/")
        try text.write(toFile: s.path("\(stem).yml"), atomically: true, encoding: .utf8)
        tesseraSucceeds("merge", "--config", s.path("\(stem).yml"), "-o", s.path(stem))
        return s.path(stem)
    }

    @Test func everyConfigIsRecordedAsMergedByBoth() throws {
        #expect(Set(Checkpoints.list(Self.fixtures + "/configs")) == Set(Self.configs.map { $0 + ".yml" }))
        let byConfig = try #require(try Self.json(Self.fixtures + "/outcomes.json")["configs"] as? [String: [String: Any]])
        for c in Self.configs {
            let row = try #require(byConfig[c + ".yml"], "\(c)")
            #expect(row["mergekit"] as? String == "merged", "\(c)")
            // The script's run: transformers' AutoTokenizer loads tessera's tokenizer and finds mergekit's tokens, with
            // mergekit's ids wherever mergekit's own ids are repeatable; the tensors equal mergekit's.
            #expect(row["tessera_same_tokens"] as? Bool == true, "\(c)")
            if !Self.unionConfigs.contains(c) { #expect(row["tessera_same_ids"] as? Bool == true, "\(c)") }
            #expect(row["tessera_tensors"] as? String == "equal", "\(c)")
        }
    }

    @Test(arguments: configs)
    func configMatchesMergekit(stem: String) throws {
        let s = try Sandbox()
        let out = try Self.merge(stem, in: s)
        let got = try Checkpoints.tensors(out), expected = try Checkpoints.tensors(Self.fixtures + "/expected/\(stem).safetensors")
        #expect(Set(got.keys) == Set(expected.keys), "\(stem)")
        let mine = try Self.vocabulary(out + "/tokenizer.json")
        let theirs = try #require(try Self.json(Self.fixtures + "/expected/\(stem).vocab.json") as? [String: Int])
        #expect(Set(mine.keys) == Set(theirs.keys), "\(stem): the output's tokens are mergekit's")
        for (token, id) in theirs where mine[token] != id {
            #expect(Self.unionConfigs.contains(stem) && Self.unorderedTokens.contains(token), "\(stem): '\(token)' has id \(mine[token] ?? -1), mergekit's \(id)")
        }
        for (name, e) in expected {
            let g = try #require(got[name], "\(stem): \(name)")
            #expect(g.dtype == e.dtype && g.shape == e.shape, "\(stem) \(name): \(g.dtype) \(g.shape) vs \(e.dtype) \(e.shape)")
            guard Self.vocabularyTensors.contains(name), g.shape == e.shape, e.shape.count == 2 else {
                #expect(g.bytes == e.bytes, "\(stem) \(name)")
                continue
            }
            let width = e.bytes.count / e.shape[0]
            func row(_ t: ReadTensor, _ r: Int) -> Data { t.bytes.subdata(in: (t.bytes.startIndex + r * width)..<(t.bytes.startIndex + (r + 1) * width)) }
            for (token, id) in theirs {
                let m = try #require(mine[token])
                #expect(row(g, m) == row(e, id), "\(stem) \(name): the row of '\(token)'")
            }
            for r in theirs.count..<e.shape[0] { #expect(row(g, r) == row(e, r), "\(stem) \(name): padding row \(r)") }
        }
        let config = try Self.json(out + "/config.json"), mergekitConfig = try Self.json(Self.fixtures + "/expected/\(stem).config.json")
        #expect(config["vocab_size"] as? Int == mergekitConfig["vocab_size"] as? Int, "\(stem)")
    }

    /// The union's order is tessera's own and the same every run: the base's ids, then the other models' ordinary
    /// tokens (models in the config's order, each in id order), then their added tokens.
    @Test func unionOrderIsRepeatable() throws {
        let s = try Sandbox()
        let vocabulary = try Self.vocabulary(try Self.merge("union", in: s) + "/tokenizer.json")
        let order = vocabulary.sorted { $0.value < $1.value }.map(\.key)
        #expect(Array(order.suffix(6)) == ["ba", "bacd", "mn", "nm", "<tool>", "<think>"])
        let base = try Self.vocabulary(Self.fixtures + "/models/base/tokenizer.json")
        for (token, id) in base { #expect(vocabulary[token] == id) }
    }

    /// A token some models lack takes, in every model, the base's row (base is merged), else the average of the rows
    /// of the models that have it: checked on the inputs themselves, not only against mergekit.
    @Test func missingRowsComeFromTheBaseOrTheAverage() throws {
        let s = try Sandbox()
        let out = try Self.merge("union", in: s)
        let mine = try Self.vocabulary(out + "/tokenizer.json")
        let merged = Checkpoints.values(try #require(try Checkpoints.tensors(out)["lm_head.weight"]))
        func rows(_ model: String) throws -> (values: [Double], ids: [String: Int]) {
            (Checkpoints.values(try #require(try Checkpoints.tensors(Self.fixtures + "/models/\(model)")["lm_head.weight"])),
             try Self.vocabulary(Self.fixtures + "/models/\(model)/tokenizer.json"))
        }
        let added = try rows("ft_added"), other = try rows("ft_other"), base = try rows("base")
        // <tool>: in ft_added and ft_other, not the base: the base takes their average, the two keep their own rows
        // (linear merge, weights 1, 0.5, 0.25, normalised).
        let tool = try #require(mine["<tool>"]), a = try #require(added.ids["<tool>"]), o = try #require(other.ids["<tool>"])
        for c in 0..<8 {
            let x = added.values[a * 8 + c], y = other.values[o * 8 + c]
            let average = Double(Float((Float(x) + Float(y)) / 2))
            #expect(abs(merged[tool * 8 + c] - (1.0 * x + 0.5 * y + 0.25 * average) / 1.75) < 1e-6)
        }
        // "ab": the base and ft_added have it, ft_other does not: ft_other takes the base's row.
        let ab = try #require(mine["ab"]), ba = try #require(base.ids["ab"]), aa = try #require(added.ids["ab"])
        for c in 0..<8 {
            let expected = (1.0 * added.values[aa * 8 + c] + 0.5 * base.values[ba * 8 + c] + 0.25 * base.values[ba * 8 + c]) / 1.75
            #expect(abs(merged[ab * 8 + c] - expected) < 1e-6)
        }
    }

    /// Inputs a vocabulary merge cannot use are refused in one line, before any output is written.
    @Test(arguments: [
        ("tokenizer:\n  source: base\n  tokens:\n    ab:\n      source: models/nowhere\n      force: true\n", "not merged here"),
        ("tokenizer:\n  source: base\n  tokens:\n    ab:\n      source: {kind: model_token, model: models/ft_other, token: zzz}\n      force: true\n", "'zzz'"),
        ("tokenizer:\n  source: base\n  tokens:\n    ab:\n      source: {kind: model_token, model: models/ft_other, token_id: 900}\n      force: true\n", "out of range"),
        ("tokenizer:\n  source: base\n  tokens:\n    ab:\n      force: true\n", "has no source"),
    ])
    func badTokenSourcesAreRefused(tokenizer: String, says: String) throws {
        let s = try Sandbox()
        let yaml = "models:\n  - model: models/base\n  - model: models/ft_other\nmerge_method: linear\nparameters: {weight: 1.0}\nbase_model: models/base\n\(tokenizer)"
            .replacingOccurrences(of: "models/", with: Self.fixtures + "/models/")
        try yaml.write(toFile: s.path("c.yml"), atomically: true, encoding: .utf8)
        let r = tessera("merge", "--config", s.path("c.yml"), "-o", s.path("out"))
        let message = r.tesseraError?.message ?? "\(String(describing: r.error))"
        #expect(r.status == 1 && message.contains(says) && !message.contains("\n"), "\(message)")
        #expect(!FileManager.default.fileExists(atPath: s.path("out")))
    }

    /// Hostile tokenizer.json files (bytes written here) are errors, not traps: ids out of range, an added token
    /// without an id, an id past the model's vocab_size, and a vocabulary with a gap in its ids.
    @Test(arguments: [
        (#"{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}}"#, "not a token id"),
        (#"{"model": {"type": "BPE", "vocab": {"a": 99999999999}, "merges": []}}"#, "not a token id"),
        (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [{"content": "x"}]}"#, "without content or a token id"),
        (#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 500}, "merges": []}}"#, "past its vocab_size"),
        (#"{"model": "nothing"}"#, "no vocabulary"),
        ("vocab_size -5", "declares vocab_size -5"),
    ])
    func hostileTokenizersAreErrors(tokenizerJSON: String, says: String) throws {
        let s = try Sandbox()
        try FileManager.default.copyItem(atPath: Self.fixtures + "/models/ft_other", toPath: s.path("hostile"))
        if tokenizerJSON.hasPrefix("vocab_size ") {
            // The tokenizer as it is, config.json's vocab_size hostile instead.
            let config = try String(contentsOfFile: s.path("hostile/config.json"), encoding: .utf8)
            try config.replacingOccurrences(of: "\"vocab_size\": 24", with: "\"vocab_size\": -5").write(toFile: s.path("hostile/config.json"), atomically: true, encoding: .utf8)
            return try runHostile(s, says: says)
        }
        try FileManager.default.removeItem(atPath: s.path("hostile/tokenizer.json"))
        try tokenizerJSON.write(toFile: s.path("hostile/tokenizer.json"), atomically: true, encoding: .utf8)
        try runHostile(s, says: says)
    }

    func runHostile(_ s: Sandbox, says: String) throws {
        let yaml = "models:\n  - model: \(Self.fixtures)/models/base\n  - model: \(s.path("hostile"))\nmerge_method: linear\nparameters: {weight: 1.0}\n"
            + "base_model: \(Self.fixtures)/models/base\ntokenizer_source: union\n"
        try yaml.write(toFile: s.path("c.yml"), atomically: true, encoding: .utf8)
        let r = tessera("merge", "--config", s.path("c.yml"), "-o", s.path("out"))
        let message = r.tesseraError?.message ?? "\(String(describing: r.error))"
        #expect(r.status == 1 && message.contains(says) && !message.contains("\n"), "\(message)")
    }
}
