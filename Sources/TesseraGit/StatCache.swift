import Foundation
import TesseraCore
import TesseraStore
import TesseraIO

/// Remembers, per worktree file, the stat data and a fast content hash of the last file cleaned (or checked out),
/// with its manifest. When git asks to clean a file again (`git status` on a racily-clean index entry, `git checkout
/// -b`, `git add` of an unchanged file), the filter only confirms the fast hash of the bytes git sends and answers
/// with the remembered manifest: no SHA-256, no compression, no store access.
///
/// Entries live in `<common git dir>/tessera/statcache/<sha256(worktree \0 path)>`:
///     tessera-statcache 1 <size> <mtime ns> <ctime ns> <inode> <fast hash hex>\n<manifest text>
public struct StatCache {
    public let directory: String
    public let worktree: String

    public init(store: ObjectStore, worktree: String) throws {
        directory = store.root + "/statcache"
        self.worktree = worktree
        try FileSystem.makeDirectories(directory)
    }

    public struct Entry {
        public var stat: FileSystem.Stat
        public var fastHash: UInt64
        public var manifest: [UInt8]
    }

    private func entryPath(_ path: String) -> String {
        directory + "/" + SHA256Hasher.hex(Array((worktree + "\u{0}" + path).utf8))
    }

    public func lookup(_ path: String) -> Entry? {
        guard let bytes = try? FileSystem.readFile(entryPath(path)), let nl = bytes.firstIndex(of: 0x0A) else { return nil }
        let head = String(decoding: bytes[..<nl], as: UTF8.self).split(separator: " ")
        guard head.count == 7, head[0] == "tessera-statcache", head[1] == "1",
              let size = Int(head[2]), let m = Int(head[3]), let c = Int(head[4]), let ino = UInt64(head[5]),
              let h = UInt64(head[6], radix: 16) else { return nil }
        return Entry(stat: FileSystem.Stat(size: size, mtimeNanoseconds: m, ctimeNanoseconds: c, inode: ino, device: 0),
                     fastHash: h, manifest: Array(bytes[(nl + 1)...]))
    }

    public func record(_ path: String, stat: FileSystem.Stat, fastHash: UInt64, manifest: [UInt8], tmpDir: String) {
        let head = "tessera-statcache 1 \(stat.size) \(stat.mtimeNanoseconds) \(stat.ctimeNanoseconds) \(stat.inode) \(String(fastHash, radix: 16))\n"
        try? FileSystem.writeAtomically(Array(head.utf8) + manifest, to: entryPath(path), tmpDir: tmpDir)
    }

    /// Whether the file's current stat data matches the entry (device is not compared: it can change across mounts).
    public static func matches(_ a: FileSystem.Stat, _ b: FileSystem.Stat) -> Bool {
        a.size == b.size && a.mtimeNanoseconds == b.mtimeNanoseconds && a.ctimeNanoseconds == b.ctimeNanoseconds && a.inode == b.inode
    }

    /// Pending entries written at checkout (smudge): the file git is about to write, with the manifest it came from.
    /// The post-checkout hook promotes them to entries once git has written the files and their stat data exists.
    public func recordPending(_ path: String, fastHash: UInt64, size: Int, manifest: [UInt8], tmpDir: String) {
        let head = "tessera-pending 1 \(size) \(String(fastHash, radix: 16)) \(Manifest.escapeName(path))\n"
        try? FileSystem.writeAtomically(Array(head.utf8) + manifest, to: entryPath(path) + ".pending", tmpDir: tmpDir)
    }

    /// Promotes every pending entry of this worktree whose file now has the recorded size.
    public func promotePending() {
        for name in FileSystem.list(directory) where name.hasSuffix(".pending") {
            let p = directory + "/" + name
            guard let bytes = try? FileSystem.readFile(p), let nl = bytes.firstIndex(of: 0x0A) else { continue }
            let head = String(decoding: bytes[..<nl], as: UTF8.self).split(separator: " ")
            guard head.count == 5, let size = Int(head[2]), let h = UInt64(head[3], radix: 16) else { FileSystem.remove(p); continue }
            let path = String(head[4]).removingPercentEncoding ?? String(head[4])
            // Only this worktree's entries are named by this worktree's paths.
            guard entryPath(path) + ".pending" == p else { continue }
            if let st = FileSystem.fileStat(worktree + "/" + path), st.size == size {
                let head = "tessera-statcache 1 \(st.size) \(st.mtimeNanoseconds) \(st.ctimeNanoseconds) \(st.inode) \(String(h, radix: 16))\n"
                try? FileSystem.writeAtomically(Array(head.utf8) + Array(bytes[(nl + 1)...]), to: entryPath(path), tmpDir: directory)
            }
            FileSystem.remove(p)
        }
    }
}
