import Foundation
import Testing
import TesseraTestSupport

/// Issue 12: delta chains through real git and git-lfs. A tensor fine-tuned in several commits is stored as a chain
/// of XOR deltas; a push carries the whole chain, a clone of one branch decodes it, gc keeps it and fsck names a
/// missing base.
@Suite struct DeltaChainEndToEndTests {
    /// Step `k` of a fine-tune of `model`: every float's low mantissa bits changed (sign and exponent kept, so each
    /// version is an XOR delta on the one before).
    static func fineTuned(_ model: TestCheckpoint, step k: Int) -> [UInt8] {
        var m = model
        for e in m.entries.indices {
            var bytes = m.entries[e].bytes
            var i = 0
            while i + 3 < bytes.count {
                bytes[i] ^= UInt8(truncatingIfNeeded: (k &* 37) ^ (i >> 2) | 1)
                i += 4 * (1 + (k + e) % 2)
            }
            m.entries[e].bytes = bytes
        }
        return m.encode()
    }

    static func version(_ k: Int) -> [UInt8] { k == 0 ? smallModel(layers: 3).encode() : fineTuned(smallModel(layers: 3), step: k) }

    /// The dependency ids a manifest line of `tensor` names.
    func dependencies(_ s: Sandbox, _ repo: String, _ rev: String, tensor: String) throws -> [String] {
        let manifest = try s.run("git show \(rev):model.safetensors", in: repo).stdout
        guard let line = manifest.split(separator: "\n").first(where: { $0.hasPrefix("tensor \(tensor) ") }) else { return [] }
        let encoding = line.split(separator: " ")[4]
        guard let at = encoding.firstIndex(of: "@") else { return [] }
        return encoding[encoding.index(after: at)...].split(separator: ",").map { String($0.prefix(64)) }
    }

    /// Commits versions 0...4 of the model: version 0 on main, 1...4 on branch `feature`, then main takes
    /// version 4's file (so main's history names none of versions 1...3).
    func chainRepository(_ s: Sandbox, server: LFSServer?) throws -> String {
        let repo = try s.makeRepository()
        if let server {
            try s.run("git config -f .lfsconfig lfs.url \(server.url("models")) && git add .lfsconfig && git commit -qm 'lfs server'", in: repo)
        }
        try Data(Self.version(0)).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git add model.safetensors && git commit -qm v0 && git switch -q -c feature", in: repo)
        for k in 1...4 {
            try Data(Self.version(k)).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
            try s.run("git commit -qam v\(k)", in: repo)
        }
        try s.run("git switch -q main && git checkout feature -- model.safetensors && git commit -qm 'take v4'", in: repo)
        return repo
    }

    @Test(arguments: RemoteKind.allCases) func aPushOfOneBranchCarriesTheWholeChainAndItsCloneDecodesIt(_ kind: RemoteKind) throws {
        let s = try Sandbox()
        let server = kind == .http ? try LFSServer(storage: s.path("lfs-server")) : nil
        let repo = try chainRepository(s, server: server)
        // Version 4 of each tensor is a delta four deep, and its manifest line names the whole chain.
        let chain = try dependencies(s, repo, "main", tensor: "layers.0.weight")
        #expect(chain.count == 4, "\(chain)")
        #expect(try dependencies(s, repo, "feature~1", tensor: "layers.0.weight") == Array(chain.dropFirst()))
        // Only main is pushed: versions 1...3 reach the remote only because main's manifest depends on them.
        try s.run("git init -q --bare remote.git && cd repo && git remote add origin \"file://$PWD/../remote.git\" && git push -q -u origin main")
        if kind == .file {
            for id in chain { #expect(FileManager.default.fileExists(atPath: s.path("remote.git/lfs/objects/\(id.prefix(2))/\(id.dropFirst(2).prefix(2))/\(id)"))) }
        }
        try s.run("\"$T\" install --global >/dev/null && git clone -q --single-branch -b main \"file://$PWD/remote.git\" clone")
        #expect(Array(try s.bytes("clone/model.safetensors")) == Self.version(4))
        #expect(try s.run("git branch -a", in: "clone").stdout.contains("feature") == false)
        try s.run("\"$T\" fsck", in: "clone")
        // gc keeps every base of the chain (nothing in the clone's history names versions 1...3 as values).
        try s.run("\"$T\" gc --prune now", in: "clone")
        for id in chain { #expect(FileManager.default.fileExists(atPath: s.path("clone/.git/tessera/objects/\(id.prefix(2))/\(id.dropFirst(2))"))) }
        try s.run("rm model.safetensors && git checkout -- model.safetensors", in: "clone")
        #expect(Array(try s.bytes("clone/model.safetensors")) == Self.version(4))
        // The original repository without the branch: gc keeps the chain main depends on, and the checkout is exact.
        try s.run("git branch -q -D feature && git reflog expire --expire=now --all && \"$T\" gc --prune now", in: repo)
        for id in chain { #expect(FileManager.default.fileExists(atPath: s.path("\(repo)/.git/tessera/objects/\(id.prefix(2))/\(id.dropFirst(2))"))) }
        try s.run("rm model.safetensors && git checkout -- model.safetensors && \"$T\" fsck", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == Self.version(4))
        // New commits on the clone start a new chain (version 4 is at the default maximum depth, 4) and extend it up
        // to the maximum; every version checks out byte for byte in a second clone.
        for k in 5...10 {
            try Data(Self.version(k)).write(to: URL(fileURLWithPath: s.path("clone/model.safetensors")))
            try s.run("git commit -qam v\(k)", in: "clone")
        }
        let depths = try (5...10).map { try dependencies(s, "clone", "HEAD~\(10 - $0)", tensor: "layers.0.weight").count }
        #expect(depths == [0, 1, 2, 3, 4, 0], "\(depths)")
        try s.run("git push -q origin main", in: "clone")
        try s.run("git clone -q --single-branch -b main \"file://$PWD/remote.git\" second")
        for k in [4, 8, 9, 10] {
            try s.run("git checkout -q HEAD~\(10 - k) -- model.safetensors", in: "second")
            #expect(Array(try s.bytes("second/model.safetensors")) == Self.version(k), "version \(k)")
        }
        try s.run("\"$T\" fsck", in: "second")
    }

    @Test func fsckNamesAMissingBaseWithItsTensorAndWhatToRun() throws {
        let s = try Sandbox()
        let repo = try chainRepository(s, server: nil)
        let chain = try dependencies(s, repo, "main", tensor: "layers.1.weight")
        // The base two levels down (version 2's object) disappears.
        let lost = chain[1]
        try s.run("rm .git/tessera/objects/\(lost.prefix(2))/\(lost.dropFirst(2))", in: repo)
        let r = try s.run("\"$T\" fsck", in: repo, check: false)
        #expect(r.status != 0)
        let lines = r.stdout.split(separator: "\n").filter { $0.contains(lost) }
        #expect(lines.count == 1, "\(r.stdout)")
        #expect(lines.first.map { $0.hasPrefix("missing \(lost)") && $0.contains("tensor 'layers.1.weight'") && $0.contains("tessera fetch --all") } == true,
                "\(r.stdout)")
        #expect(r.stdout.contains("1 missing, 0 corrupt"), "\(r.stdout)")
        // A checkout that needs it fails (the manifest names it, so the filter tries to fetch it first: there is no
        // remote here) and writes no wrong bytes.
        let c = try s.run("rm model.safetensors && git checkout -- model.safetensors", in: repo, check: false)
        #expect(c.status != 0 && c.stderr.contains("model.safetensors"), "\(c.stderr)")
        #expect(!FileManager.default.fileExists(atPath: s.path("\(repo)/model.safetensors")))
    }

    @Test func repackStoresTheStagedVersionWholeAndHistoryStaysReadable() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        for k in 0...4 {
            try Data(Self.version(k)).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
            try s.run("git add model.safetensors && git commit -qm v\(k)", in: repo)
        }
        #expect(try dependencies(s, repo, "HEAD", tensor: "layers.0.weight").count == 4)
        let history = try s.run("git log --format=%H -- model.safetensors", in: repo).stdout.split(separator: "\n").map(String.init)
        // A dry run changes nothing; --max-depth keeps chains up to that depth.
        #expect(try s.run("\"$T\" repack --dry-run", in: repo).stdout.contains("would store 3 object(s) whole in 1 file(s)"))
        #expect(try s.run("git status --porcelain", in: repo).stdout.isEmpty)
        let capped = try s.run("\"$T\" repack --max-depth 3 model.safetensors", in: repo).stdout
        #expect(capped.contains("stored 3 object(s) whole"), "\(capped)")
        #expect(try dependencies(s, repo, ":0", tensor: "layers.0.weight").isEmpty)
        // The file is unchanged: git sees a staged manifest change and a clean worktree.
        #expect(try s.run("git status --porcelain", in: repo).stdout == "M  model.safetensors\n")
        #expect(try s.run("git diff --cached --stat", in: repo).stdout.contains("model.safetensors"))
        try s.run("git commit -qm repack", in: repo)
        #expect(try s.run("\"$T\" repack", in: repo).stdout.contains("nothing to repack"))
        // The next fine-tune is a delta on the whole version.
        try Data(Self.version(5)).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git commit -qam v5", in: repo)
        #expect(try dependencies(s, repo, "HEAD", tensor: "layers.0.weight").count == 1)
        // gc after the repack deletes nothing history names, and every version checks out byte for byte.
        try s.run("\"$T\" gc --prune now && \"$T\" fsck", in: repo)
        for (k, commit) in history.reversed().enumerated() {
            try s.run("git checkout -q \(commit) -- model.safetensors", in: repo)
            #expect(Array(try s.bytes("\(repo)/model.safetensors")) == Self.version(k), "version \(k)")
        }
    }

    @Test func aManifestNamingOnlyDirectBasesKeepsItsChainThroughTrailersAndFsckSaysSo() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        for k in 0...3 {
            try Data(Self.version(k)).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
            try s.run("git add model.safetensors && git commit -qm v\(k)", in: repo)
        }
        let chain = try dependencies(s, repo, "HEAD", tensor: "layers.0.weight")
        #expect(chain.count == 3)
        // A manifest that names only each delta's direct base (damaged, or hand-made), alone in the history: only
        // the objects' trailers name the rest of the chain.
        try s.run(#"git show HEAD:model.safetensors | sed -E 's/(@[0-9a-f]{64}:[0-9]+)(,[0-9a-f]{64}:[0-9]+)+/\1/' > ../trimmed.txt"#, in: repo)
        try s.run("git checkout -q --orphan solo && blob=$(git hash-object -w ../trimmed.txt) && git update-index --cacheinfo 100644,$blob,model.safetensors && git commit -qm trimmed", in: repo)
        #expect(try dependencies(s, repo, "HEAD", tensor: "layers.0.weight") == [chain[0]])
        try s.run("git branch -q -D main && git reflog expire --expire=now --all && rm -rf .git/tessera/statcache && \"$T\" gc --prune now", in: repo)
        for id in chain { #expect(FileManager.default.fileExists(atPath: s.path("\(repo)/.git/tessera/objects/\(id.prefix(2))/\(id.dropFirst(2))"))) }
        try s.run("rm model.safetensors && git checkout -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == Self.version(3))
        // fsck decodes it, and says which line does not name its whole chain.
        let r = try s.run("\"$T\" fsck", in: repo, check: false)
        #expect(r.status != 0 && r.stdout.contains("tensor 'layers.0.weight' does not name object \(chain[1].prefix(12))"), "\(r.stdout)")
    }
}
