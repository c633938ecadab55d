import Foundation
import Testing
import TesseraTestSupport

/// `tessera train lora` as a process: killed with SIGKILL in the middle of a run, the same command resumes from the
/// checkpoint and ends with the bytes of an uninterrupted run.
@Suite struct TrainEndToEndTests {
    @Test func aKilledRunResumesToTheSameBytes() throws {
        let s = try Sandbox()
        let model = try s.tinyLlamaFolder()
        let rows = [#"{"tessera_task": 1, "type": "perplexity", "name": "lines"}"#] + (0..<24).map { i in
            #"{"text": "line \#(i): the quick brown fox jumps over the lazy dog \#(i * 7 % 13) times"}"#
        }
        try rows.joined(separator: "\n").write(toFile: s.path("task.jsonl"), atomically: true, encoding: .utf8)
        let command = "\"$T\" train lora \(model) --task task.jsonl --steps 400 --batch-size 4 --micro-batch-size 2 --dropout 0.1 "
            + "--lr 1e-3 --warmup 0.05 --seed 5 --checkpoint-every 5 --threads 1"
        try s.run(command + " -o full")

        // Started in the background, killed once its first checkpoints are on disk.
        let killed = try s.run(command + " -o killed 2>/dev/null & pid=$!; n=0; "
            + "while [ ! -f killed/.checkpoint/state.safetensors ] && kill -0 $pid 2>/dev/null && [ $n -lt 6000 ]; do sleep 0.01; n=$((n+1)); done; "
            + "sleep 0.2; kill -9 $pid; wait $pid; echo status=$?", check: false, expectKilled: true)
        #expect(killed.stdout.contains("status=137"), "the run was not killed: \(killed.stdout)")
        #expect(!FileManager.default.fileExists(atPath: s.path("killed/training.json")), "the run finished before it was killed")
        #expect(FileManager.default.fileExists(atPath: s.path("killed/.checkpoint/state.safetensors")))

        let resumed = try s.run(command + " -o killed --json").stdout
        let summary = try JSONSerialization.jsonObject(with: Data(resumed.utf8)) as? [String: Any]
        let from = summary?["resumed_from_step"] as? Int
        #expect(from.map { $0 > 0 && $0 < 400 && $0 % 5 == 0 } == true, "\(resumed)")
        for file in ["adapter_model.safetensors", "adapter_config.json"] {
            #expect(try s.bytes("killed/" + file) == (try s.bytes("full/" + file)), "\(file) differs after resuming")
        }
        let full = try JSONSerialization.jsonObject(with: try s.bytes("full/training.json")) as? [String: Any]
        let again = try JSONSerialization.jsonObject(with: try s.bytes("killed/training.json")) as? [String: Any]
        #expect((full?["losses"] as? [Double]) == (again?["losses"] as? [Double]))
        #expect(!FileManager.default.fileExists(atPath: s.path("killed/.checkpoint")))
    }
}
