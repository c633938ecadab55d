import Foundation
import TesseraCore
import TesseraIO
import TesseraStore

/// The SHA-256 of every tensor of a checkpoint file on disk, remembered with the file's stat data, so that merging the
/// same inputs again (the usual way to tune a merge config) does not hash them again for the provenance: about a third
/// of a model_stock merge's CPU time. git's index does the same for the worktree's files.
///
/// An entry is used only while the file's size, modification and change times, inode and device are those recorded;
/// any write to the file changes its change time (which no user call can set). An entry is written only for a file
/// whose change time was at least `settledInterval` before the file was opened: a write in the same clock tick as the
/// recorded one could otherwise leave the stat data unchanged.
///
/// Entries are small JSON files named by the SHA-256 of the file's real path, in `$XDG_CACHE_HOME/tessera/tensor-hashes/`
/// (`~/.cache/...`). Deleting the folder is always safe. A damaged or foreign entry is ignored; a cache that cannot be
/// written is skipped. Only files on disk are cached: tensors read from the object store carry their hashes already.
public struct TensorHashCache: Sendable {
    public let directory: String
    static let format = "tessera-tensor-hashes 1"
    public static let defaultSettledInterval: Int = 2_000_000_000

    /// How old a file's last change must be when it is opened for its hashes to be remembered (tests set 0).
    public let settledInterval: Int

    public init(directory: String, settledInterval: Int = TensorHashCache.defaultSettledInterval) {
        self.directory = directory
        self.settledInterval = settledInterval
    }

    /// The user's cache folder: `$XDG_CACHE_HOME/tessera/tensor-hashes`, else `~/.cache/tessera/tensor-hashes`; nil
    /// when neither is set. One folder for every repository: entries are named by the files' real paths.
    public static func user() -> TensorHashCache? {
        let environment = ProcessInfo.processInfo.environment
        if let xdg = environment["XDG_CACHE_HOME"], xdg.hasPrefix("/") {
            return TensorHashCache(directory: xdg + "/tessera/tensor-hashes")
        }
        if let home = environment["HOME"], !home.isEmpty {
            return TensorHashCache(directory: home + "/.cache/tessera/tensor-hashes")
        }
        return nil
    }

    private func entryPath(_ file: String) -> String? {
        guard let real = realpath(file, nil) else { return nil }
        defer { free(real) }
        return directory + "/" + SHA256Hasher.hex(Array(String(cString: real).utf8)) + ".json"
    }

    private static func statText(_ st: FileSystem.Stat) -> String {
        "\(st.size) \(st.mtimeNanoseconds) \(st.ctimeNanoseconds) \(st.inode) \(st.device)"
    }

    /// The remembered hashes of the file at `path`, if its stat data is the recorded one and the entry names exactly
    /// `tensorNames`; nil otherwise.
    public func lookup(_ path: String, stat: FileSystem.Stat, tensorNames: [String]) -> [String: String]? {
        guard let entry = entryPath(path), let bytes = try? FileSystem.readFile(entry, limit: 64 << 20),
              let json = try? JSONParser.parse(bytes),
              json["format"]?.stringValue == Self.format, json["stat"]?.stringValue == Self.statText(stat),
              let pairs = json["hashes"]?.objectValue, pairs.count == tensorNames.count else { return nil }
        var hashes: [String: String] = [:]
        for (name, value) in pairs {
            guard let hex = value.stringValue, hex.count == 64, hex.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) })
            else { return nil }
            hashes[name] = hex
        }
        guard tensorNames.allSatisfy({ hashes[$0] != nil }) else { return nil }
        return hashes
    }

    /// Remembers the hashes of the file at `path`, whose stat data was `opened` when it was opened at `openedAt`
    /// (nanoseconds since 1970), if the file is unchanged since and had settled before. Failures are ignored: the cache
    /// only saves time.
    public func record(_ path: String, opened: FileSystem.Stat, openedAt: Int, current: FileSystem.Stat?, hashes: [(String, String)]) {
        guard let current, current == opened, opened.ctimeNanoseconds <= openedAt - settledInterval,
              opened.mtimeNanoseconds <= openedAt - settledInterval, let entry = entryPath(path) else { return }
        let json = JSONValue.object([
            ("format", .string(Self.format)),
            ("stat", .string(Self.statText(opened))),
            ("hashes", .object(hashes.map { ($0.0, .string($0.1)) })),
        ])
        guard (try? FileSystem.makeDirectories(directory)) != nil else { return }
        try? FileSystem.writeAtomically(Array(json.serialized().utf8), to: entry, tmpDir: directory, durable: false)
    }
}
