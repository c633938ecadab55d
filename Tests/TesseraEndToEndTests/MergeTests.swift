import Foundation
import Testing
import TesseraTestSupport

/// Reads a safetensors file's float32 tensors with Foundation's JSON parser (independent of Tessera's reader).
func readF32Tensors(_ path: String) throws -> [String: [Float]] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    let n = data.prefix(8).enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
    let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as! [String: Any]
    var out: [String: [Float]] = [:]
    for (name, v) in header where name != "__metadata__" {
        let info = v as! [String: Any]
        guard info["dtype"] as? String == "F32" else { continue }
        let off = info["data_offsets"] as! [Int]
        let bytes = data.subdata(in: (8 + n + off[0])..<(8 + n + off[1]))
        out[name] = bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
    return out
}

@Suite struct GitMergeTests {
    /// main: base model; branch a changes `aLayers`, branch b changes `bLayers` (different seeds).
    func branches(_ s: Sandbox, aLayers: Set<Int>, bLayers: Set<Int>, config: String? = nil) throws -> String {
        let repo = try s.makeRepository()
        if let config {
            try s.run("mkdir -p .tessera", in: repo)
            try config.write(toFile: s.path("\(repo)/.tessera/merge.yml"), atomically: true, encoding: .utf8)
            try s.run("git add .tessera && git commit -qm config", in: repo)
        }
        try smallModel(layers: 4).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        try s.run("git switch -q -c a", in: repo)
        try smallModel(layers: 4, seedOffset: 0, changed: aLayers).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git commit -qam a", in: repo)
        try s.run("git switch -q -c b main", in: repo)
        var bModel = smallModel(layers: 4, changed: [])
        for i in bLayers { bModel.entries[i] = smallModel(layers: 4, seedOffset: 5000, changed: [i]).entries[i] }
        try bModel.write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git commit -qam b", in: repo)
        try s.run("git switch -q a", in: repo)
        return repo
    }

    /// A revision's file as git would check it out (through the smudge filter), read independently.
    func tensors(_ s: Sandbox, _ repo: String, _ rev: String) throws -> [String: [Float]] {
        try s.run("git cat-file --filters \(rev):model.safetensors > ../scratch.safetensors", in: repo)
        return try readF32Tensors(s.path("scratch.safetensors"))
    }

    @Test func differentTensorsMergeWithNoConflictAndNoPrompt() throws {
        let s = try Sandbox()
        let repo = try branches(s, aLayers: [0], bLayers: [2])
        let r = try s.run("git merge --no-edit b </dev/null", in: repo)
        #expect(!r.stdout.contains("CONFLICT"))
        let merged = try readF32Tensors(s.path("\(repo)/model.safetensors"))
        let a = try tensors(s, repo, "a"), b = try tensors(s, repo, "b")
        let ours = try tensors(s, repo, "HEAD^1")
        #expect(merged["layers.0.weight"] == ours["layers.0.weight"])
        #expect(merged["layers.2.weight"] == b["layers.2.weight"])
        #expect(merged["layers.1.weight"] == a["layers.1.weight"])
        #expect(try s.run("git status --porcelain", in: repo).stdout.isEmpty)
    }

    @Test func bothSidesChangedAndConfiguredToAverageGivesExactlyHalfAndHalf() throws {
        let s = try Sandbox()
        let config = "rules:\n  - path: \"*.safetensors\"\n    tensors: \"layers.*\"\n    method: linear\n    weights: [0.5, 0.5]\n"
        let repo = try branches(s, aLayers: [1], bLayers: [1], config: config)
        let ours = try tensors(s, repo, "a"), theirs = try tensors(s, repo, "b")
        try s.run("git merge --no-edit b </dev/null", in: repo)
        let merged = try readF32Tensors(s.path("\(repo)/model.safetensors"))
        let expected = zip(ours["layers.1.weight"]!, theirs["layers.1.weight"]!).map { 0.5 * $0 + 0.5 * $1 }
        #expect(merged["layers.1.weight"] == expected)
        #expect(merged["layers.0.weight"] == ours["layers.0.weight"])
        // Provenance of the merged checkpoint is visible.
        let ls = try s.run("\"$T\" ls HEAD:model.safetensors", in: repo).stdout
        #expect(ls.contains("tessera.merge.method: linear") && ls.contains("layers.1.weight"))
    }

    @Test func takeOursAndTheirsGiveExactlyOneSide() throws {
        for side in ["ours", "theirs"] {
            let s = try Sandbox()
            let repo = try branches(s, aLayers: [1, 3], bLayers: [1, 3])
            let expected = try tensors(s, repo, side == "ours" ? "a" : "b")
            // One merge overrides the (absent) configuration from the command line.
            try s.run("git -c tessera.merge.method=\(side) merge --no-edit b </dev/null", in: repo)
            let merged = try readF32Tensors(s.path("\(repo)/model.safetensors"))
            #expect(merged == expected, "take \(side)")
        }
    }

    @Test func tiesGitMergeEqualsOfflineMergeOfTheSameRevisions() throws {
        let s = try Sandbox()
        let config = "rules:\n  - method: ties\n    parameters: {density: 0.5}\n"
        let repo = try branches(s, aLayers: [0, 1, 2, 3], bLayers: [0, 1, 2, 3], config: config)
        let base = try s.run("git merge-base a b", in: repo).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try s.run("\"$T\" merge --method ties --base \(base):model.safetensors a:model.safetensors b:model.safetensors --param density=0.5 -o ../offline.safetensors", in: repo)
        let ours = try tensors(s, repo, "a")
        try s.run("git merge --no-edit b </dev/null", in: repo)
        let merged = try readF32Tensors(s.path("\(repo)/model.safetensors"))
        let offline = try readF32Tensors(s.path("offline.safetensors"))
        #expect(merged == offline)
        #expect(merged["layers.0.weight"] != ours["layers.0.weight"])
        // The merge commit pushes and clones.
        try s.run("git init -q --bare remote.git")
        try s.run("git push -q \"file://$PWD/../remote.git\" a:refs/heads/main", in: repo)
        try s.run("git -c filter.tessera.process=\"$T filter-process\" -c filter.tessera.required=true clone -q \"file://$PWD/remote.git\" clone")
        #expect(try s.bytes("clone/model.safetensors") == s.bytes("\(repo)/model.safetensors"))
    }

    @Test func conflictLeavesGitsConflictedStateAndResolveCompletesIt() throws {
        let s = try Sandbox()
        let repo = try branches(s, aLayers: [2], bLayers: [2])
        let r = try s.run("git merge --no-edit b </dev/null", in: repo, check: false)
        #expect(r.status != 0)
        #expect(r.stdout.contains("CONFLICT") || r.stderr.contains("CONFLICT"))
        #expect((r.stdout + r.stderr).contains("tessera resolve model.safetensors"))
        #expect(try s.run("git ls-files -u model.safetensors", in: repo).stdout.split(separator: "\n").count == 3)
        for suffix in ["base", "ours", "theirs"] {
            #expect(FileManager.default.fileExists(atPath: s.path("\(repo)/model.safetensors.\(suffix)")))
        }
        let report = try String(contentsOfFile: s.path("\(repo)/model.safetensors.conflict"), encoding: .utf8)
        #expect(report.contains("layers.2.weight") && !report.contains("layers.1.weight"))
        // The versions left behind are the real checkpoints.
        #expect(try readF32Tensors(s.path("\(repo)/model.safetensors.theirs")) == tensors(s, repo, "b"))
        let ours = try tensors(s, repo, "a"), theirs = try tensors(s, repo, "b")
        try s.run("\"$T\" resolve model.safetensors --method linear --weights 0.5,0.5", in: repo)
        #expect(try s.run("git ls-files -u", in: repo).stdout.isEmpty)
        try s.run("git commit -qm merged", in: repo)
        let merged = try readF32Tensors(s.path("\(repo)/model.safetensors"))
        #expect(merged["layers.2.weight"] == zip(ours["layers.2.weight"]!, theirs["layers.2.weight"]!).map { 0.5 * $0 + 0.5 * $1 })
        #expect(!FileManager.default.fileExists(atPath: s.path("\(repo)/model.safetensors.ours")))
        #expect(try s.run("git status --porcelain", in: repo).stdout.isEmpty)
    }

    @Test func rebaseAndCherryPickUseTheDriverToo() throws {
        let s = try Sandbox()
        let repo = try branches(s, aLayers: [0], bLayers: [3])
        try s.run("git rebase -q b", in: repo)
        let rebased = try readF32Tensors(s.path("\(repo)/model.safetensors"))
        #expect(rebased["layers.3.weight"] == (try tensors(s, repo, "b"))["layers.3.weight"])
        #expect(rebased["layers.0.weight"] != (try tensors(s, repo, "main"))["layers.0.weight"])
    }
}
