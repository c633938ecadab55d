import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraStore

/// `tessera repack`: re-bases delta chains by storing the staged version of each tracked checkpoint's tensors whole
/// where their chain is deeper than a limit, and staging the manifest that names the new objects.
///
/// Why forward only (docs/manifest-format.md, "Repacking"): an object's id is the SHA-256 of its file, trailer and
/// dependency ids included, and it is also its Git LFS oid; manifests in git history are immutable and name each
/// object by that id, with its encoding and dependencies. Re-encoding an object gives another file, so another id:
/// every manifest that names the old one would name an object that no longer exists, here and on every LFS remote.
/// So no object a manifest names is ever rewritten or deleted by repack; it writes new objects (whole) for the
/// newest version and stages a manifest naming them. Once committed, the newest version decodes with no chain, and
/// the next fine-tunes start new chains from it; older versions keep their objects (gc keeps whatever history
/// names, with its chains).
///
/// Atomic: every new object is written and made durable before the index changes, and the index changes in one
/// `git update-index` (git's own lock). Interrupted before that, the index still names the old, complete objects and
/// the new ones are unreachable (gc removes them after its grace period); after it, the new manifest names objects
/// that are all in place.
public struct Repack {
    public struct Result: Sendable, Equatable {
        /// Checkpoint files whose staged manifest changed.
        public var files = 0
        /// Objects stored again, whole.
        public var rewritten = 0
        /// Bytes of the new objects.
        public var bytesWritten = 0
        /// The deepest chain among the staged objects before the repack.
        public var deepestBefore = 0
    }

    public let repository: Repository
    /// Objects deeper than this are stored again whole (0: every delta).
    public let maximumDepth: Int
    /// Only these paths (relative to the worktree's top); all tracked checkpoints when empty.
    public let paths: [String]

    public init(repository: Repository, maximumDepth: Int, paths: [String] = []) {
        self.repository = repository
        self.maximumDepth = maximumDepth
        self.paths = paths
    }

    public func run(dryRun: Bool) throws -> Result {
        let store = repository.store
        let worktree = try repository.worktree
        // Held shared like any writer: a gc waits until the new manifest is staged (it keeps the new objects alive).
        let lock = try StoreLock(store: store, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        let wanted = Set(paths)
        let modes = Dictionary(repository.git.indexEntries().map { ($0.path, $0.mode) }, uniquingKeysWith: { a, _ in a })
        var result = Result()
        var info: [UInt8] = []
        let encoder = ObjectEncoder()
        let decoder = ObjectDecoder()
        let cache = try? StatCache(store: store, worktree: worktree)
        var restaged: [(path: String, old: [UInt8], new: [UInt8])] = []
        for (path, manifest) in repository.git.manifestsInIndex() where wanted.isEmpty || wanted.contains(path) {
            var segments = manifest.segments
            var changed = false
            for (k, segment) in segments.enumerated() {
                guard let stored = segment.stored else { continue }
                let depth: Int
                do { depth = try store.dependencyChain(of: stored.objectID).depth } catch let e as TesseraError {
                    throw TesseraError(e.code, "\(path): \(segmentName(segment)): \(e.message)", hint: e.hint)
                }
                result.deepestBefore = max(result.deepestBefore, depth)
                guard depth > maximumDepth else { continue }
                result.rewritten += 1
                changed = true
                if dryRun { continue }
                // One value at a time: memory is its raw bytes plus the chain's two buffers.
                let raw: [UInt8]
                do {
                    raw = try store.readAll(stored.objectID, expectedLength: segment.end - segment.begin, expectedRawSHA256: stored.rawSHA256, decoder: decoder)
                } catch let e as TesseraError {
                    throw TesseraError(e.code, "\(path): \(segmentName(segment)): \(e.message)", hint: e.hint)
                }
                let width = ObjectCodecs.codec(manifestName: Manifest.encodingName(stored.encoding))?.width ?? 1
                let whole = try raw.withUnsafeBytes {
                    try store.put(raw: $0, rawSHA256: stored.rawSHA256, choice: EncodingPolicy().plain(width: width), encoder: encoder,
                                  reusingExisting: false)
                }
                result.bytesWritten += whole.objectSize
                segments[k] = replacingStored(segment, with: whole)
            }
            guard changed else { continue }
            result.files += 1
            if dryRun { continue }
            let old = try repository.git.blob(":" + path)
            let text = Array(Manifest(format: manifest.format, size: manifest.size, segments: segments).render().utf8)
            let blob = try Subprocess.check(["git", "hash-object", "-w", "--stdin"], directory: worktree, input: text,
                                            what: "cannot write the new manifest of \(path)").stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            info += Array("\(String(modes[path] ?? 0o100644, radix: 8)) \(blob)\t\(path)\n".utf8)
            restaged.append((path, old, text))
        }
        guard !dryRun, !info.isEmpty else { return result }
        // The worktree file is unchanged: where the stat cache answers for it with the old manifest, it answers
        // with the new one from now on (else `git status` would clean the file back to the old manifest).
        if let cache {
            for r in restaged {
                if let entry = cache.lookup(r.path), entry.manifest == r.old {
                    cache.record(r.path, stat: entry.stat, fastHash: entry.fastHash, manifest: r.new, tmpDir: store.tmpDirectory)
                }
            }
        }
        try Subprocess.check(["git", "update-index", "--index-info"], directory: worktree, input: info, what: "cannot update the index")
        _ = try Subprocess.run(["git", "update-index", "-q", "--refresh"], directory: worktree)
        return result
    }

    private func replacingStored(_ segment: Manifest.Segment, with stored: Manifest.Stored) -> Manifest.Segment {
        switch segment {
        case let .header(b, e, _): return .header(begin: b, end: e, stored)
        case let .tensor(n, d, sh, b, e, _): return .tensor(name: n, dtype: d, shape: sh, begin: b, end: e, stored)
        case let .blocks(n, t, sh, b, e, _): return .blocks(name: n, type: t, shape: sh, begin: b, end: e, stored)
        case let .blob(b, e, _): return .blob(begin: b, end: e, stored)
        case let .gap(b, e, .object): return .gap(begin: b, end: e, .object(stored))
        case .gap: return segment
        }
    }

    private func segmentName(_ segment: Manifest.Segment) -> String {
        if case let .tensor(name, _, _, _, _, _) = segment { return "tensor '\(name)'" }
        if case let .blocks(name, _, _, _, _, _) = segment { return "tensor '\(name)'" }
        return "segment at byte \(segment.begin)"
    }
}
