#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

/// Tracked files whose worktree copy is still their manifest: what a clone made before `tessera install` (or
/// without the filter configured) leaves, as a Git LFS clone leaves pointer files. git cannot repair them by itself:
/// their stat data matches the index, so `git checkout -f` and `git reset --hard` see nothing to do. `tessera
/// install` and `tessera pull` check them out, as `git lfs pull` does.
public struct ManifestCheckout {
    let repository: GitRepository
    let store: ObjectStore

    public init(_ repository: Repository) {
        self.repository = repository.git
        store = repository.store
    }

    /// Paths (relative to the worktree) of tracked files whose worktree content is exactly the manifest staged for
    /// them, with that manifest.
    public func filesLeftAsManifests() throws -> [(path: String, manifest: Manifest, text: [UInt8])] {
        guard let worktree = repository.workdir else { return [] }
        var out: [(String, Manifest, [UInt8])] = []
        for (path, blob, _) in repository.indexEntries() where repository.attribute("filter", path: path) == "tessera" {
            let file = worktree + "/" + path
            guard let st = FileSystem.fileStat(file), st.size < CheckpointCleaner.manifestPassthroughLimit,
                  let head = try? FileSystem.readFile(file, limit: CheckpointCleaner.manifestPassthroughLimit),
                  Manifest.looksLikeManifest(head), let staged = repository.blobBytes(id: blob), staged == head,
                  let m = try? Manifest.parse(String(decoding: head, as: UTF8.self), file: path) else { continue }
            out.append((path, m, head))
        }
        return out
    }

    /// Fetches what they need and writes the real files in their place; returns the paths checked out.
    @discardableResult
    public func checkOut(remote: String? = nil) throws -> [String] {
        guard let worktree = repository.workdir else { return [] }
        let files = try filesLeftAsManifests()
        guard !files.isEmpty else { return [] }
        var needed: [(id: String, size: Int)] = []
        var seen = Set<String>()
        for f in files { for o in f.manifest.objects where seen.insert(o.id).inserted && !store.contains(o.id) { needed.append(o) } }
        if !needed.isEmpty { try LFSTransport(repository: repository, store: store).fetch(needed, remote: remote) }
        let cache = try StatCache(store: store, worktree: worktree)
        let total = files.reduce(0) { $0 + $1.manifest.size }
        let bar = ProgressReporter(label: "tessera: checking out", total: total, unit: .bytes, enabled: isatty(2) != 0 && total > 4_000_000)
        var written = 0
        var done: [String] = []
        for f in files {
            let target = worktree + "/" + f.path
            let tmp = target + ".tessera-checkout"
            var fast = FastHash()
            do {
                let out = try FileDescriptor.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
                try store.reconstructConcurrently(f.manifest, file: f.path) { piece in
                    fast.update(piece)
                    try out.writeAll(piece)
                    written += piece.count
                    bar.update(completed: written)
                }
                try out.sync()
                // Keep the file's permission bits (the executable bit is the only one git records).
                if let mode = FileManager.default.isExecutableFile(atPath: target) ? 0o755 : nil { chmod(tmp, mode_t(mode)) }
                try FileSystem.rename(tmp, target)
            } catch {
                FileSystem.remove(tmp)
                bar.finish()
                throw error
            }
            // git will re-read the file (its stat data changed): the stat cache answers with the manifest at once.
            if let st = FileSystem.fileStat(target) {
                cache.record(f.path, stat: st, fastHash: fast.finalize(), manifest: f.text, tmpDir: store.tmpDirectory)
            }
            done.append(f.path)
        }
        bar.finish()
        // git takes a file whose size changed for modified without reading it, unless the index entry carries no
        // stat data: re-staging the same blobs (`--index-info`) clears it, and the refresh then reads the files
        // through the filter, which answers from the stat cache.
        var info: [UInt8] = []
        let entries = Dictionary(repository.indexEntries().map { ($0.path, ($0.blob, $0.mode)) }, uniquingKeysWith: { a, _ in a })
        for path in done {
            guard let (blob, mode) = entries[path] else { continue }
            info += Array("\(String(mode, radix: 8)) \(blob)\t\(path)\n".utf8)
        }
        try Subprocess.check(["git", "update-index", "--index-info"], directory: worktree, input: info, what: "cannot update the index")
        _ = try Subprocess.run(["git", "update-index", "-q", "--refresh"], directory: worktree)
        return done
    }
}
