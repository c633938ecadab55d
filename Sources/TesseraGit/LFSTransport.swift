#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TesseraCore
import TesseraStore
import TesseraIO

/// What a transfer actually did (not what was asked for): objects and bytes moved, and objects the other side
/// already had.
public struct TransferReport: Sendable, Equatable {
    public var transferred = 0
    public var bytes = 0
    public var alreadyThere = 0
    public init() {}
}

/// Carries Tessera's objects to and from remotes as Git LFS objects, so that any LFS-capable remote (GitHub,
/// GitLab, Hugging Face, a plain file:// path) stores them. An object's LFS oid is its object id (SHA-256 of its
/// bytes). Tessera keeps its own store; objects pass through `lfs/objects` only to be sent or received, so
/// `git lfs prune` can never delete Tessera's copy.
///
/// git-lfs does the transfers. What it really moved is read from its progress file (`GIT_LFS_PROGRESS`: one line per
/// chunk of an object being transferred, none for objects the server already has) for HTTP remotes, and from the
/// remote's own LFS folder for remotes that are local paths (git-lfs's standalone transfer reports no progress).
public struct LFSTransport {
    let repository: GitRepository
    let store: ObjectStore

    public init(repository: GitRepository, store: ObjectStore) {
        self.repository = repository
        self.store = store
    }

    var lfsObjects: String { repository.commonDirectory + "/lfs/objects" }

    func lfsPath(_ oid: String) -> String {
        "\(lfsObjects)/\(oid.prefix(2))/\(oid.dropFirst(2).prefix(2))/\(oid)"
    }

    var gitDirectoryForCommands: String { repository.workdir ?? repository.gitDirectory }

    /// The remote to fetch from: `tessera.remote`, else the current branch's remote, else origin.
    public func defaultRemote() -> String {
        if let r = ProcessInfo.processInfo.environment["TESSERA_REMOTE"], !r.isEmpty { return r }
        if let r = repository.configString("tessera.remote") { return r }
        if let head = try? Subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], directory: gitDirectoryForCommands),
           head.status == 0 {
            let branch = head.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            if let r = repository.configString("branch.\(branch).remote") { return r }
        }
        return "origin"
    }

    /// The folder holding a remote's LFS objects when git-lfs reaches it as a path on this machine (a `file://`
    /// endpoint); nil for servers. Asked of git-lfs itself (`git lfs env`), which knows `.lfsconfig`, `lfs.url` and
    /// `remote.NAME.lfsurl`.
    func localRemoteObjects(_ remote: String) -> String? {
        guard let env = try? Subprocess.run(["git", "lfs", "env"], directory: gitDirectoryForCommands), env.status == 0 else { return nil }
        let lines = env.stdoutText.split(separator: "\n").map(String.init)
        guard let line = lines.first(where: { $0.hasPrefix("Endpoint (\(remote))=") }) ?? lines.first(where: { $0.hasPrefix("Endpoint=") }),
              let eq = line.firstIndex(of: "=") else { return nil }
        var url = String(line[line.index(after: eq)...])
        if let space = url.firstIndex(of: " ") { url = String(url[..<space]) }
        guard url.hasPrefix("file://") else { return nil }
        url = String(url.dropFirst("file://".count)).removingPercentEncoding ?? String(url.dropFirst("file://".count))
        for candidate in [url + "/.git", url] where FileSystem.isDirectory(candidate + "/objects") {
            return candidate + "/lfs/objects"
        }
        return nil
    }

    static func lfsRelativePath(_ oid: String) -> String { "\(oid.prefix(2))/\(oid.dropFirst(2).prefix(2))/\(oid)" }

    /// The LFS pointer text for an object.
    static func pointer(oid: String, size: Int) -> [UInt8] {
        Array("version https://git-lfs.github.com/spec/v1\noid sha256:\(oid)\nsize \(size)\n".utf8)
    }

    // MARK: Fetch

    /// Downloads objects from the remote into the store, verifying each. A progress bar (bytes, rate, ETA) is drawn
    /// on stderr when it is a terminal and the transfer is large enough to be worth one.
    @discardableResult
    public func fetch(_ objects: [(id: String, size: Int)], forFile file: String? = nil, remote: String? = nil) throws -> TransferReport {
        let remote = remote ?? defaultRemote()
        var report = TransferReport()
        var sizes: [String: Int] = [:]
        for o in objects where ObjectID.isValid(o.id) { sizes[o.id] = o.size }
        let invalid = objects.map(\.id).filter { !ObjectID.isValid($0) }
        if let bad = invalid.first { try ObjectID.check(bad) }
        let wanted = sizes.keys.sorted().filter { !store.contains($0) }
        guard !wanted.isEmpty else { return report }
        // Objects already in lfs/objects (an earlier transfer) need no download.
        var toDownload: [String] = []
        for oid in wanted where !adopt(oid) { toDownload.append(oid) }
        report.alreadyThere = wanted.count - toDownload.count
        if !toDownload.isEmpty {
            // `git lfs fetch` downloads what the pointer files of a commit name; the commit is written for the
            // purpose and referenced by no branch (git gc removes it).
            let files = toDownload.map { (name: $0, bytes: LFSTransport.pointer(oid: $0, size: sizes[$0] ?? 1)) }
            let commit = try repository.writeDetachedCommit(files: files, message: "tessera fetch")
            let total = toDownload.reduce(0) { $0 + (sizes[$1] ?? 0) }
            let label = file.map { "tessera: fetching \($0)" } ?? "tessera: fetching objects"
            let paths = Dictionary(uniqueKeysWithValues: toDownload.map { ($0, lfsPath($0)) })
            let sizesNow = sizes
            let (r, _) = try runWithProgress(["git", "lfs", "fetch", remote, commit], label: label, total: total) { inFlight in
                paths.reduce(0) { $0 + (FileSystem.exists($1.value) ? (sizesNow[$1.key] ?? 0) : (inFlight[$1.key] ?? 0)) }
            }
            if r.status != 0 {
                let why = r.stderr.split(separator: "\n").last.map(String.init) ?? "exit status \(r.status)"
                throw TesseraError(.lfs, "\(file.map { "\($0): " } ?? "")cannot fetch \(toDownload.count) object(s) from remote '\(remote)': \(why)",
                                   hint: "check that the remote has them (push from where they were made) and that git-lfs is installed")
            }
            for oid in toDownload where !adopt(oid) {
                throw TesseraError(.objectMissing, "\(file.map { "\($0): " } ?? "")object \(oid.prefix(12)) is not on remote '\(remote)'",
                                   hint: "push it from the repository where it was made (`tessera push` there), then try again")
            }
            report.transferred = toDownload.count
            report.bytes = total
        }
        return report
    }

    /// Moves an object that git-lfs has in `lfs/objects` into the store (hard link when possible), after checking
    /// its SHA-256. Returns false if git-lfs does not have it.
    @discardableResult
    func adopt(_ oid: String) -> Bool {
        guard ObjectID.isValid(oid) else { return false }
        let src = lfsPath(oid)
        guard FileSystem.exists(src), (try? FileSystem.sha256(ofFile: src)) == oid else { return false }
        let dst = store.objectPath(oid)
        try? FileSystem.makeDirectories("\(store.objectsDirectory)/\(oid.prefix(2))")
        if link(src, dst) != 0 && !FileSystem.exists(dst) {
            try? FileSystem.copyAtomically(src, to: dst, tmpDir: store.tmpDirectory)
        }
        return store.contains(oid)
    }

    // MARK: Push

    /// Uploads objects to the remote (git-lfs skips the ones the remote already has) and reports what was sent.
    @discardableResult
    public func push(_ oids: [String], remote: String) throws -> TransferReport {
        var report = TransferReport()
        guard !oids.isEmpty else { return report }
        var sizes: [String: Int] = [:]
        for oid in oids {
            try ObjectID.check(oid)
            let dst = lfsPath(oid)
            sizes[oid] = FileSystem.fileStat(store.objectPath(oid))?.size ?? 0
            if FileSystem.exists(dst) { continue }
            try FileSystem.makeDirectories(String(dst[..<dst.lastIndex(of: "/")!]))
            if link(store.objectPath(oid), dst) != 0 {
                try FileSystem.copyAtomically(store.objectPath(oid), to: dst, tmpDir: store.tmpDirectory)
            }
        }
        // A remote that is a path here: what it lacks is known before, and its arrival can be watched.
        let remoteObjects = localRemoteObjects(remote)
        let missingThere: [String]? = remoteObjects.map { dir in oids.filter { !FileSystem.exists(dir + "/" + LFSTransport.lfsRelativePath($0)) } }
        var uploaded: [String: Int] = [:]
        var start = 0
        let sizesNow = sizes
        while start < oids.count {
            let batch = Array(oids[start..<min(start + 400, oids.count)])
            let watched = missingThere.map { Set($0) }.map { m in batch.filter { m.contains($0) } }
            let total = (watched ?? batch).reduce(0) { $0 + (sizes[$1] ?? 0) }
            let (r, reported) = try runWithProgress(["git", "lfs", "push", "--object-id", remote] + batch,
                                                    label: "tessera: pushing objects to \(remote)", total: total) { inFlight in
                if let remoteObjects, let watched {
                    return watched.reduce(0) { $0 + (FileSystem.exists(remoteObjects + "/" + LFSTransport.lfsRelativePath($1)) ? (sizesNow[$1] ?? 0) : 0) }
                }
                return inFlight.values.reduce(0, +)
            }
            for (oid, n) in reported { uploaded[oid] = max(uploaded[oid] ?? 0, n) }
            if r.status != 0 {
                let why = r.stderr.split(separator: "\n").last.map(String.init) ?? "exit status \(r.status)"
                throw TesseraError(.lfs, "cannot push objects to remote '\(remote)': \(why)",
                                   hint: "check the remote's Git LFS support and your credentials, then push again")
            }
            start += batch.count
        }
        if let remoteObjects, let missingThere {
            let arrived = missingThere.filter { FileSystem.exists(remoteObjects + "/" + LFSTransport.lfsRelativePath($0)) }
            report.transferred = arrived.count
            report.bytes = arrived.reduce(0) { $0 + (sizes[$1] ?? 0) }
        } else {
            let sent = uploaded.filter { $0.value >= (sizes[$0.key] ?? 0) }
            report.transferred = sent.count
            report.bytes = sent.keys.reduce(0) { $0 + (sizes[$1] ?? 0) }
        }
        report.alreadyThere = oids.count - report.transferred
        return report
    }

    /// Runs git-lfs with its progress file, calling `measure` (with the bytes git-lfs reports per object so far) ten
    /// times a second to draw a bar of `total` bytes. The bar shows on a terminal only, and only for transfers of
    /// more than a few megabytes; git-lfs's own output is kept for error messages.
    private func runWithProgress(_ arguments: [String], label: String, total: Int,
                                 measure: @escaping @Sendable ([String: Int]) -> Int) throws -> (Subprocess.Result, [String: Int]) {
        let progressFile = NSTemporaryDirectory() + "tessera-lfs-progress-" + UUID().uuidString.prefix(8)
        _ = FileManager.default.createFile(atPath: progressFile, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: progressFile) }
        let bar = ProgressReporter(label: label, total: total, unit: .bytes, enabled: isatty(2) != 0 && total > 4_000_000)
        final class Watch: @unchecked Sendable {
            // @unchecked: `stop` is set by the caller's thread and read by the watcher (a stale read costs one tick);
            // `reported` is written by the watcher and read after `done` is signalled.
            var stop = false
            var reported: [String: Int] = [:]
            let done = DispatchSemaphore(value: 0)
        }
        let watch = Watch()
        let watcher = Thread {
            var offset = 0
            var inFlight: [String: Int] = [:]
            while true {
                let stopping = watch.stop
                if let h = FileHandle(forReadingAtPath: progressFile) {
                    h.seek(toFileOffset: UInt64(offset))
                    let data = h.readDataToEndOfFile()
                    try? h.close()
                    // Only whole lines: the last one may still be being written.
                    if let end = data.lastIndex(of: 0x0A) {
                        offset += end + 1
                        for line in data[..<end].split(separator: 0x0A) {
                            // "<direction> <k>/<n> <bytes done>/<bytes total> <name>", the name ending in the oid.
                            let f = String(decoding: line, as: UTF8.self).split(separator: " ", maxSplits: 3)
                            guard f.count == 4, let slash = f[2].firstIndex(of: "/"), let n = Int(f[2][..<slash]) else { continue }
                            let oid = String(f[3].split(separator: "/").last ?? "")
                            if ObjectID.isValid(oid) { inFlight[oid] = n }
                        }
                    }
                }
                bar.update(completed: measure(inFlight))
                if stopping { break }
                usleep(100_000)
            }
            watch.reported = inFlight
            watch.done.signal()
        }
        watcher.start()
        // The watcher is stopped and waited for on every way out, a failure to start git-lfs included: left
        // running, it would poll a deleted file for the rest of the process.
        let result = Result { try Subprocess.run(arguments, directory: gitDirectoryForCommands, environment: ["GIT_LFS_PROGRESS": progressFile]) }
        watch.stop = true
        watch.done.wait()
        let r = try result.get()
        bar.finish()
        return (r, watch.reported)
    }
}
