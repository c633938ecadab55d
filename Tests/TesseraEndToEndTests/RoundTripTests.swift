import Foundation
import Testing
import TesseraTestSupport

/// End-to-end: real git, real git-lfs, real files, in temporary repositories.
@Suite struct RoundTripTests {
    @Test func commitRoundTripAndEveryHistoricalVersionByteExact() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        var versions: [[UInt8]] = []
        for v in 0..<4 {
            let bytes = smallModel(seedOffset: 0, changed: v == 0 ? [] : Set([v])).encode()
            try Data(bytes).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
            try s.run("git add model.safetensors && git commit -qm v\(v)", in: repo)
            versions.append(bytes)
            // What git stores is the manifest, not the file.
            let stored = try s.run("git cat-file -p HEAD:model.safetensors", in: repo).stdout
            #expect(stored.hasPrefix("tessera-manifest 2\n"))
        }
        for (k, expected) in versions.enumerated() {
            try s.run("git checkout -q HEAD~\(versions.count - 1 - k) -- model.safetensors", in: repo)
            #expect(Array(try s.bytes("\(repo)/model.safetensors")) == expected, "version \(k) differs")
        }
        // A fresh checkout of every commit, in a new worktree directory, is byte-exact too.
        for (k, expected) in versions.enumerated() {
            try s.run("git worktree add -q --detach ../fresh\(k) HEAD~\(versions.count - 1 - k)", in: repo)
            #expect(Array(try s.bytes("fresh\(k)/model.safetensors")) == expected, "worktree of version \(k) differs")
        }
        try s.run("git checkout -q main -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == versions.last!)
        try s.run("\"$T\" fsck", in: repo)
    }

    @Test func twoChangedTensorsGrowTheStoreByOnlyThoseTensors() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try smallModel(layers: 8).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        let before = s.objectCount(repo)
        try smallModel(layers: 8, changed: [2, 5]).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm two", in: repo)
        #expect(s.objectCount(repo) == before + 2)
        // The two new objects are exactly the two changed tensors' objects.
        let ls = try s.run("\"$T\" ls HEAD:model.safetensors --json", in: repo).stdout
        let lsOld = try s.run("\"$T\" ls HEAD~1:model.safetensors --json", in: repo).stdout
        let new = objectsByName(ls), old = objectsByName(lsOld)
        let differing = Set(new.keys.filter { new[$0] != old[$0] })
        #expect(differing == ["layers.2.weight", "layers.5.weight"])
    }

    @Test func gitDiffNamesExactlyTheChangedTensors() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try smallModel(layers: 5).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        var changed = smallModel(layers: 5, changed: [1, 3])
        changed.entries.removeAll { $0.name == "layers.4.weight" }
        changed.add("extra.weight", shape: [3, 5], seed: 7)
        try changed.write(to: s.path("\(repo)/model.safetensors"))
        let diff = try s.run("git diff", in: repo).stdout
        let lines = diff.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let named = Set(lines.compactMap { l -> String? in
            let f = l.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 2, ["changed", "added", "removed"].contains(String(f[0])) else { return nil }
            return "\(f[0]) \(f[1])"
        })
        #expect(named == ["changed layers.1.weight", "changed layers.3.weight", "removed layers.4.weight", "added extra.weight"])
        // The numeric summary is there: L2 norm of the difference, relative change, max |delta|.
        let l1 = try #require(lines.first { $0.hasPrefix("changed") && $0.contains("layers.1.weight") })
        #expect(l1.contains("F32 [64,64]") && l1.contains("L2(delta)=") && l1.contains("rel=") && l1.contains("max|delta|="))
        #expect(diff.contains("2 changed, 1 added, 1 removed, 3 unchanged"))
        // Also after commit: git log -p / git diff between commits.
        try s.run("git commit -qam change", in: repo)
        let logp = try s.run("git diff HEAD~1 HEAD", in: repo).stdout
        #expect(logp.contains("changed   layers.3.weight"))
    }

    @Test func statusAndCheckoutBranchStoreNothing() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try smallModel(layers: 6).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        let objects = s.objectCount(repo)
        let tmpBefore = try FileManager.default.contentsOfDirectory(atPath: s.path("\(repo)/.git/tessera/tmp")).count
        // Make the index entry racily clean, so that git must re-check the file through the filter.
        try s.run("touch model.safetensors && git status --short && git checkout -q -b feature && git status --porcelain", in: repo)
        #expect(s.objectCount(repo) == objects)
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.path("\(repo)/.git/tessera/tmp")).count == tmpBefore)
        let st = try s.run("git status --porcelain", in: repo).stdout
        #expect(st.isEmpty, "unexpected status: \(st)")
    }

    @Test func stashResetSwitchAndWorktreeRoundTrip() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        let base = smallModel(layers: 4).encode()
        let edited = smallModel(layers: 4, changed: [0]).encode()
        let other = smallModel(layers: 4, changed: [3]).encode()
        try Data(base).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        func current() throws -> [UInt8] { Array(try s.bytes("\(repo)/model.safetensors")) }

        // stash / stash pop
        try Data(edited).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git stash -q", in: repo)
        #expect(try current() == base)
        try s.run("git stash pop -q", in: repo)
        #expect(try current() == edited)

        // reset --hard
        try s.run("git reset -q --hard", in: repo)
        #expect(try current() == base)

        // switch between branches
        try s.run("git switch -q -c other", in: repo)
        try Data(other).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git commit -qam other && git switch -q main", in: repo)
        #expect(try current() == base)
        try s.run("git switch -q other", in: repo)
        #expect(try current() == other)

        // worktree add shares the store and checks out byte-exact
        try s.run("git worktree add -q ../wt main", in: repo)
        #expect(Array(try s.bytes("wt/model.safetensors")) == base)
        try Data(edited).write(to: URL(fileURLWithPath: s.path("wt/model.safetensors")))
        try s.run("git commit -qam 'from worktree'", in: "wt")
        try s.run("git switch -q --detach main", in: repo)
        #expect(try current() == edited)
        #expect(!FileManager.default.fileExists(atPath: s.path("wt/.git/tessera")))
    }

    @Test func everyDtypeShardedSetsAndNonCheckpointFiles() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try s.run("\"$T\" track '*.bin' >/dev/null", in: repo)
        var c = TestCheckpoint()
        for (k, d) in ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64"].enumerated() {
            c.add("t.\(d)", shape: [3, 5], seed: UInt64(k + 1), dtype: d)
        }
        c.add("empty", shape: [0, 4], seed: 1)
        c.add("scalar", shape: [], seed: 2)
        let all = c.encode(gaps: [2: [0, 0, 0, 0, 0, 0, 0, 0]], trailing: [1, 2, 3])
        try Data(all).write(to: URL(fileURLWithPath: s.path("\(repo)/dtypes.safetensors")))
        // A sharded set: two shards and the index (the index stays a normal git file).
        for shard in 1...2 {
            var sh = TestCheckpoint()
            sh.add("shard\(shard).w", shape: [32, 16], seed: UInt64(shard))
            try sh.write(to: s.path("\(repo)/model-0000\(shard)-of-00002.safetensors"))
        }
        try #"{"metadata":{"total_size":4096},"weight_map":{"shard1.w":"model-00001-of-00002.safetensors","shard2.w":"model-00002-of-00002.safetensors"}}"#
            .write(toFile: s.path("\(repo)/model.safetensors.index.json"), atomically: true, encoding: .utf8)
        // Not a checkpoint, but matches a tracked pattern: versioned as one object, no error.
        let opaque = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try Data(opaque).write(to: URL(fileURLWithPath: s.path("\(repo)/optimizer.bin")))
        try Data("tiny".utf8).write(to: URL(fileURLWithPath: s.path("\(repo)/tiny.bin")))
        try s.run("git add -A && git commit -qm all", in: repo)
        let ls = try s.run("\"$T\" ls HEAD:optimizer.bin", in: repo).stdout
        #expect(ls.contains("not a recognised checkpoint, stored whole"))
        let dtypes = try s.run("\"$T\" ls HEAD:dtypes.safetensors", in: repo).stdout
        #expect(dtypes.contains("t.BF16") && dtypes.contains("F8_E4M3") && dtypes.contains("bg2+zstd"))
        try s.run("rm -f *.safetensors *.bin && git checkout -q -- .", in: repo)
        #expect(Array(try s.bytes("\(repo)/dtypes.safetensors")) == all)
        #expect(Array(try s.bytes("\(repo)/optimizer.bin")) == opaque)
        #expect(String(decoding: try s.bytes("\(repo)/tiny.bin"), as: UTF8.self) == "tiny")
        let shard2 = try s.run("git cat-file -p HEAD:model-00002-of-00002.safetensors", in: repo).stdout
        #expect(shard2.hasPrefix("tessera-manifest 2"))
    }

    @Test func independentReaderAgreesWithCheckout() throws {
        // Python's own parser (numpy, no Tessera code) reads the checked-out file and the original identically.
        let s = try Sandbox()
        let repo = try s.makeRepository()
        let original = smallModel(layers: 3).encode()
        try Data(original).write(to: URL(fileURLWithPath: s.path("original.safetensors")))
        try s.run("cp ../original.safetensors model.safetensors && git add model.safetensors && git commit -qm m && rm model.safetensors && git checkout -q -- model.safetensors", in: repo)
        let script = """
        import json, struct, sys, hashlib
        def read(p):
            b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8+n]); h.pop('__metadata__', None)
            return {k: hashlib.sha256(b[8+n+v['data_offsets'][0]:8+n+v['data_offsets'][1]]).hexdigest() + str(v['shape']) for k, v in h.items()}
        a, b = read(sys.argv[1]), read(sys.argv[2])
        print('same' if a == b and len(a) == 4 else 'different')
        """
        try script.write(toFile: s.path("reader.py"), atomically: true, encoding: .utf8)
        let out = try s.run("python3 reader.py original.safetensors repo/model.safetensors").stdout
        #expect(out.trimmingCharacters(in: .whitespacesAndNewlines) == "same")
    }
}

func objectsByName(_ json: String) -> [String: String] {
    guard let data = json.data(using: .utf8),
          let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let tensors = obj["tensors"] as? [[String: Any]] else { return [:] }
    var out: [String: String] = [:]
    for t in tensors { if let n = t["name"] as? String, let o = t["object"] as? String { out[n] = o } }
    return out
}
