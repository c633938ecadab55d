import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraStore
import TesseraTestSupport

/// The commands that read a repository (ls, log, fsck, gc, fetch, push, resolve), run in process on repositories
/// made with real git and the tessera binary.
@Suite struct RepositoryCommandTests {
    @Test func lsReadsATrackedFileAtAnyRevision() throws {
        let s = try Sandbox()
        let repo = try s.repositoryWithHistory()
        let ls = tesseraSucceeds("ls", "HEAD:model.safetensors", "-C", repo)
        #expect(ls.stdout.contains("layers.1.weight  F32    [64,64]  16384"), "\(ls.stdout)")
        #expect(ls.stdout.contains("5 tensors") && ls.stdout.contains("metadata:\n  format: pt"), "\(ls.stdout)")
        let json = tesseraSucceeds("ls", "HEAD~1:model.safetensors", "--json", "-C", repo)
        let parsed = try JSONParser.parse(Array(json.stdout.utf8))
        #expect(parsed["tensors"]?.arrayValue?.count == 5 && parsed["file"]?.stringValue == "HEAD~1:model.safetensors")
        // The staged version, named by its path in the worktree.
        #expect(tesseraSucceeds("ls", repo + "/model.safetensors", "-C", repo).stdout.contains("layers.0.weight"))
        let missing = tessera("ls", "HEAD:no-such.safetensors", "-C", repo)
        #expect(missing.tesseraError?.code == .notFound && missing.status == 1, "\(String(describing: missing.error))")
    }

    @Test func logListsTheCommitsWhereTensorsChanged() throws {
        let s = try Sandbox()
        let repo = try s.repositoryWithHistory()
        var model = smallModel(layers: 4, changed: [1])
        model.entries[0].name = "blocks.0.weight"
        try model.write(to: repo + "/model.safetensors")
        try s.run("git commit -qam rename", in: repo)
        let log = tesseraSucceeds("log", "model.safetensors", "-C", repo).stdout
        let lines = log.split(separator: "\n").map(String.init)
        #expect(lines.count == 6, "\(log)")
        #expect(lines[1] == "    1 renamed: layers.0.weight->blocks.0.weight", "\(log)")
        #expect(lines[3] == "    1 changed: ~layers.1.weight", "\(log)")
        #expect(lines[5] == "    5 added: +head.bias +layers.0.weight +layers.1.weight +layers.2.weight +layers.3.weight", "\(log)")
        // One tensor's history follows it through the rename.
        let one = tesseraSucceeds("log", "model.safetensors", "--tensor", "layers.0.weight", "--json", "-C", repo)
        let entries = try #require(try JSONParser.parse(Array(one.stdout.utf8)).arrayValue)
        #expect(entries.count == 2 && entries[0]["renamed"]?.arrayValue?.count == 1 && entries[1]["added"]?.arrayValue?.count == 1)
        let unknown = tessera("log", "model.safetensors", "--tensor", "no.such", "-C", repo)
        #expect(unknown.tesseraError?.code == .notFound && unknown.tesseraError?.message.contains("no tensor named 'no.such'") == true)
    }

    @Test func fsckReportsMissingObjectsAsAnError() throws {
        let s = try Sandbox()
        let repo = try s.repositoryWithHistory()
        let ok = tesseraSucceeds("fsck", "-C", repo)
        #expect(ok.stdout.hasSuffix(": 0 missing, 0 corrupt\n"), "\(ok.stdout)")
        let store = try s.store(repo)
        let victim = try #require(store.allObjectIDs().first)
        store.remove(victim)
        let broken = tessera("fsck", "--json", "-C", repo)
        #expect(broken.tesseraError?.code == .objectCorrupt)
        let report = try JSONParser.parse(Array(broken.stdout.utf8))
        #expect(report["missing"]?.arrayValue?.compactMap(\.stringValue) == [victim])
        #expect(report["ok"] == .bool(false))
    }

    @Test func gcDeletesOnlyUnreachableObjectsOlderThanTheGracePeriod() throws {
        let s = try Sandbox()
        let repo = try s.repositoryWithHistory()
        let store = try s.store(repo)
        let reachable = store.allObjectIDs()
        // An object nothing names, as a killed `git add` leaves.
        let raw: [UInt8] = Array(repeating: 7, count: 4096)
        _ = try raw.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex(raw), width: 1, encoder: ObjectEncoder()) }
        #expect(store.allObjectIDs().count == reachable.count + 1)
        #expect(tesseraSucceeds("gc", "-C", repo).stdout.hasPrefix("deleted 0 unreachable object(s)"))  // younger than an hour
        #expect(tesseraSucceeds("gc", "--prune", "now", "--dry-run", "-C", repo).stdout.hasPrefix("would delete 1 unreachable object(s)"))
        #expect(store.allObjectIDs().count == reachable.count + 1)
        let gc = tesseraSucceeds("gc", "--prune", "now", "--json", "-C", repo)
        #expect(try JSONParser.parse(Array(gc.stdout.utf8))["deleted"] == .int(1), "\(gc.stdout)")
        #expect(store.allObjectIDs() == reachable)
        tesseraSucceeds("fsck", "--unreachable", "-C", repo)
        #expect(tessera("gc", "--prune", "soon", "-C", repo).tesseraError?.code == .usage)
    }

    @Test func fetchAndPushSayWhatTheyWouldMove() throws {
        let s = try Sandbox()
        let repo = try s.repositoryWithHistory()
        let count = try s.store(repo).allObjectIDs().count
        try s.run("git init -q --bare ../remote.git && git remote add origin ../remote.git", in: repo)
        let push = tesseraSucceeds("push", "--dry-run", "-C", repo)
        #expect(push.stdout == "would offer \(count) object(s) to origin\n", "\(push.stdout)")
        // HEAD alone names the objects of v2 only.
        let head = try s.run("git show HEAD:model.safetensors", in: repo).stdout
        let named = try Manifest.parse(head).objects.count
        #expect(named < count)
        let fetch = tesseraSucceeds("fetch", "-C", repo)
        #expect(fetch.stdout == "all \(named) object(s) are present\n", "\(fetch.stdout)")
        #expect(tesseraSucceeds("fetch", "--all", "-C", repo).stdout == "all \(count) object(s) are present\n")
        let unknown = tessera("fetch", "no-such-branch", "-C", repo)
        #expect(unknown.tesseraError?.code == .notFound && unknown.tesseraError?.message == "no-such-branch is not a revision of this repository")
    }

    /// A conflicted `git merge` (real git, the tessera binary as merge driver) finished by `tessera resolve` in process.
    @Test func resolveFinishesAConflictedMerge() throws {
        let s = try Sandbox()
        let repo = try s.repositoryWithHistory()
        try s.run("git switch -q -c side", in: repo)
        try smallModel(layers: 4, changed: [1, 2]).write(to: repo + "/model.safetensors")
        try s.run("git commit -qam 'side: layer 2' && git switch -q main", in: repo)
        try smallModel(layers: 4, seedOffset: 3, changed: [1]).write(to: repo + "/model.safetensors")
        try s.run("git commit -qam 'main: everything'", in: repo)
        #expect(try s.run("git merge -q side", in: repo, check: false).status != 0)
        let notConflicted = tessera("resolve", "head.bias", "--method", "linear", "-C", repo)
        #expect(notConflicted.tesseraError?.code == .usage && notConflicted.status == 2)
        let unknownMethod = tessera("resolve", "model.safetensors", "--method", "averaging", "-C", repo)
        #expect(unknownMethod.error != nil && unknownMethod.status != 0)
        let resolved = tesseraSucceeds("resolve", "model.safetensors", "--method", "linear", "-C", repo)
        #expect(resolved.stdout.hasPrefix("resolved model.safetensors: 1 tensor(s) merged by linear; staged."), "\(resolved.stdout)")
        #expect(try s.run("git diff --name-only --diff-filter=U", in: repo).stdout.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: repo + "/model.safetensors.conflict"))
        let merged = try Checkpoints.tensors(repo + "/model.safetensors")
        let ours = smallModel(layers: 4, seedOffset: 3, changed: [1]).entries, theirs = smallModel(layers: 4, changed: [1, 2]).entries
        // Layer 2, changed on both sides: their average; the others changed on our side only: ours.
        let average = zip(Checkpoints.values(ReadTensor(dtype: "F32", shape: [64, 64], bytes: Data(ours[2].bytes))),
                          Checkpoints.values(ReadTensor(dtype: "F32", shape: [64, 64], bytes: Data(theirs[2].bytes)))).map { ($0 + $1) / 2 }
        let layer2 = Checkpoints.values(try #require(merged["layers.2.weight"]))
        #expect(zip(layer2, average).allSatisfy { abs($0 - $1) <= 1e-7 })
        #expect(merged["layers.0.weight"]?.bytes == Data(ours[0].bytes) && merged["layers.1.weight"]?.bytes == Data(ours[1].bytes))
    }
}
