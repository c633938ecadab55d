import Foundation
import Testing
import TesseraTestSupport

/// Issue 9: history that reads as tensors, not hashes, and the command line's corners.
@Suite struct HistoryAndCLITests {
    /// v1, then layer 1 changed (v2), on main; a branch changing layer 3 merged in with a merge commit.
    func history(_ s: Sandbox) throws -> String {
        let repo = try s.makeRepository()
        try smallModel(layers: 4).write(to: s.path("repo/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        try s.run("git switch -q -c side", in: repo)
        try smallModel(layers: 4, changed: [3]).write(to: s.path("repo/model.safetensors"))
        try s.run("git commit -qam 'side: layer 3' && git switch -q main", in: repo)
        try smallModel(layers: 4, changed: [1]).write(to: s.path("repo/model.safetensors"))
        try s.run("git commit -qam 'main: layer 1' && git merge -q --no-edit side", in: repo)
        return repo
    }

    @Test func gitLogAndShowPrintTensorsNotManifestLines() throws {
        let s = try Sandbox()
        let repo = try history(s)
        let log = try s.run("git log -p -1 HEAD^1 -- model.safetensors", in: repo).stdout
        #expect(log.contains("-tensor layers.1.weight F32 [64,64] sha256:") && log.contains("+tensor layers.1.weight F32 [64,64] sha256:"), "\(log)")
        #expect(!log.contains("bg4+zstd") && !log.contains("-tensor layers.2") && !log.contains("+tensor layers.2"), "\(log)")
        // The merge commit: a combined diff, still in tensors (layer 3 from the side branch).
        let show = try s.run("git show HEAD -- model.safetensors", in: repo).stdout
        #expect(show.contains("tensor layers.3.weight F32 [64,64] sha256:"), "\(show)")
        #expect(!show.contains("bg4+zstd"), "\(show)")
    }

    @Test func aGrowingHeaderDoesNotTouchTheTensorsLines() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        var model = smallModel(layers: 3)
        try model.write(to: s.path("repo/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        // Longer metadata: the header grows, every tensor's offset moves, no tensor changes.
        model.metadata = ["format": "pt", "note": String(repeating: "x", count: 300)]
        try model.write(to: s.path("repo/model.safetensors"))
        try s.run("git commit -qam 'longer metadata'", in: repo)
        // Line by line, the raw manifest (no textconv) attributes every tensor line to v1.
        let blame = try s.run("git blame --no-textconv -s model.safetensors | grep ' tensor '", in: repo).stdout
        let v1 = try s.run("git rev-parse --short=8 HEAD~1", in: repo).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let lines = blame.split(separator: "\n")
        #expect(lines.count == 4 && lines.allSatisfy { $0.hasPrefix(v1) }, "\(blame)")
        let stat = try s.run("git diff --numstat --no-textconv HEAD~1 HEAD -- model.safetensors", in: repo).stdout
        #expect(stat.hasPrefix("2\t2\t"), "size and header lines only: \(stat)")
    }

    @Test func aRenamedTensorIsARename() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        var model = smallModel(layers: 2)
        try model.write(to: s.path("repo/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        model.entries[0].name = "blocks.0.weight"
        try model.write(to: s.path("repo/model.safetensors"))
        let diff = try s.run("git diff", in: repo).stdout
        #expect(diff.contains("renamed   layers.0.weight -> blocks.0.weight"), "\(diff)")
        #expect(diff.contains("0 changed, 0 added, 0 removed, 1 renamed, 2 unchanged"), "\(diff)")
        try s.run("git commit -qam rename", in: repo)
        let log = try s.run("\"$T\" log model.safetensors", in: repo).stdout
        #expect(log.contains("1 renamed: layers.0.weight->blocks.0.weight"), "\(log)")
    }

    @Test func commandLineCorners() throws {
        let s = try Sandbox()
        let repo = try history(s)
        let noTensor = try s.run("\"$T\" log model.safetensors --tensor no.such", in: repo, check: false)
        #expect(noTensor.status == 1 && noTensor.stderr.contains("no tensor named 'no.such'"), "\(noTensor.stderr)")
        // Usage errors exit 2, as docs/commands.md says.
        let usage = try s.run("\"$T\" merge a.safetensors -o out.safetensors", in: repo, check: false)
        #expect(usage.status == 2 && usage.stderr.contains("--method is required"), "\(usage.status) \(usage.stderr)")
        #expect(try s.run("\"$T\" no-such-command", in: repo, check: false).status == 2)
        let missing = try s.run("\"$T\" import missing.gguf -o out", in: repo, check: false)
        #expect(missing.status == 1 && missing.stderr.split(separator: "\n").count == 1 && !missing.stderr.contains("NSCocoaErrorDomain"), "\(missing.stderr)")
        // Outside any repository, a plain checkpoint can still be inspected.
        try smallModel(layers: 1).write(to: s.path("plain.safetensors"))
        #expect(try s.run("\"$T\" ls plain.safetensors").stdout.contains("layers.0.weight"))
    }

    /// Long work draws a bar with rate and ETA on a terminal, and nothing when its output is piped.
    @Test func progressOnATerminalOnly() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        // 72 MB: over the filter's threshold for a per-file bar.
        var big = TestCheckpoint()
        for i in 0..<3 { big.add("w\(i)", shape: [2048, 3072], seed: UInt64(i + 1)) }
        try big.write(to: s.path("repo/big.safetensors"))
        try smallModel(layers: 2).write(to: s.path("repo/a.safetensors"))
        try smallModel(layers: 2, seedOffset: 5).write(to: s.path("repo/b.safetensors"))
        // `script` gives the command a terminal (a pseudo-terminal), as a user's shell would.
        let add = try s.run("script -qec 'git add big.safetensors' /dev/null", in: repo).stdout
        #expect(add.contains("tessera: storing big.safetensors [") && add.contains("ETA"), "\(add)")
        let merge = try s.run("script -qec '\"$T\" merge --method linear a.safetensors b.safetensors -o m.safetensors' /dev/null", in: repo).stdout
        #expect(merge.contains("tessera: merging (linear) [") && merge.contains("ETA"), "\(merge)")
        // Piped: only the result line.
        let piped = try s.run("\"$T\" merge --method linear a.safetensors b.safetensors -o m2.safetensors", in: repo)
        #expect(!piped.stderr.contains("ETA") && !piped.stdout.contains("ETA"))
        try s.run("git commit -qm big && rm big.safetensors", in: repo)
        let checkout = try s.run("script -qec 'git checkout -- big.safetensors' /dev/null", in: repo).stdout
        #expect(checkout.contains("tessera: checking out big.safetensors ["), "\(checkout)")
    }
}
