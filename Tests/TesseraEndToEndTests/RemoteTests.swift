import Foundation
import Testing
import TesseraTestSupport

/// Objects travel as Git LFS objects through a plain file:// remote (git-lfs's own standalone transfer).
@Suite struct RemoteTests {
    /// A repository with two commits on main, pushed to a bare remote.
    func pushedRepository(_ s: Sandbox) throws -> (v1: [UInt8], v2: [UInt8]) {
        let repo = try s.makeRepository()
        try s.run("git init -q --bare remote.git")
        let v1 = smallModel(layers: 4).encode(), v2 = smallModel(layers: 4, changed: [1]).encode()
        try Data(v1).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        try Data(v2).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git commit -qam v2 && git remote add origin \"file://$PWD/../remote.git\" && git push -q -u origin main", in: repo)
        return (v1, v2)
    }

    /// Clone with the filter configured for the clone command itself (as `tessera install --global` would).
    func clone(_ s: Sandbox, _ name: String) throws {
        try s.run("git -c filter.tessera.process=\"$T filter-process\" -c filter.tessera.required=true clone -q \"file://$PWD/remote.git\" \(name) && cd \(name) && \"$T\" install >/dev/null")
    }

    @Test func pushAndCloneBringOnlyWhatTheCheckoutNeeds() throws {
        let s = try Sandbox()
        let (v1, v2) = try pushedRepository(s)
        // The remote holds every object of the pushed history, as LFS objects.
        let remoteObjects = try s.run("find remote.git/lfs/objects -type f | wc -l").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Int(remoteObjects) == s.objectCount("repo"))
        try clone(s, "clone")
        #expect(Array(try s.bytes("clone/model.safetensors")) == v2)
        // Only HEAD's objects came: v1's changed tensor was not fetched. fsck knows the remote has it.
        #expect(s.objectCount("clone") == s.objectCount("repo") - 1)
        let fsck = try s.run("\"$T\" fsck", in: "clone").stdout
        #expect(fsck.contains("0 missing, 0 corrupt; 1 of the remote's history not fetched"), "\(fsck)")
        // Checking out the old version fetches the missing object on demand.
        try s.run("git checkout -q HEAD~1 -- model.safetensors", in: "clone")
        #expect(Array(try s.bytes("clone/model.safetensors")) == v1)
        #expect(s.objectCount("clone") == s.objectCount("repo"))
    }

    @Test func pushABranchWithAMergeCommitAndANewBranchFromAFreshClone() throws {
        let s = try Sandbox()
        _ = try pushedRepository(s)
        try clone(s, "clone")
        // Two branches that change different tensors, merged with a merge commit.
        try s.run("git switch -q -c a", in: "clone")
        try smallModel(layers: 4, changed: [0]).write(to: s.path("clone/model.safetensors"))
        try s.run("git commit -qam 'a: layer 0'", in: "clone")
        try s.run("git switch -q -c b main && printf 'notes\\n' > notes.txt && git add notes.txt && git commit -qm 'b: notes'", in: "clone")
        try s.run("git switch -q a && git merge -q --no-edit b", in: "clone")
        let parents = try s.run("git rev-list --parents -n1 HEAD", in: "clone").stdout.split(separator: " ").count
        #expect(parents == 3)
        // The new branch (with its merge commit) pushes, objects included.
        try s.run("git push -q origin a", in: "clone")
        try clone(s, "second")
        try s.run("git switch -q a", in: "second")
        #expect(try s.bytes("second/model.safetensors") == s.bytes("clone/model.safetensors"))
        try s.run("\"$T\" fsck", in: "second")
    }

    @Test func gitLfsPruneCannotDeleteTesseraObjects() throws {
        let s = try Sandbox()
        let (v1, _) = try pushedRepository(s)
        try s.run("git lfs prune --force >/dev/null 2>&1 || git lfs prune >/dev/null 2>&1; true", in: "repo")
        try s.run("rm -rf .git/lfs/objects", in: "repo")
        try s.run("git checkout -q HEAD~1 -- model.safetensors", in: "repo")
        #expect(Array(try s.bytes("repo/model.safetensors")) == v1)
        try s.run("\"$T\" fsck", in: "repo")
    }

    @Test func fetchAllMakesHistoryAvailableOffline() throws {
        let s = try Sandbox()
        _ = try pushedRepository(s)
        try clone(s, "clone")
        #expect(s.objectCount("clone") < s.objectCount("repo"))
        try s.run("\"$T\" fetch --all", in: "clone")
        #expect(s.objectCount("clone") == s.objectCount("repo"))
    }
}

@Suite struct DeltaTests {
    /// A fine-tune: every weight moves by about 0.1% of itself (sign and exponent mostly unchanged).
    static func fineTuned(_ c: TestCheckpoint) -> TestCheckpoint {
        var out = c
        for k in out.entries.indices where out.entries[k].dtype == "F32" {
            var values = out.entries[k].bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let noise = TestCheckpoint.floats(values.count, seed: UInt64(k + 77), scale: 1)
            for i in values.indices { values[i] += 1e-3 * abs(values[i]) * noise[i] }
            out.entries[k].bytes = TestCheckpoint.f32Bytes(values)
        }
        return out
    }

    @Test func fineTuneIsStoredAsDeltasAndRoundTripsThroughARemote() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        var base = TestCheckpoint()
        for i in 0..<4 { base.add("w\(i)", shape: [256, 256], seed: UInt64(i + 1)) }
        try base.write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        let afterBase = s.storeBytes(repo)
        let tuned = DeltaTests.fineTuned(base).encode()
        try Data(tuned).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git commit -qam finetune", in: repo)
        let ls = try s.run("\"$T\" ls HEAD:model.safetensors", in: repo).stdout
        // A dense fine-tune is an arithmetic delta against the base (issue 12; an XOR delta before).
        #expect(ls.split(separator: "\n").filter { $0.contains("adelta4") }.count == 4, "\(ls)")
        // The fine-tune costs well under its raw size (4 × 256 KB).
        let growth = s.storeBytes(repo) - afterBase
        #expect(growth < 4 * 262_144 * 7 / 10, "fine-tune grew the store by \(growth) bytes")
        // A clone checks it out byte-exact: the delta bases travel too (named in the manifest).
        try s.run("git init -q --bare remote.git")
        try s.run("git remote add origin \"file://$PWD/../remote.git\" && git push -q origin main", in: repo)
        try s.run("git -c filter.tessera.process=\"$T filter-process\" -c filter.tessera.required=true clone -q \"file://$PWD/remote.git\" clone")
        #expect(Array(try s.bytes("clone/model.safetensors")) == tuned)
        try s.run("\"$T\" install >/dev/null && git status --porcelain && \"$T\" fsck", in: "clone")
        #expect(try s.run("git status --porcelain", in: "clone").stdout.isEmpty)
    }
}
