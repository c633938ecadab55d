import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO
import TesseraMath

/// SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32) loaded once for the suite.
let sharedSmolLM2: Result<LlamaModel, any Error> = Result {
    let model = try ModelLoader.load(path: EngineFixtures.smolLM2Path)
    guard let llama = model as? LlamaModel else {
        throw TesseraError(.unsupported, "SmolLM2 did not load as a Llama model")
    }
    return llama
}

/// Token ids that Hugging Face `tokenizers` produced from the shared tokenizer.json (scripts/make_engine_fixtures.py).
struct SmolLM2TokenFixture {
    let wikitext: [[Int]]
    let arc: [(id: String, context: [Int], continuations: [[Int]])]
    let chatPrompt: [Int]

    init() throws {
        let json = try EngineFixtures.json(EngineFixtures.fixtures + "/smollm2_token_ids.json")
        func ids(_ v: JSONValue?) -> [Int] { v?.arrayValue?.compactMap(\.intValue) ?? [] }
        wikitext = json["wikitext_first20"]?.arrayValue?.map { ids($0) } ?? []
        arc = json["arc_easy_test_first25"]?.arrayValue?.map {
            ($0["id"]?.stringValue ?? "", ids($0["context"]), $0["continuations"]?.arrayValue?.map { ids($0) } ?? [])
        } ?? []
        chatPrompt = ids(json["chat_prompt"])
    }
}

/// Golden values from Tests/Fixtures/reference/engine/README.md (PyTorch/transformers, float32).
@Suite(.serialized, .enabled(if: EngineFixtures.hasSmolLM2, "SmolLM2 GGUF not installed (scripts/setup.sh)"))
struct SmolLM2Tests {
    @Test func configFromGGUF() throws {
        let c = try sharedSmolLM2.get().config
        #expect(c.layers == 30 && c.hiddenSize == 576 && c.heads == 9 && c.kvHeads == 3 && c.headDim == 64)
        #expect(c.intermediateSize == 1536 && c.vocabularySize == 49152 && c.ropeTheta == 100_000 && c.tiedEmbeddings)
    }

    @Test func wikiTextMeanNLL() throws {
        let model = try sharedSmolLM2.get()
        let lines = try SmolLM2TokenFixture().wikitext
        #expect(lines.count == 20)
        let scores = try model.scoreContinuations(lines.map { (context: [$0[0]], continuation: Array($0.dropFirst())) })
        let predicted = scores.reduce(0) { $0 + $1.count }
        #expect(predicted == 1847)
        let nll = -scores.joined().reduce(0.0) { $0 + Double($1) } / Double(predicted)
        #expect(abs(nll - 3.858584) < 2e-4, "mean NLL \(nll)")
        let perLine = [7.2417, 3.6611, 3.2169, 9.3859, 3.6929, 3.6246, 3.8897, 5.4635, 3.9857, 3.7137]
        for (i, want) in perLine.enumerated() {
            let got = -scores[i].reduce(0.0) { $0 + Double($1) } / Double(scores[i].count)
            #expect(abs(got - want) < 1e-3, "line \(i + 1): \(got) vs \(want)")
        }
    }

    @Test func arcEasyLogLikelihoods() throws {
        let model = try sharedSmolLM2.get()
        let fixture = try SmolLM2TokenFixture()
        let golden = try String(contentsOfFile: EngineFixtures.referenceFixtures + "/reference/engine/smollm2_arc_easy_test_first25.jsonl", encoding: .utf8)
            .split(separator: "\n").map { try JSONParser.parse(String($0)) }
        let questions = try String(contentsOfFile: EngineFixtures.data + "/ARC-Easy-test.jsonl", encoding: .utf8)
            .split(separator: "\n").prefix(25).map { try JSONParser.parse(String($0)) }
        #expect(golden.count == 25 && fixture.arc.count == 25)
        var requests: [(context: [Int], continuation: [Int])] = []
        for q in fixture.arc { for c in q.continuations { requests.append((q.context, c)) } }
        let scores = try model.scoreContinuations(requests)
        var k = 0
        var worst = 0.0
        for (i, q) in fixture.arc.enumerated() {
            #expect(golden[i]["id"]?.stringValue == q.id && questions[i]["id"]?.stringValue == q.id)
            let want = golden[i]["loglik"]?.arrayValue?.compactMap(\.doubleValue) ?? []
            let texts = questions[i]["choices"]?["text"]?.arrayValue?.compactMap(\.stringValue) ?? []
            var got: [Double] = []
            for _ in q.continuations {
                got.append(scores[k].reduce(0.0) { $0 + Double($1) })
                k += 1
            }
            #expect(got.count == want.count)
            for (g, w) in zip(got, want) {
                worst = max(worst, abs(g - w))
                #expect(abs(g - w) < 2e-3, "\(q.id): \(got) vs \(want)")
            }
            let pred = got.indices.max { got[$0] < got[$1] }
            let norm = got.indices.map { got[$0] / Double((" " + texts[$0]).utf8.count) }
            #expect(pred == golden[i]["pred"]?.intValue, "\(q.id) prediction")
            #expect(norm.indices.max { norm[$0] < norm[$1] } == golden[i]["pred_norm"]?.intValue, "\(q.id) normalised prediction")
        }
        print("ARC: worst |Δ loglik| = \(worst)")
    }

    @Test func greedyChatAnswer() throws {
        let model = try sharedSmolLM2.get()
        let gguf = try GGUFFile(path: EngineFixtures.smolLM2Path)
        let prompt = try SmolLM2TokenFixture().chatPrompt
        let endOfTurn = 2  // <|im_end|>
        let ids = try model.generate(prompt: prompt, maxNewTokens: 64, sampling: .greedy, stop: [endOfTurn])
        let text = ByteLevelDecoder(gguf: gguf).decode(ids)
        #expect(text.hasPrefix("The capital of France is Paris."), "got: \(text)")
    }

    /// The tokenizer.json rebuilt from the GGUF metadata has the same vocabulary, merges and added tokens as the one
    /// transformers rebuilt from the same GGUF.
    @Test func importedTokenizerMatchesTransformersConversion() throws {
        let gguf = try GGUFFile(path: EngineFixtures.smolLM2Path)
        let ours = try GGUFImport.huggingFaceTokenizerJSON(from: gguf)
        let reference = try EngineFixtures.json(EngineFixtures.referenceFixtures + "/reference/engine/smollm2_tokenizer/tokenizer.json")
        let vocabulary = { (t: JSONValue) in Dictionary(uniqueKeysWithValues: (t["model"]?["vocab"]?.objectValue ?? []).map { ($0.0, $0.1.intValue ?? -1) }) }
        #expect(vocabulary(ours).count == 49152)
        #expect(vocabulary(ours) == vocabulary(reference))
        #expect(ours["model"]?["merges"] == reference["model"]?["merges"])
        let added = { (t: JSONValue) in (t["added_tokens"]?.arrayValue ?? []).map { "\($0["id"]!.intValue!) \($0["content"]!.stringValue!) \($0["special"]!.boolValue!)" } }
        #expect(added(ours) == added(reference))
        #expect(ours["pre_tokenizer"] == reference["pre_tokenizer"] && ours["decoder"] == reference["decoder"])
    }

    /// Import writes a Hugging Face directory (un-permuted Q/K, split-halves RoPE) that gives the GGUF's logits.
    @Test func importedDirectoryGivesGGUFLogits() throws {
        let model = try sharedSmolLM2.get()
        let directory = try EngineFixtures.temporaryDirectory("smollm2-import")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try GGUFImport.writeHuggingFaceDirectory(from: GGUFFile(path: EngineFixtures.smolLM2Path), to: directory)
        let imported = try ModelLoader.load(path: directory)
        #expect((imported as? LlamaModel)?.config.ropeRotatesAdjacentPairs == false)
        let ids = try SmolLM2TokenFixture().wikitext[1]
        let a = try imported.logits(ids), b = try model.logits(ids)
        let difference = EngineFixtures.maxAbsDifference(a, b)
        let sa = try imported.scoreContinuations([(Array(ids.prefix(1)), Array(ids.dropFirst()))])[0]
        let sb = try model.scoreContinuations([(Array(ids.prefix(1)), Array(ids.dropFirst()))])[0]
        let logProbDifference = EngineFixtures.maxAbsDifference(sa, sb)
        print("SmolLM2 import: \(ids.count) tokens, max |Δlogit| = \(difference), max |Δlog p| = \(logProbDifference), max |logit| = \(b.map(abs).max()!)")
        #expect(difference < 1e-4, "max |Δlogit| = \(difference)")
    }

    /// Timings for the report (run with TESSERA_ENGINE_BENCH=1); no assertions on time.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["TESSERA_ENGINE_BENCH"] != nil))
    func benchmark() throws {
        let model = try sharedSmolLM2.get()
        let threads = Int(ProcessInfo.processInfo.environment["TESSERA_BENCH_THREADS"] ?? "2") ?? 2
        Linalg.setThreads(threads)
        let tokens = (0..<512).map { ($0 * 7919) % 49000 + 100 }
        let clock = ContinuousClock()
        // The floor: the same 4 linear-layer sgemms × 30 layers on 512 tokens, nothing else.
        let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
        let weights = shapes.map { [Float](repeating: 0.01, count: $0.0 * $0.1) }
        let input = [Float](repeating: 0.5, count: 512 * 1536)
        var output = [Float](repeating: 0, count: 512 * 3072)
        let g0 = clock.now
        for _ in 0..<30 {
            for (w, (o, i)) in zip(weights, shapes) {
                Linalg.matmulTransposedB(input, w, &output, m: 512, n: o, k: i)
            }
        }
        let bigWeights = shapes.map { [Float](repeating: 0.01, count: 30 * $0.0 * $0.1) }
        let head = [Float](repeating: 0.01, count: 49152 * 576)
        var headOut = [Float](repeating: 0, count: 49152)
        let v0 = clock.now
        for _ in 0..<20 {
            for l in 0..<30 {
                for (w, (o, i)) in zip(bigWeights, shapes) {
                    w.withUnsafeBufferPointer { Linalg.matvec($0.baseAddress! + l * o * i, input, &output, rows: o, cols: i) }
                }
            }
            Linalg.matvec(head, input, &headOut, rows: 49152, cols: 576)
        }
        print(String(format: "bench: decode sgemv floor (all weights once per token): %.1f tok/s", 20 / ((clock.now - v0) / .seconds(1))))
        print(String(format: "bench: linear-layer sgemm floor for 512 tokens: %.1f tok/s", 512 / ((clock.now - g0) / .seconds(1))))
        for _ in 0..<2 {
            let state = model.makeState(capacity: 512)
            let t0 = clock.now
            _ = try model.forward(tokens, state: state, logitRows: [511])
            let prefill = (clock.now - t0) / .seconds(1)
            let t1 = clock.now
            let state2 = model.makeState(capacity: 640)
            _ = try model.forward(Array(tokens[0..<16]), state: state2, logitRows: [15])
            var next = 42
            for _ in 0..<64 {
                let logits = try model.forward([next], state: state2, logitRows: [0])
                next = logits.indices.max { logits[$0] < logits[$1] }!
            }
            let decode = (clock.now - t1) / .seconds(1)
            let scoring = clock.now
            _ = try model.scoreContinuations([(Array(tokens[0..<256]), Array(tokens[256..<512]))])
            let score = (clock.now - scoring) / .seconds(1)
            print(String(format: "bench threads=%d: prefill 512 (last logits): %.1f tok/s; 16-token prompt + 64 decode steps: %.1f tok/s; score 256+256: %.1f tok/s",
                         threads, 512 / prefill, 64 / decode, 512 / score))
        }
    }
}
