import Foundation
import Testing
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraRepository
import TesseraStore
import TesseraTestSupport

/// The repository layer on repositories made with real git and the tessera binary (git's own commands set them up).
@Suite struct RepositoryTests {
    /// model.safetensors at v1, then with layer 1 changed; the repository and the two commits.
    static func history(_ s: Sandbox) throws -> (Repository, v1: String, v2: String) {
        let repo = try s.makeRepository()
        try smallModel(layers: 3).write(to: s.path("repo/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        try smallModel(layers: 3, changed: [1]).write(to: s.path("repo/model.safetensors"))
        try s.run("git commit -qam v2", in: repo)
        let repository = try Repository(directory: s.path(repo))
        return (repository, try #require(repository.git.resolveCommit("HEAD~1")), try #require(repository.git.resolveCommit("HEAD")))
    }

    static func objects(_ repository: Repository, _ spec: String) throws -> Set<String> {
        Set(try #require(try repository.manifestBlob(spec, name: spec)).objectIDs)
    }

    @Test func revisionPathsSplitAtTheFirstColon() {
        #expect(RevisionPath("HEAD~1:a/b:c.safetensors") == RevisionPath(rev: "HEAD~1", path: "a/b:c.safetensors"))
        #expect(RevisionPath(":model.safetensors") == RevisionPath(rev: "", path: "model.safetensors"))
        #expect(RevisionPath("main") == RevisionPath(rev: "main", path: ""))
        #expect(RevisionPath.trimmingSlashes("HEAD:folder//") == "HEAD:folder" && RevisionPath.trimmingSlashes("HEAD:/") == "HEAD:/")
    }

    @Test func trackedManifestsByRevisionIndexAndPath() throws {
        let s = try Sandbox()
        let (repository, _, _) = try Self.history(s)
        #expect(try repository.trackedManifest("HEAD~1:model.safetensors").manifest.tensors.count == 4)
        #expect(try repository.trackedManifest(":model.safetensors").name == ":model.safetensors")
        #expect(try repository.trackedManifest(s.path("repo/model.safetensors")).name == "model.safetensors")
        let plain = try #require(throws: TesseraError.self) { try repository.trackedManifest("HEAD:.gitattributes") }
        #expect(plain.code == .notFound && plain.message.contains("is not tracked by tessera"))
        #expect(try repository.trackedManifestIfAny("HEAD:") == nil)  // a folder: the resolver's
    }

    /// The pre-push hook's collection: what the commits git sends name, minus what the remote has; a deletion sends
    /// nothing. `tessera push`'s is the whole history.
    @Test func pushPlansSendWhatTheRemoteLacks() throws {
        let s = try Sandbox()
        let (repository, v1, v2) = try Self.history(s)
        let zero = String(repeating: "0", count: 40)
        let everything = Set(repository.store.allObjectIDs())
        let newBranch = try PushPlan(refUpdates: ["refs/heads/main \(v2) refs/heads/main \(zero)"], remote: "origin", repository: repository)
        #expect(Set(newBranch.named) == everything && newBranch.present == newBranch.named && newBranch.absent == 0)
        #expect(newBranch.named.count == everything.count)  // each object once
        // The remote has v1: only v2's manifest is read (its unchanged tensors are named again, git-lfs skips them).
        let update = try PushPlan(refUpdates: ["refs/heads/main \(v2) refs/heads/main \(v1)"], remote: "origin", repository: repository)
        #expect(Set(update.named) == (try Self.objects(repository, "HEAD:model.safetensors")))
        let upToDate = try PushPlan(refUpdates: ["refs/heads/main \(v2) refs/heads/main \(v2)"], remote: "origin", repository: repository)
        #expect(upToDate.named.isEmpty)
        let deletion = try PushPlan(refUpdates: ["(delete) \(zero) refs/heads/old \(v1)", "garbage line"], remote: "origin", repository: repository)
        #expect(deletion.named.isEmpty)
        // What a remote-tracking ref says the remote has is not sent either.
        try s.run("git update-ref refs/remotes/origin/main \(v1)", in: "repo")
        let known = try PushPlan(refUpdates: ["refs/heads/side \(v2) refs/heads/side \(zero)"], remote: "origin", repository: repository)
        #expect(Set(known.named) == (try Self.objects(repository, "HEAD:model.safetensors")))
        #expect(Set(try PushPlan(history: [v2], remote: "origin", repository: repository).named) == everything)
        // An object the store lacks is named but not offered.
        let victim = try #require(update.named.first)
        repository.store.remove(victim)
        let partial = try PushPlan(history: [v2], remote: "origin", repository: repository)
        #expect(partial.absent == 1 && !partial.present.contains(victim))
    }

    @Test func garbageCollectionKeepsWhatIsReachableAndWhatIsYoung() throws {
        let s = try Sandbox()
        let (repository, _, _) = try Self.history(s)
        let reachable = repository.store.allObjectIDs()
        let raw: [UInt8] = Array(repeating: 1, count: 1000)
        let orphan = try raw.withUnsafeBytes { try repository.store.put(raw: $0, rawSHA256: SHA256Hasher.hex(raw), width: 1, encoder: ObjectEncoder()) }
        let young = try GarbageCollector(repository: repository, gracePeriod: 3600).collect(dryRun: false)
        #expect(young.deleted == 0 && young.kept == reachable.count + 1)
        let dry = try GarbageCollector(repository: repository, gracePeriod: 0).collect(dryRun: true)
        #expect(dry.deleted == 1 && dry.freedBytes == orphan.objectSize && repository.store.contains(orphan.objectID))
        let collected = try GarbageCollector(repository: repository, gracePeriod: 0).collect(dryRun: false)
        #expect(collected.deleted == 1 && repository.store.allObjectIDs() == reachable)
        // A stale temporary file goes too.
        #expect(FileManager.default.createFile(atPath: repository.store.tmpDirectory + "/left-by-a-killed-filter", contents: Data([1])))
        #expect(try GarbageCollector(repository: repository, gracePeriod: 0).collect(dryRun: false).temporaryFiles == 1)
    }

    /// fsck's plan checks each object against what the manifests claim of it: an intact object that is not what a
    /// manifest says is reported.
    @Test func verificationComparesObjectsWithTheManifestsClaims() throws {
        let s = try Sandbox()
        let (repository, _, _) = try Self.history(s)
        #expect(try StoreVerification(repository: repository, includeUnreachable: false).run().isClean)
        // A manifest staged by hand claiming another tensor's object for layer 0.
        var manifest = try #require(try repository.manifestBlob("HEAD:model.safetensors", name: "m"))
        let tensors = manifest.tensors
        let other = tensors[2].stored
        manifest.segments = manifest.segments.map { segment in
            guard case let .tensor(name, dtype, shape, b, e, st) = segment, name == tensors[0].name else { return segment }
            return .tensor(name: name, dtype: dtype, shape: shape, begin: b, end: e,
                           Manifest.Stored(encoding: other.encoding, rawSHA256: st.rawSHA256, objectID: other.objectID, objectSize: other.objectSize))
        }
        let blob = try s.run("git hash-object -w --stdin", in: "repo", input: manifest.render()).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        try s.run("git update-index --add --cacheinfo 100644,\(blob),forged.safetensors", in: "repo")
        let reopened = try Repository(directory: s.path("repo"))  // libgit2 keeps the index it read
        let report = try StoreVerification(repository: reopened, includeUnreachable: false).run()
        #expect(report.corrupt.map(\.id) == [other.objectID], "\(report.corrupt)")
        // The pre-commit hook lets it through (its objects exist) but refuses one naming an object the store lacks.
        try PreCommitCheck.run(reopened)
        reopened.store.remove(tensors[1].stored.objectID)
        let e = try #require(throws: TesseraError.self) { try PreCommitCheck.run(reopened) }
        #expect(e.code == .objectMissing && e.message.contains("forged.safetensors (1 of"), "\(e)")
    }

    @Test func historyOfATensorThroughARename() throws {
        let s = try Sandbox()
        let (repository, _, v2) = try Self.history(s)
        var model = smallModel(layers: 3, changed: [1])
        model.entries[2].name = "blocks.2.weight"
        try model.write(to: s.path("repo/model.safetensors"))
        try s.run("git commit -qam rename", in: "repo")
        let history = try TensorHistory(path: "model.safetensors", from: "HEAD", tensor: nil, repository: repository)
        #expect(history.entries.map(\.subject) == ["rename", "v2", "v1"])
        #expect(history.entries[0].renamed.map { "\($0.from)->\($0.to)" } == ["layers.2.weight->blocks.2.weight"])
        #expect(history.entries[1].changed == ["layers.1.weight"] && history.entries[1].commit == v2)
        #expect(history.entries[2].added.count == 4)
        let one = try TensorHistory(path: "model.safetensors", from: "HEAD~1", tensor: "layers.2.weight", repository: repository)
        #expect(one.entries.map(\.subject) == ["v1"])
        #expect(throws: TesseraError.self) { try TensorHistory(path: "model.safetensors", from: "HEAD~1", tensor: "blocks.2.weight", repository: repository) }
    }

    /// git's diff driver gets a manifest or the real file for each side; both read the same.
    @Test func aCheckpointAndItsManifestCompareAsEqual() throws {
        let s = try Sandbox()
        let (repository, _, _) = try Self.history(s)
        try s.run("git show HEAD:model.safetensors > manifest.txt", in: "repo")
        let file = try #require(try CheckpointVersion.open(path: s.path("repo/model.safetensors"), store: repository.store, label: "b"))
        let manifest = try #require(try CheckpointVersion.open(path: s.path("repo/manifest.txt"), store: repository.store, label: "a"))
        #expect(try ManifestDiff(old: manifest, new: file).isEmpty)
        try smallModel(layers: 3, changed: [0, 1]).write(to: s.path("repo/model.safetensors"))
        let changed = try #require(try CheckpointVersion.open(path: s.path("repo/model.safetensors"), store: repository.store, label: "b"))
        let diff = try ManifestDiff(old: manifest, new: changed, numericSummaries: true)
        #expect(diff.changes.filter { $0.kind == .changed }.map(\.name) == ["layers.0.weight"])
        #expect((diff.change(of: "layers.0.weight")?.numeric?.l2 ?? 0) > 0)
        #expect(try CheckpointVersion.open(path: "/dev/null", store: repository.store, label: "a") == nil)
        #expect(try CheckpointVersion.open(path: s.path("repo/.gitattributes"), store: repository.store, label: "a") == nil)
    }
}
