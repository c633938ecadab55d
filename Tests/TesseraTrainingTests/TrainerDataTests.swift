import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraTestSupport
import TesseraTraining

/// Task files rendered as training sequences with SmolLM2's real tokenizer: the text is what `tessera eval` reads,
/// the counted targets are the completion / correct continuation / label / every next token, long examples are cut
/// as documented, and hostile files fail with one line naming the file and line.
@Suite struct TrainerDataTests {
    static let tokenizer: BPETokenizer? = try? BPETokenizer(
        tokenizerJSONPath: PackagePaths.fixtures + "/reference/engine/smollm2_tokenizer/tokenizer.json")

    static func task(_ sandbox: Sandbox, _ name: String, _ lines: [String]) throws -> String {
        let path = sandbox.path(name)
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The counted targets' tokens, and the tokens before the first counted position (the context read).
    static func split(_ s: TrainingSequence) -> (context: [Int], counted: [Int]) {
        let first = s.targets.firstIndex { $0 != TrainingSequence.ignored } ?? s.tokens.count
        return (s.tokens[...first].map(Int.init), s.targets.filter { $0 != TrainingSequence.ignored }.map(Int.init))
    }

    @Test func generationCountsTheReferenceAndTheEndOfTurn() throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        let path = try Self.task(sandbox, "gen.jsonl", [
            #"{"tessera_task": 1, "type": "generation", "name": "g"}"#,
            #"{"prompt": "Name the capital of France.", "reference": "Paris is the capital."}"#,
        ])
        let rendered = try TrainingData.render(try UserTask(path: path), tokenizer: tok, maxLength: 512)
        let s = try #require(rendered.sequences.first)
        let prompt = try tok.encode(ChatPromptFormat().prompt(user: "Name the capital of France."))
        let answer = try tok.encode("Paris is the capital.")
        let end = try tok.encode("<|im_end|>")
        #expect(end.count == 1 && tok.stopTokenIDs.contains(end[0]))
        #expect(s.tokens.map(Int.init) == prompt + answer + end)
        #expect(s.targets.count == s.tokens.count)
        // Position t predicts token t + 1: the last prompt position predicts the answer's first token.
        #expect(Array(s.targets[..<(prompt.count - 1)]).allSatisfy { $0 == TrainingSequence.ignored })
        #expect(Self.split(s).counted == answer + end)
        #expect(s.targets.last == TrainingSequence.ignored)
    }

    @Test func multipleChoiceCountsTheCorrectContinuationAsEvalScoresIt() throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        let path = try Self.task(sandbox, "mc.jsonl", [
            #"{"tessera_task": 1, "type": "multiple_choice", "name": "mc"}"#,
            #"{"context": "Question: What is frozen water?\nAnswer:", "choices": ["steam", "ice"], "answer": 1}"#,
        ])
        let task = try UserTask(path: path)
        let s = try #require(try TrainingData.render(task, tokenizer: tok, maxLength: 512).sequences.first)
        guard case let .multipleChoice(questions) = task.examples else { Issue.record("not multiple choice"); return }
        let request = try MultipleChoiceScoring.requests(for: questions[0], tokenizer: tok)[1]
        #expect(s.tokens.map(Int.init) == request.context + request.continuation)
        #expect(Self.split(s).counted == request.continuation)
        #expect(tok.decode(request.continuation) == " ice")
    }

    @Test func classificationCountsTheLabelWord() throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        try Data([0]).write(to: URL(fileURLWithPath: sandbox.path("head.safetensors")))
        let path = try Self.task(sandbox, "cls.jsonl", [
            #"{"tessera_task": 1, "type": "classification", "name": "c", "labels": ["negative", "positive"], "head": "head.safetensors"}"#,
            #"{"text": "A wonderful film.", "label": "positive"}"#,
            #"{"text": "Dull and long.", "label": 0}"#,
        ])
        let rendered = try TrainingData.render(try UserTask(path: path), tokenizer: tok, maxLength: 512)
        #expect(rendered.sequences.count == 2)
        #expect(tok.decode(Self.split(rendered.sequences[0]).counted) == " positive")
        #expect(tok.decode(Self.split(rendered.sequences[1]).counted) == " negative")
        #expect(rendered.sequences[0].tokens.map(Int.init) == (try tok.encode("A wonderful film.")) + (try tok.encode(" positive")))
    }

    @Test func perplexityWindowsPredictEveryTokenOnce() throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        let text = "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure in Paris."
        let path = try Self.task(sandbox, "ppl.jsonl", [#"{"tessera_task": 1, "type": "perplexity", "name": "p"}"#, "{\"text\": \"\(text)\"}"])
        let ids = try tok.encode(text)
        #expect(ids.count > 16)
        let rendered = try TrainingData.render(try UserTask(path: path), tokenizer: tok, maxLength: 8)
        #expect(rendered.truncated == 1)
        #expect(rendered.sequences.allSatisfy { $0.tokens.count <= 8 })
        let predicted = rendered.sequences.flatMap { $0.targets.filter { $0 != TrainingSequence.ignored } }.map(Int.init)
        #expect(predicted == Array(ids.dropFirst()))
    }

    @Test func longExamplesKeepTheEndOfTheContext() throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        let context = String(repeating: "word ", count: 40) + "Answer:"
        let path = try Self.task(sandbox, "mc.jsonl", [
            #"{"tessera_task": 1, "type": "multiple_choice", "name": "mc"}"#,
            "{\"context\": \"\(context)\", \"choices\": [\"no\", \"yes indeed\"], \"answer\": 1}",
            #"{"context": "Short:", "choices": ["a b c d e f g h i j k l m n o p", "x"], "answer": 0}"#,
        ])
        let rendered = try TrainingData.render(try UserTask(path: path), tokenizer: tok, maxLength: 10)
        #expect(rendered.truncated == 2)
        let first = rendered.sequences[0]
        #expect(first.tokens.count == 10)
        let continuation = try tok.encode(" yes indeed")
        let contextIDs = try tok.encode(context)
        #expect(first.tokens.map(Int.init) == Array(contextIDs.suffix(10 - continuation.count)) + continuation)
        // A continuation longer than the window keeps its start after one context token.
        let second = rendered.sequences[1]
        #expect(second.tokens.count == 10 && second.countedTargets == 9)
        #expect(Self.split(second).counted == Array(try tok.encode(" a b c d e f g h i j k l m n o p").prefix(9)))
    }

    @Test func severalFilesAreMixedInOrder() throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        let a = try Self.task(sandbox, "a.jsonl", [#"{"tessera_task": 1, "type": "perplexity", "name": "a"}"#, #"{"text": "one two three"}"#])
        let b = try Self.task(sandbox, "b.jsonl", [#"{"tessera_task": 1, "type": "perplexity", "name": "b"}"#, #"{"text": "four five"}"#,
                                                   #"{"text": "x"}"#])
        let set = try TrainingDataSet.load([a, b], tokenizer: tok, maxLength: 64)
        #expect(set.files.map(\.taskName) == ["a", "b"])
        #expect(set.sequences.count == 2)
        #expect(set.files[1].dropped == 1)  // "x" is one token: nothing to predict
    }

    @Test(arguments: [
        ("empty", [String](), "empty"),
        ("missing", [#"{"tessera_task": 1, "type": "generation", "name": "g"}"#, #"{"prompt": "Hi"}"#], ":2:"),
        ("not-json", [#"{"tessera_task": 1, "type": "perplexity", "name": "p"}"#, #"{"text": "fine"}"#, "this is not JSON"], ":3:"),
        ("no-header", [#"{"text": "fine"}"#], ":1:"),
        ("bad-answer", [#"{"tessera_task": 1, "type": "multiple_choice", "name": "m"}"#, #"{"context": "c", "choices": ["a", "b"], "answer": 7}"#], ":2:"),
    ])
    func hostileTaskFilesFailInOneLine(_ name: String, _ lines: [String], _ mentions: String) throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        let path = try Self.task(sandbox, name + ".jsonl", lines)
        let error = #expect(throws: TesseraError.self) { _ = try TrainingDataSet.load([path], tokenizer: tok, maxLength: 64) }
        #expect(error?.description.contains("\n") == false)
        #expect(error?.message.contains(path) == true)
        #expect(error?.message.contains(mentions) == true, "\(error?.message ?? "")")
    }

    @Test func aFileWithNothingToPredictIsRefused() throws {
        let tok = try #require(Self.tokenizer)
        let sandbox = try Sandbox()
        let path = try Self.task(sandbox, "one.jsonl", [#"{"tessera_task": 1, "type": "perplexity", "name": "p"}"#, #"{"text": "x"}"#])
        let error = #expect(throws: TesseraError.self) { _ = try TrainingDataSet.load([path], tokenizer: tok, maxLength: 64) }
        #expect(error?.message.contains("token to predict") == true)
        #expect(throws: TesseraError.self) { _ = try TrainingDataSet.load([path], tokenizer: tok, maxLength: 1) }
    }
}
