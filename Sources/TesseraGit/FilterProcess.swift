#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TesseraCore
import TesseraStore
import TesseraIO

/// git's long-running filter protocol (gitattributes(5), "Long Running Filter Process"), version 2, with the clean
/// and smudge capabilities. git starts one process per command and sends every tracked file through it.
///
/// Clean: the file's bytes in, its manifest out (objects written to the store on the way).
/// Smudge: a manifest in, the file's bytes out (objects fetched through Git LFS first if missing).
/// Errors answer `status=error` for that file only, with one line on stderr saying what is wrong and what to do.
public final class FilterProcess {
    private let reader: PktLineReader
    private let writer: PktLineWriter
    private let repository: GitRepository
    private let store: ObjectStore
    private let statCache: StatCache?
    private let worktree: String
    private let decoder = ObjectDecoder()
    /// Held while git runs this filter: objects it writes or reuses are named only by manifests git has not recorded
    /// yet, so `tessera gc` must wait (see `StoreLock`).
    private let storeLock: StoreLock?

    public init(input: Int32 = 0, output: Int32 = 1) throws {
        reader = PktLineReader(fd: input)
        writer = PktLineWriter(fd: output)
        // The writer sends 1 MiB at a time and the reader asks for as much: pipes that hold that much let each side
        // work while the other does (git collects the smudged file; the cleaner hashes and compresses).
        FileSystem.growPipe(input, to: 1 << 20)
        FileSystem.growPipe(output, to: 1 << 20)
        repository = try GitRepository(discovering: ".")
        store = try repository.objectStore()
        storeLock = try StoreLock(store: store, mode: .shared)
        worktree = repository.workdir ?? FileManager.default.currentDirectoryPath
        statCache = try? StatCache(store: store, worktree: worktree)
        // Files the last checkout wrote have their stat data now: remember them (this was a post-checkout hook).
        statCache?.promotePending()
        // A clone made with only a global install gets its hooks here, the first time the filter runs in it (as
        // git-lfs's filter does); without them a push would send commits without their tensors. Only into the
        // default hooks folder: a custom core.hooksPath may be part of the worktree, and is the user's to manage.
        let hooks = GitHooks(repository: repository)
        if repository.workdir != nil, hooks.directory.isDefault, !hooks.areInstalled {
            _ = try? hooks.install()
        }
    }

    public func run() throws {
        try handshake()
        while true {
            guard let first = try readHeaderList() else { return }
            var headers: [String: String] = [:]
            for line in first {
                if let eq = line.firstIndex(of: "=") { headers[String(line[..<eq])] = String(line[line.index(after: eq)...]) }
            }
            let path = headers["pathname"] ?? "?"
            switch headers["command"] {
            case "clean": try handleClean(path: path)
            case "smudge": try handleSmudge(path: path)
            default:
                try drainContent()
                try respondError()
            }
        }
    }

    /// The header list of the next request, or nil when git closed the stream.
    private func readHeaderList() throws -> [String]? {
        var lines: [String] = []
        while true {
            guard let p = try reader.next() else { return lines.isEmpty ? nil : lines }
            switch p {
            case .flush: return lines
            case let .data(bytes):
                var s = String(decoding: bytes, as: UTF8.self)
                if s.hasSuffix("\n") { s.removeLast() }
                lines.append(s)
            }
        }
    }

    private func handshake() throws {
        let hello = try reader.readList()
        guard hello.contains("git-filter-client"), hello.contains("version=2") else {
            throw TesseraError(.git, "unexpected filter handshake from git: \(hello)", hint: "upgrade git to 2.11 or newer")
        }
        try writer.writeText("git-filter-server")
        try writer.writeText("version=2")
        try writer.flushPacket()
        try writer.drain()
        let capabilities = try reader.readList()
        for c in ["capability=clean", "capability=smudge"] where capabilities.contains(c) { try writer.writeText(c) }
        try writer.flushPacket()
        try writer.drain()
    }

    private func drainContent() throws {
        while let p = try reader.next() { if case .flush = p { return } }
    }

    private func respondError() throws {
        try writer.writeText("status=error")
        try writer.flushPacket()
        try writer.drain()
    }

    /// A bar for one large file (git's own progress counts files, not bytes), on a terminal only.
    static func progress(_ verb: String, _ path: String, size: Int) -> ProgressReporter {
        ProgressReporter(label: "tessera: \(verb) \(path)", total: size, unit: .bytes, enabled: isatty(2) != 0 && size >= 64 << 20)
    }

    private func report(_ error: any Error, path: String) {
        let text = (error as? TesseraError)?.description ?? String(describing: error)
        let line = text.hasPrefix(path) ? text : "\(path): \(text)"
        FileHandle.standardError.write(Data("tessera: \(line)\n".utf8))
    }

    // MARK: Clean

    private func handleClean(path: String) throws {
        let before = FileSystem.fileStat(worktree + "/" + path)
        var manifest: [UInt8]?
        var failure: (any Error)?
        if let before, let cache = statCache, let entry = cache.lookup(path), StatCache.matches(before, entry.stat) {
            // Fast path: confirm the content is what the cache remembers.
            var fast = FastHash()
            var length = 0
            while let p = try reader.next() {
                guard case let .data(bytes) = p else { break }
                fast.update(bytes)
                length += bytes.count
            }
            if length == entry.stat.size && fast.finalize() == entry.fastHash {
                manifest = entry.manifest
            } else {
                // The stat data lied (same size and times, different bytes): clean the file from the worktree, and
                // make sure it is the content git sent.
                (manifest, failure) = cleanFromWorktree(path: path, expectedFastHash: fast.finalize(), expectedLength: length)
            }
        } else {
            let staged = stagedVersion(of: path)
            let cleaner = CheckpointCleaner(store: store, fileName: path, deltaBases: staged.deltaBases, stagedManifest: staged.manifest)
            var fast = FastHash()
            var length = 0
            let bar = FilterProcess.progress("storing", path, size: before?.size ?? 0)
            defer { bar.finish() }
            do {
                while let p = try reader.next() {
                    guard case let .data(bytes) = p else { break }
                    if failure == nil {
                        do { try cleaner.consume(bytes) } catch { failure = error }
                    }
                    fast.update(bytes)
                    length += bytes.count
                    bar.update(completed: length)
                }
                if failure == nil { manifest = try cleaner.finish() }
            } catch {
                failure = error
            }
            if failure != nil { cleaner.abandon() }
            if let manifest, let before, let after = FileSystem.fileStat(worktree + "/" + path),
               StatCache.matches(before, after), after.size == length {
                statCache?.record(path, stat: after, fastHash: fast.finalize(), manifest: manifest, tmpDir: store.tmpDirectory)
            }
        }
        if let failure {
            report(failure, path: path)
            try respondError()
            return
        }
        try writer.writeText("status=success")
        try writer.flushPacket()
        try manifest!.withUnsafeBytes { try writer.writeData($0) }
        try writer.flushPacket()
        try writer.flushPacket()  // empty list: keep "success"
        try writer.drain()
    }

    /// The version of `path` staged in the index (before this add): its manifest text, and its tensors as bases for
    /// XOR deltas.
    private func stagedVersion(of path: String) -> (manifest: [UInt8]?, deltaBases: [String: Manifest.Stored]) {
        guard let bytes = try? repository.blob(":" + path), Manifest.looksLikeManifest(bytes),
              let m = try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: path) else { return (nil, [:]) }
        guard ProcessInfo.processInfo.environment["TESSERA_NO_DELTA"] == nil else { return (bytes, [:]) }
        var out: [String: Manifest.Stored] = [:]
        for t in m.tensors { out[t.name] = t.stored }
        return (bytes, out)
    }

    private func cleanFromWorktree(path: String, expectedFastHash: UInt64, expectedLength: Int) -> ([UInt8]?, (any Error)?) {
        do {
            let f = try FileDescriptor.open(worktree + "/" + path, flags: O_RDONLY)
            // The same delta bases as a clean of git's stream: the file is the same (checked below).
            let staged = stagedVersion(of: path)
            let cleaner = CheckpointCleaner(store: store, fileName: path, deltaBases: staged.deltaBases, stagedManifest: staged.manifest)
            var fast = FastHash()
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var length = 0
            while true {
                let n = try buffer.withUnsafeMutableBytes { try f.read(into: $0) }
                if n == 0 { break }
                try buffer.withUnsafeBytes { b in
                    let piece = UnsafeRawBufferPointer(rebasing: b[0..<n])
                    fast.update(piece)
                    try cleaner.consume(piece)
                }
                length += n
            }
            guard length == expectedLength, fast.finalize() == expectedFastHash else {
                cleaner.abandon()
                return (nil, TesseraError(.io, "\(path) changed while git was reading it", hint: "run the git command again"))
            }
            return (try cleaner.finish(), nil)
        } catch {
            return (nil, error)
        }
    }

    // MARK: Smudge

    private func handleSmudge(path: String) throws {
        var input: [UInt8] = []
        while let p = try reader.next() {
            guard case let .data(bytes) = p else { break }
            input += bytes
        }
        // Content that is not a manifest (a file committed before it was tracked) is checked out as it is.
        guard Manifest.looksLikeManifest(input) else {
            try writer.writeText("status=success")
            try writer.flushPacket()
            try input.withUnsafeBytes { try writer.writeData($0) }
            try writer.flushPacket()
            try writer.flushPacket()
            try writer.drain()
            return
        }
        do {
            let manifest = try Manifest.parse(String(decoding: input, as: UTF8.self), file: path)
            let missing = manifest.objects.filter { !store.contains($0.id) }
            if !missing.isEmpty {
                try LFSTransport(repository: repository, store: store).fetch(missing, forFile: path)
            }
            // Stream the file to git as objects decode (memory stays at one chunk). If anything fails part way,
            // the protocol lets the filter send "status=error" after the content, and git then discards it.
            try writer.writeText("status=success")
            try writer.flushPacket()
            var fast = FastHash()
            let bar = FilterProcess.progress("checking out", path, size: manifest.size)
            defer { bar.finish() }
            var written = 0
            do {
                try store.reconstructConcurrently(manifest, file: path) { piece in
                    fast.update(piece)
                    try writer.writeData(piece)
                    written += piece.count
                    bar.update(completed: written)
                }
            } catch {
                report(error, path: path)
                try writer.flushPacket()
                try writer.writeText("status=error")
                try writer.flushPacket()
                try writer.drain()
                return
            }
            try writer.flushPacket()
            try writer.flushPacket()
            try writer.drain()
            statCache?.recordPending(path, fastHash: fast.finalize(), size: manifest.size, manifest: input, tmpDir: store.tmpDirectory)
        } catch {
            report(error, path: path)
            try respondError()
        }
    }
}
