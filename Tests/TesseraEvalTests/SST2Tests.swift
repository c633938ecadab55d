import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO

@Suite struct SST2Tests {
    /// The real all-MiniLM-L6-v2 and the reference logistic head: dev accuracy 0.7924 (reference/engine/README.md).
    @Test func miniLMWithReferenceHeadScoresGoldenAccuracy() throws {
        let task = SST2Task(headPath: EvalTestFiles.reference + "/minilm_sst2_head.safetensors")
        #expect(task.requirement == .sentenceEmbedder)
        let prepared = try task.prepare(data: EvalDataDirectory(EvalTestFiles.data))
        #expect(prepared.exampleCount == 872)
        let embedder = try SentenceEmbedder.load(directory: EvalTestFiles.miniLM)
        let metrics = try prepared.run(models: EvalModels(embedder: embedder), progress: .silent)
        let acc = try #require(metrics.first { $0.name == "acc" })
        #expect(acc.count == 872)
        #expect(abs(acc.value - 0.7924) < 5e-5, "accuracy \(acc.value) = \(acc.value * 872)/872")
        let se = try #require(acc.stderr)
        #expect(abs(se - (acc.value * (1 - acc.value) / 871).squareRoot()) < 1e-9)
    }

    @Test func missingEmbedderAndMissingHeadAreClearErrors() throws {
        let prepared = try SST2Task(limit: 4, headPath: EvalTestFiles.reference + "/minilm_sst2_head.safetensors")
            .prepare(data: EvalDataDirectory(EvalTestFiles.data))
        let e1 = try #require(throws: TesseraError.self) { try prepared.run(models: EvalModels(), progress: .silent) }
        #expect(e1.message.contains("sentence embedder"))
        // The default head location is the data directory: one holding the data but no head.
        let folder = NSTemporaryDirectory() + "tessera-sst2-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.copyItem(atPath: EvalTestFiles.data + "/sst2_dev.tsv", toPath: folder + "/sst2_dev.tsv")
        let e2 = try #require(throws: TesseraError.self) { try SST2Task().prepare(data: EvalDataDirectory(folder)) }
        #expect(e2.message.contains("minilm_sst2_head.safetensors") && e2.message.contains(folder))
    }
}
