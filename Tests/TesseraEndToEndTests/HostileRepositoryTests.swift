import Foundation
import Testing
import TesseraCore
import TesseraStore
import TesseraTestSupport

/// Issue 8, end to end: repositories and remotes built to hurt, through real git, git-lfs and the tessera binary.
@Suite struct HostileRepositoryTests {
    /// The object files of a repository's store, by id.
    func objects(_ s: Sandbox, _ repo: String) throws -> [String] {
        try s.run("find .git/tessera/objects -type f | sed 's|.git/tessera/objects/||; s|/||'", in: repo).stdout
            .split(separator: "\n").map(String.init)
    }

    /// Rewrites an object's trailer raw length (what a hostile remote sends, stored under its own SHA-256) and returns
    /// the new object's id and size.
    func hostileCopy(of path: String, rawLength: UInt64) throws -> (id: String, bytes: [UInt8]) {
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let at = bytes.count - ObjectTrailer.size + 64
        withUnsafeBytes(of: rawLength.littleEndian) { for k in 0..<8 { bytes[at + k] = $0[k] } }
        return (SHA256Hasher.hex(bytes), bytes)
    }

    @Test func aHostileRemoteCannotCrashItsCloners() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository("attacker")
        try smallModel(layers: 2).write(to: s.path("attacker/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm honest", in: repo)
        // Swap one tensor's object for a copy whose trailer claims 2^63 raw bytes, stored under its own SHA-256, and
        // commit a manifest that names it (what a malicious publisher can do without tessera's help).
        let manifestText = try s.run("git show HEAD:model.safetensors", in: repo).stdout
        var manifest = try Manifest.parse(manifestText)
        guard case let .tensor(name, dtype, shape, b, e, stored) = manifest.segments[1] else { Issue.record("no tensor"); return }
        let store = try ObjectStore(root: s.path("attacker/.git/tessera"))
        let (id, bytes) = try hostileCopy(of: store.objectPath(stored.objectID), rawLength: 1 << 63)
        try FileManager.default.createDirectory(atPath: s.path("attacker/.git/tessera/objects/\(id.prefix(2))"), withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: store.objectPath(id)))
        manifest.segments[1] = .tensor(name: name, dtype: dtype, shape: shape, begin: b, end: e,
                                       Manifest.Stored(encoding: stored.encoding, rawSHA256: stored.rawSHA256, objectID: id, objectSize: bytes.count))
        try manifest.render().write(toFile: s.path("hostile.manifest"), atomically: true, encoding: .utf8)
        try s.run("blob=$(git hash-object -w ../hostile.manifest) && git update-index --cacheinfo 100644,$blob,model.safetensors && git commit -qm hostile --no-verify", in: repo)
        try s.run("git init -q --bare remote.git")
        try s.run("git remote add origin \"file://$PWD/../remote.git\" && git push -q origin main", in: repo)
        #expect(FileManager.default.fileExists(atPath: s.path("remote.git/lfs/objects/\(id.prefix(2))/\(id.dropFirst(2).prefix(2))/\(id)")))

        // The victim clones with tessera configured: one clear line, no crash (Sandbox.run records crashes).
        let clone = try s.run("git -c filter.tessera.process=\"$T filter-process\" -c filter.tessera.required=true clone -q \"file://$PWD/remote.git\" victim",
                              check: false)
        #expect(clone.status != 0)
        let lines = clone.stderr.split(separator: "\n").filter { $0.hasPrefix("tessera: ") }
        #expect(lines.count == 1 && lines[0].contains("model.safetensors") && lines[0].contains("corrupt"), "\(clone.stderr)")
        // fsck in the victim names the object, and does not crash either.
        try s.run("\"$T\" install >/dev/null", in: "victim")
        let fsck = try s.run("\"$T\" fetch && \"$T\" fsck", in: "victim", check: false)
        #expect(fsck.status != 0 && fsck.stdout.contains("corrupt \(id)"), "\(fsck.stdout)\(fsck.stderr)")
    }

    @Test func gcKeepsObjectsAnAddReusesAndWaitsForRunningFilters() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        let model = smallModel(layers: 6)
        try model.write(to: s.path("repo/model.safetensors"))
        // Stored once, then abandoned: the objects stay in the store, unreachable, and an hour old.
        try s.run("git add model.safetensors && git rm -q --cached model.safetensors", in: repo)
        let ids = try objects(s, repo)
        #expect(ids.count == 8)
        try s.run("find .git/tessera/objects -type f -exec touch -d '2 hours ago' {} +", in: repo)
        // Adding the same file again reuses them (through the raw-value index): they must become young again, or a
        // gc running before git records the new manifest would delete objects the commit is about to name.
        try s.run("touch model.safetensors && git add model.safetensors", in: repo)  // new stat data: a real clean, not the stat cache
        let ages = try s.run("find .git/tessera/objects -type f -mmin +60 | wc -l", in: repo).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(ages == "0")
        try s.run("git commit -qm v1 && \"$T\" gc", in: repo)
        try s.run("rm model.safetensors && git checkout -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("repo/model.safetensors")) == model.encode())

        // A filter that is running holds the store: gc says so and waits until it is gone.
        let filter = Process()
        filter.executableURL = URL(fileURLWithPath: tesseraBinary)
        filter.arguments = ["filter-process"]
        filter.currentDirectoryURL = URL(fileURLWithPath: s.path(repo))
        filter.environment = s.environment
        let input = Pipe()
        filter.standardInput = input
        filter.standardOutput = FileHandle.nullDevice
        filter.standardError = FileHandle.nullDevice
        try filter.run()
        defer { if filter.isRunning { filter.terminate() } }
        let gc = Process()
        gc.executableURL = URL(fileURLWithPath: tesseraBinary)
        gc.arguments = ["gc", "--prune", "now"]
        gc.currentDirectoryURL = URL(fileURLWithPath: s.path(repo))
        gc.environment = s.environment
        let gcErr = Pipe()
        gc.standardError = gcErr
        gc.standardOutput = FileHandle.nullDevice
        // Wait until the filter holds the lock (it takes it when it starts).
        for _ in 0..<200 where (try? s.run("flock -n -x .git/tessera/lock true", in: repo, check: false).status) == 0 { usleep(20_000) }
        try gc.run()
        let firstLine = String(decoding: gcErr.fileHandleForReading.availableDataBlocking(upTo: 200), as: UTF8.self)
        #expect(firstLine.contains("waiting"), "\(firstLine)")
        #expect(gc.isRunning)
        try input.fileHandleForWriting.close()  // git would close the filter's stdin at the end of its command
        filter.waitUntilExit()
        gc.waitUntilExit()
        #expect(gc.terminationStatus == 0)
    }

    @Test func manifestTextAddedUnderATrackedNameComesBackAsItWas() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try smallModel(layers: 2).write(to: s.path("repo/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        // Someone copies the manifest text (not the checkpoint) into a new tracked file and commits it.
        let text = try s.run("git show HEAD:model.safetensors", in: repo).stdout
        try text.write(toFile: s.path("repo/copy.safetensors"), atomically: true, encoding: .utf8)
        try s.run("git add copy.safetensors && git commit -qm copy && rm copy.safetensors && git checkout -- copy.safetensors", in: repo)
        #expect(try String(contentsOfFile: s.path("repo/copy.safetensors"), encoding: .utf8) == text)
        // And a manifest staged behind the filter's back, naming objects nobody has, is refused by the pre-commit hook.
        let missing = String(repeating: "b", count: 64)
        let fake = "tessera-manifest 1\nformat opaque\nsize 5\nblob 0 5 zstd \(missing) \(missing) 100\nend\n"
        try fake.write(toFile: s.path("fake.manifest"), atomically: true, encoding: .utf8)
        let r = try s.run("blob=$(git hash-object -w ../fake.manifest) && git update-index --add --cacheinfo 100644,$blob,fake.safetensors && git commit -qm fake",
                          in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("names objects that are not in this repository's store"), "\(r.stderr)")
    }

    @Test func trackingEverythingLeavesGitsOwnFilesAlone() throws {
        let s = try Sandbox()
        try s.run("git init -q repo && cd repo && \"$T\" track '*' >/dev/null && git add .gitattributes && git commit -qm attrs")
        #expect(try s.run("git show HEAD:.gitattributes", in: "repo").stdout.hasPrefix("* filter=tessera"))
        try s.run("git check-attr filter -- .gitattributes | grep -q unspecified", in: "repo")
        try s.run("git clone -q repo clone && grep -q 'filter=tessera' clone/.gitattributes")
        // Untracking the pattern removes the exemption too.
        try s.run("\"$T\" untrack '*' >/dev/null && ! grep -q '!filter' .gitattributes", in: "repo")
    }

    @Test func anUnreadableObjectIsReportedAsUnreadableNotMissing() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try smallModel(layers: 2).write(to: s.path("repo/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        // Tests run as root, which reads any file: a directory where an object should be is what cannot be read.
        let id = try objects(s, repo)[0]
        let path = ".git/tessera/objects/\(id.prefix(2))/\(id.dropFirst(2))"
        try s.run("rm -f \(path) && mkdir \(path)", in: repo)
        let fsck = try s.run("\"$T\" fsck", in: repo, check: false)
        #expect(fsck.stdout.contains("corrupt \(id): cannot be read"), "\(fsck.stdout)")
        let fetch = try s.run("\"$T\" fetch", in: repo, check: false)
        #expect(fetch.status != 0 && fetch.stderr.contains("cannot be read"), "\(fetch.stderr)")
        #expect(try s.run("\"$T\" fetch no-such-rev", in: repo, check: false).stderr.contains("not a revision"))
    }

    @Test func checkingOutALargeOpaqueFileStreamsIt() throws {
        let s = try Sandbox()
        try s.run("git init -q repo && cd repo && \"$T\" track '*.bin' >/dev/null")
        // 300 MB of varied bytes (compressible but not trivially), stored whole as one object.
        try s.run("head -c 300000000 /dev/urandom | gzip -1 -c | head -c 300000000 > big.bin && git add big.bin .gitattributes && git commit -qm big", in: "repo")
        try s.run("rm big.bin && TESSERA_STATS_FILE=$PWD/../stats git checkout -- big.bin", in: "repo")
        let stats = try String(contentsOfFile: s.path("stats"), encoding: .utf8)
        let kb = stats.split(separator: "\n").compactMap { Int($0.split(separator: " ").last ?? "") }.max() ?? 0
        // Memory follows the decoding chunk, not the file (it held the whole object before).
        #expect(kb > 0 && kb < 200_000, "filter peak RSS \(kb) kB")
        try s.run("\"$T\" fsck", in: "repo")
    }
}

extension FileHandle {
    /// Reads until `count` bytes or the end of the stream (blocking), for a child's first line of output.
    func availableDataBlocking(upTo count: Int) -> Data {
        var out = Data()
        while out.count < count {
            let d = availableData
            if d.isEmpty { break }
            out += d
            if out.contains(0x0A) { break }
        }
        return out
    }
}
