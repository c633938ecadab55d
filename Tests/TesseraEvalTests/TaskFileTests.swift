import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO

/// User task files (docs/task-format.md): valid files of every type, and malformed ones rejected with the line named,
/// before any model computation.
@Suite struct TaskFileTests {
    let data = EvalDataDirectory(EvalTestFiles.data)

    private func error(_ name: String, _ contents: String) throws -> TesseraError {
        let path = try EvalTestFiles.temporaryFile(name, contents)
        return try #require(throws: TesseraError.self) { try UserTask(path: path) }
    }

    @Test func validFilesOfEveryType() throws {
        let mc = try UserTask(path: try EvalTestFiles.temporaryFile("mc.jsonl", """
        {"tessera_task": 1, "type": "multiple_choice", "name": "capitals", "description": "toy"}
        {"id": "q1", "context": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0}
        {"context": "The capital of Italy is", "choices": ["Paris", "Rome", "Oslo"], "answer": 1}

        """))
        #expect(mc.name == "capitals" && mc.kind == .multipleChoice && mc.exampleCount == 2 && mc.requirement == .causalLanguageModel)
        guard case let .multipleChoice(questions) = mc.examples else { Issue.record("wrong kind"); return }
        #expect(questions[0] == MultipleChoiceQuestion(id: "q1", context: "The capital of France is", continuations: [" Paris", " Rome"], gold: 0))
        #expect(questions[1].id == "line 3")

        let gen = try UserTask(path: try EvalTestFiles.temporaryFile("gen.jsonl", """
        {"tessera_task": 1, "type": "generation", "name": "echo", "max_new_tokens": 16, "chat": false, "stemming": true}
        {"prompt": "Say hi", "reference": "hi"}
        {"prompt": "Say yo", "references": ["yo", "hey"]}
        """), limit: 1)
        #expect(gen.name == "echo:1" && gen.exampleCount == 1 && gen.maxNewTokens == 16 && gen.template == nil)
        #expect(gen.stemming)

        let ppl = try UserTask(path: try EvalTestFiles.temporaryFile("ppl.jsonl", """
        {"tessera_task": 1, "type": "perplexity", "name": "toy-ppl"}
        {"text": "some text"}
        """))
        #expect(ppl.exampleCount == 1)

        let cls = try UserTask(path: try EvalTestFiles.temporaryFile("cls.jsonl", """
        {"tessera_task": 1, "type": "classification", "name": "sentiment", "labels": ["negative", "positive"], "head": "\(EvalTestFiles.reference)/minilm_sst2_head.safetensors"}
        {"text": "a wonderful film", "label": "positive"}
        {"text": "dull and tedious", "label": 0}
        """))
        #expect(cls.requirement == .sentenceEmbedder)
        guard case let .classification(_, labels) = cls.examples else { Issue.record("wrong kind"); return }
        #expect(labels == [1, 0])
        #expect(try cls.prepare(data: data).exampleCount == 2)
    }

    @Test func malformedFilesNameTheLine() throws {
        let empty = try error("empty.jsonl", "")
        #expect(empty.message.contains("empty"))
        let blank = try error("blank.jsonl", "\n\n")
        #expect(blank.message.contains("empty"))

        let headerOnly = try error("header.jsonl", #"{"tessera_task": 1, "type": "perplexity", "name": "x"}"# + "\n")
        #expect(headerOnly.message.contains("header.jsonl:1") && headerOnly.message.contains("no examples"))

        let noHeader = try error("nohdr.jsonl", #"{"text": "hello"}"#)
        #expect(noHeader.message.contains("nohdr.jsonl:1") && noHeader.message.contains("tessera_task"))

        let version = try error("ver.jsonl", #"{"tessera_task": 2, "type": "perplexity", "name": "x"}"#)
        #expect(version.message.contains("ver.jsonl:1") && version.message.contains("version 1"))

        let type = try error("type.jsonl", #"{"tessera_task": 1, "type": "ranking", "name": "x"}"#)
        #expect(type.message.contains("unknown type 'ranking'"))

        let badJSON = try error("json.jsonl", """
        {"tessera_task": 1, "type": "perplexity", "name": "x"}
        {"text": "fine"}
        {"text": "broken"
        """)
        #expect(badJSON.message.contains("json.jsonl:3") && badJSON.message.contains("not valid JSON"))

        let answer = try error("answer.jsonl", """
        {"tessera_task": 1, "type": "multiple_choice", "name": "x"}
        {"context": "c", "choices": ["a", "b"], "answer": 0}
        {"context": "c", "choices": ["a", "b"], "answer": 0}
        {"context": "c", "choices": ["a", "b", "c"], "answer": 3}
        """)
        #expect(answer.message.contains("answer.jsonl:4") && answer.message.contains("\"answer\" 3"))

        let noContext = try error("nocontext.jsonl", """
        {"tessera_task": 1, "type": "multiple_choice", "name": "x"}
        {"context": "", "choices": ["a", "b"], "answer": 0}
        """)
        #expect(noContext.message.contains("nocontext.jsonl:2") && noContext.message.contains("\"context\" is empty"))

        let typo = try error("typo.jsonl", """
        {"tessera_task": 1, "type": "generation", "name": "x"}
        {"prompt": "p", "refrence": "r"}
        """)
        #expect(typo.message.contains("typo.jsonl:2") && typo.message.contains("refrence"))

        let label = try error("label.jsonl", """
        {"tessera_task": 1, "type": "classification", "name": "x", "labels": ["a", "b"], "head": "h.safetensors"}
        {"text": "t", "label": "c"}
        """)
        #expect(label.message.contains("label.jsonl:2") && label.message.contains("\"c\""))

        let noLabels = try error("nolabels.jsonl", #"{"tessera_task": 1, "type": "classification", "name": "x", "head": "h.safetensors"}"#)
        #expect(noLabels.message.contains("labels"))

        let emptyText = try error("emptytext.jsonl", """
        {"tessera_task": 1, "type": "perplexity", "name": "x"}
        {"text": "   "}
        """)
        #expect(emptyText.message.contains("emptytext.jsonl:2") && emptyText.message.contains("empty"))
        #expect(emptyText.hint?.contains("task-format.md") == true)
    }

    /// A bad file among several tasks fails at preparation: the model is never asked anything.
    @Test func errorsComeBeforeAnyModelComputation() throws {
        let good = try EvalTestFiles.temporaryFile("good.jsonl", """
        {"tessera_task": 1, "type": "perplexity", "name": "good"}
        {"text": "hello world"}
        """)
        let classifier = try EvalTestFiles.temporaryFile("headless.jsonl", """
        {"tessera_task": 1, "type": "classification", "name": "headless", "labels": ["a", "b"], "head": "missing-head.safetensors"}
        {"text": "t", "label": "a"}
        """)
        let model = ScriptedLanguageModel()
        let tasks: [any EvalTask] = [try EvalTaskRegistry.task(good), try EvalTaskRegistry.task(classifier)]
        let e = try #require(throws: TesseraError.self) {
            let prepared = try EvalRunner.prepare(tasks, data: data)
            _ = try EvalRunner.run(prepared, models: EvalModels(languageModel: model, tokenizer: ByteTokenizer()), revision: "HEAD")
        }
        #expect(e.message.contains("missing-head.safetensors"))
        #expect(model.computeCalls == 0)

        let missingFile = try #require(throws: TesseraError.self) {
            _ = try EvalRunner.prepare([try EvalTaskRegistry.task(good), WikitextTask()], data: EvalDataDirectory("/nonexistent/data"))
        }
        #expect(missingFile.message.contains("/nonexistent/data/wikitext2_raw_test.txt"))
        #expect(missingFile.hint?.contains("--data-dir") == true && missingFile.hint?.contains(EvalDataDirectory.environmentVariable) == true)
        #expect(model.computeCalls == 0)
    }

    @Test func registryParsesNamesLimitsAndPaths() throws {
        #expect(try EvalTaskRegistry.task("arc-easy").name == "arc-easy")
        #expect(try EvalTaskRegistry.task("arc-challenge:50").name == "arc-challenge:50")
        #expect(try EvalTaskRegistry.task("wikitext:20").name == "wikitext:20")
        #expect(try EvalTaskRegistry.task("sst2").requirement == .sentenceEmbedder)
        #expect(try EvalTaskRegistry.task("selfinstruct:5").requirement == .causalLanguageModel)
        #expect(EvalTaskRegistry.builtIn.map(\.name) == ["wikitext", "arc-easy", "arc-challenge", "sst2", "selfinstruct"])
        let unknown = try #require(throws: TesseraError.self) { try EvalTaskRegistry.task("hellaswag") }
        #expect(unknown.message.contains("hellaswag") && unknown.hint?.contains("arc-easy") == true)
        #expect(throws: TesseraError.self) { try EvalTaskRegistry.task("arc-easy:0") }
        let path = try EvalTestFiles.temporaryFile("lim.jsonl", """
        {"tessera_task": 1, "type": "perplexity", "name": "lim"}
        {"text": "a b"}
        {"text": "c d"}
        """)
        let limited = try EvalTaskRegistry.task(path + ":1")
        #expect(limited.name == "lim:1")
        #expect(try limited.prepare(data: data).exampleCount == 1)
    }

    /// Two revisions through the runner: results keep task, metric, revision and n, and render side by side.
    @Test func runnerCollectsResultsPerRevision() throws {
        let path = try EvalTestFiles.temporaryFile("rev.jsonl", """
        {"tessera_task": 1, "type": "multiple_choice", "name": "pick"}
        {"context": "Q1", "choices": ["aa", "b"], "answer": 0}
        {"context": "Q2", "choices": ["aa", "b"], "answer": 1}
        """)
        let prepared = try EvalRunner.prepare([try EvalTaskRegistry.task(path)], data: data)
        let tokenizer = ByteTokenizer()
        // Revision A prefers the longer continuation (2 tokens × -1 = -2 vs -3), B the shorter one.
        let preferLong = ScriptedLanguageModel(scorer: { r in r.continuation.count == 3 ? [-1, -0.5, -0.5] : [-3, -0.5] })
        let preferShort = ScriptedLanguageModel(scorer: { r in r.continuation.count == 3 ? [-3, -1, -1] : [-1, -0.5] })
        let silent: (String, Int) -> ProgressReporter = { _, _ in .silent }
        let results = try EvalRunner.run(prepared, models: EvalModels(languageModel: preferLong, tokenizer: tokenizer), revision: "A", progress: silent)
            + EvalRunner.run(prepared, models: EvalModels(languageModel: preferShort, tokenizer: tokenizer), revision: "B", progress: silent)
        #expect(results.map(\.revision) == ["A", "A", "B", "B"])
        #expect(results.map(\.metric) == ["acc", "acc_norm", "acc", "acc_norm"])
        #expect(results[0].value == 0.5 && results[2].value == 0.5 && results[0].count == 2)
        let report = EvalReport(results)
        #expect(report.revisions == ["A", "B"])
        #expect(report.table().split(separator: "\n").first?.hasSuffix("B") == true)
    }
}
