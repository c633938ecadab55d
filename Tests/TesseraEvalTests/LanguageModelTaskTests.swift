import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO

/// Request construction for the LM tasks (the lm-eval-harness recipe), and their scoring arithmetic through the
/// `CausalLanguageModel` protocol with scripted models. The real-model numbers come with the Llama engine.
@Suite struct LanguageModelTaskTests {
    let data = EvalDataDirectory(EvalTestFiles.data)

    @Test func arcRequestsFollowTheHarnessRecipe() throws {
        let rows = Array(try EvalTestFiles.jsonLines(EvalTestFiles.data + "/ARC-Easy-test.jsonl").prefix(10))
        let questions = try ARCTask.questions(fromFile: EvalTestFiles.data + "/ARC-Easy-test.jsonl", limit: 10)
        #expect(questions.count == 10)
        let tokenizer = ByteTokenizer()
        for (row, q) in zip(rows, questions) {
            let choices = row["choices"] as! [String: Any]
            let texts = choices["text"] as! [String], labels = choices["label"] as! [String]
            #expect(q.id == row["id"] as! String)
            #expect(q.gold == labels.firstIndex(of: row["answerKey"] as! String))
            let requests = try MultipleChoiceScoring.requests(for: q, tokenizer: tokenizer)
            #expect(requests.count == texts.count)
            for (request, choice) in zip(requests, texts) {
                #expect(tokenizer.decode(request.context) == "Question: " + (row["question"] as! String) + "\nAnswer:")
                #expect(tokenizer.decode(request.continuation) == " " + choice)
            }
        }
        // Context and continuation are tokenised separately (not the concatenated string).
        #expect(tokenizer.encodedTexts.contains(" " + ((rows[0]["choices"] as! [String: Any])["text"] as! [String])[0]))
        #expect(!tokenizer.encodedTexts.contains { $0.hasPrefix("Question: ") && $0.hasSuffix(((rows[0]["choices"] as! [String: Any])["text"] as! [String])[0]) })
    }

    @Test func challengeSubsetReadsItsOwnFileWithDigitLabels() throws {
        let questions = try ARCTask.questions(fromFile: EvalTestFiles.data + "/ARC-Challenge-test.jsonl", limit: nil)
        #expect(questions.count == 1172)
        let rows = try EvalTestFiles.jsonLines(EvalTestFiles.data + "/ARC-Challenge-test.jsonl")
        let digitRow = try #require(rows.firstIndex { ["1", "2", "3", "4"].contains($0["answerKey"] as! String) })
        #expect(questions[digitRow].gold == Int(rows[digitRow]["answerKey"] as! String)! - 1)
    }

    /// With a model that returns SmolLM2's reference log-likelihoods (smollm2_arc_easy_test_first25.jsonl), the
    /// task's predictions, acc and acc_norm equal the reference's.
    @Test func arcScoringReproducesReferencePredictions() throws {
        let reference = try EvalTestFiles.jsonLines(EvalTestFiles.reference + "/smollm2_arc_easy_test_first25.jsonl")
        let rows = Array(try EvalTestFiles.jsonLines(EvalTestFiles.data + "/ARC-Easy-test.jsonl").prefix(25))
        var loglik: [String: Double] = [:]  // context + continuation text → reference log-likelihood
        for (row, ref) in zip(rows, reference) {
            let texts = (row["choices"] as! [String: Any])["text"] as! [String]
            for (k, choice) in texts.enumerated() {
                loglik["Question: \(row["question"] as! String)\nAnswer:| \(choice)"] = (ref["loglik"] as! [Double])[k]
            }
        }
        let tokenizer = ByteTokenizer()
        let model = ScriptedLanguageModel(scorer: { request in
            let key = tokenizer.decode(request.context) + "|" + tokenizer.decode(request.continuation)
            let total = loglik[key] ?? 0
            // Spread the total over the continuation tokens: the task must sum them back.
            return request.continuation.map { _ in Float(total / Double(request.continuation.count)) }
        })
        let questions = try ARCTask.questions(fromFile: EvalTestFiles.data + "/ARC-Easy-test.jsonl", limit: 25)
        let outcomes = try MultipleChoiceScoring.score(questions, model: model, tokenizer: tokenizer, progress: .silent)
        #expect(outcomes.map(\.prediction) == reference.map { $0["pred"] as! Int })
        #expect(outcomes.map(\.normalizedPrediction) == reference.map { $0["pred_norm"] as! Int })
        #expect(outcomes.map(\.gold) == reference.map { $0["gold"] as! Int })

        let prepared = try ARCTask(.easy, limit: 25).prepare(data: data)
        let metrics = try prepared.run(models: EvalModels(languageModel: model, tokenizer: tokenizer), progress: .silent)
        let acc = reference.filter { $0["pred"] as! Int == $0["gold"] as! Int }.count
        let accNorm = reference.filter { $0["pred_norm"] as! Int == $0["gold"] as! Int }.count
        #expect(metrics.map(\.name) == ["acc", "acc_norm"])
        #expect(abs(metrics[0].value - Double(acc) / 25) < 1e-12)
        #expect(abs(metrics[1].value - Double(accNorm) / 25) < 1e-12)
        let p = Double(acc) / 25
        #expect(abs(metrics[0].stderr! - (p * (1 - p) / 24).squareRoot()) < 1e-12)
        #expect(metrics.allSatisfy { $0.count == 25 })
    }

    @Test func wikitextScoresEachStrippedLineWithoutBOS() throws {
        let texts = try WikitextTask.texts(fromFile: EvalTestFiles.data + "/wikitext2_raw_test.txt", limit: 20)
        #expect(texts.count == 20)
        #expect(texts[0] == "= Robert Boulter =")
        // Independently: split the bytes at LF (the file has CRLF line ends), strip, drop empty lines.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: EvalTestFiles.data + "/wikitext2_raw_test.txt"))
        let expected = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
        #expect(texts == Array(expected.prefix(20)))

        let tokenizer = ByteTokenizer()
        // Every predicted token gets log-probability -ln 2, so the perplexity must be exactly 2.
        let model = ScriptedLanguageModel(scorer: { r in r.continuation.map { _ in -Float(M_LN2) } })
        let metrics = try WikitextTask(limit: 3).prepare(data: data)
            .run(models: EvalModels(languageModel: model, tokenizer: tokenizer), progress: .silent)
        #expect(model.scoreCalls.count == 3)
        for (call, text) in zip(model.scoreCalls, texts) {
            let request = try #require(call.first)
            #expect(call.count == 1)
            #expect(request.context == [Int(text.utf8.first!)])  // first token is context only: no BOS
            #expect(tokenizer.decode(request.context + request.continuation) == text)
        }
        let nll = try #require(metrics.first { $0.name == "nll" }), ppl = try #require(metrics.first { $0.name == "perplexity" })
        #expect(abs(nll.value - M_LN2) < 1e-6)
        #expect(abs(ppl.value - 2) < 1e-5)
        #expect(nll.count == 3)
    }

    /// Mean NLL is per predicted token over all lines (not a mean of line means).
    @Test func perplexityWeightsTokensNotLines() throws {
        let path = try EvalTestFiles.temporaryFile("ppl-weights.jsonl", """
        {"tessera_task": 1, "type": "perplexity", "name": "two-lines"}
        {"text": "ab"}
        {"text": "abcde"}
        """)
        let tokenizer = ByteTokenizer()
        // Line "ab" predicts 1 token at NLL 5; "abcde" predicts 4 tokens at NLL 1 → mean (5 + 4) / 5 = 1.8.
        let model = ScriptedLanguageModel(scorer: { r in r.continuation.map { _ in r.continuation.count == 1 ? -5 : -1 } })
        let metrics = try UserTask(path: path).prepare(data: data)
            .run(models: EvalModels(languageModel: model, tokenizer: tokenizer), progress: .silent)
        #expect(abs(metrics[0].value - 1.8) < 1e-6)
        #expect(abs(metrics[1].value - exp(1.8)) < 1e-4)
    }

    @Test func longSequencesAreScoredInWindowsThatPredictEachTokenOnce() {
        let tokens = Array(0..<23)
        let requests = PerplexityScoring.requests(tokens: tokens, maxLength: 8)
        var predicted: [Int] = []
        for r in requests {
            #expect(r.context.count + r.continuation.count <= 8)
            #expect(!r.context.isEmpty)
            // The context is exactly the tokens just before the continuation.
            let start = r.continuation.first!
            #expect(r.context == Array(tokens[(start - r.context.count)..<start]))
            predicted += r.continuation
        }
        #expect(predicted == Array(1..<23))
        #expect(PerplexityScoring.requests(tokens: [5], maxLength: 8).isEmpty)
    }

    @Test func selfInstructPromptsUseChatMLAndScoreRougeL() throws {
        let rows = try EvalTestFiles.jsonLines(EvalTestFiles.data + "/selfinstruct_user_oriented_instructions.jsonl")
        let instances = rows.flatMap { $0["instances"] as! [[String: Any]] }
        let examples = try SelfInstructTask.examples(fromFile: EvalTestFiles.data + "/selfinstruct_user_oriented_instructions.jsonl", limit: nil)
        #expect(examples.count == instances.count)
        #expect(examples[0].references == [instances[0]["output"] as! String])
        let first = rows[0], firstInput = (first["instances"] as! [[String: Any]])[0]["input"] as! String
        #expect(examples[0].prompt == (first["instruction"] as! String) + "\n\n" + firstInput)

        // A model that answers with the human output scores Rouge-L 1; the prompt is ChatML.
        let tokenizer = ByteTokenizer()
        let outputs = Dictionary(uniqueKeysWithValues: examples.prefix(3).map {
            (ChatPromptFormat().prompt(user: $0.prompt), $0.references[0])
        })
        let model = ScriptedLanguageModel(generator: { prompt in
            Array((outputs[tokenizer.decode(prompt)] ?? "").utf8).map(Int.init) + [256]
        })
        let metrics = try SelfInstructTask(limit: 3).prepare(data: data)
            .run(models: EvalModels(languageModel: model, tokenizer: tokenizer), progress: .silent)
        #expect(model.generateCalls.count == 3)
        let prompt = tokenizer.decode(model.generateCalls[0])
        #expect(prompt.hasPrefix("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"))
        #expect(prompt.hasSuffix("<|im_end|>\n<|im_start|>assistant\n"))
        #expect(metrics == [EvalMetric("rougeL", value: 1, stderr: 0, count: 3)])
    }

    @Test func languageModelTaskWithoutModelIsAClearError() throws {
        let prepared = try ARCTask(.challenge, limit: 2).prepare(data: data)
        #expect(prepared.requirement == .causalLanguageModel)
        let e = try #require(throws: TesseraError.self) { try prepared.run(models: EvalModels(), progress: .silent) }
        #expect(e.message.contains("causal language model"))
    }
}
