import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

/// Options every command that reads the repository shares.
struct RepositoryOptions: ParsableArguments {
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    @Flag(help: "Print machine-readable JSON.")
    var json = false
}

/// The repository a command works in, and its object store.
struct RepositoryContext {
    let repository: GitRepository
    let store: ObjectStore

    init(directory: String) throws {
        repository = try GitRepository(discovering: directory)
        store = try repository.objectStore()
    }

    var worktree: String {
        get throws {
            guard let w = repository.workdir else {
                throw TesseraError(.usage, "this command needs a working tree, and this repository is bare", hint: "run it in a clone with a checkout")
            }
            return w
        }
    }

    /// Reads a manifest given as `REV:path`, `:path` (index), or a path in the worktree (its staged version, or the
    /// file itself if it holds a manifest).
    func manifest(_ spec: String) throws -> (name: String, manifest: Manifest) {
        if let colon = spec.firstIndex(of: ":"), !FileSystem.exists(spec) {
            let bytes = try repository.blob(spec)
            guard Manifest.looksLikeManifest(bytes) else {
                throw TesseraError(.notFound, "\(spec) is not tracked by tessera (git stores it as a plain file)",
                                   hint: "`tessera track PATTERN` tracks files matching PATTERN from the next `git add`")
            }
            _ = colon
            return (spec, try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: spec))
        }
        let relative = try relativePath(spec)
        if let bytes = try? repository.blob(":" + relative), Manifest.looksLikeManifest(bytes) {
            return (relative, try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: relative))
        }
        throw TesseraError(.notFound, "\(spec) is not tracked by tessera in the index",
                           hint: "`git add` it (with a `tessera track` pattern that matches it), or name a revision: REV:\(spec)")
    }

    /// A path relative to the worktree's top, from one relative to the current directory.
    func relativePath(_ path: String) throws -> String {
        let top = try worktree
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        let standardized = URL(fileURLWithPath: absolute).standardizedFileURL.path
        let topStd = URL(fileURLWithPath: top).standardizedFileURL.path
        if standardized.hasPrefix(topStd + "/") { return String(standardized.dropFirst(topStd.count + 1)) }
        return path
    }
}

/// Where this executable is, for git config (so hooks and filters run this very binary).
enum ExecutablePath {
    static var current: String {
        if let p = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return p }
        return CommandLine.arguments[0]
    }
}

func printJSON(_ value: JSONValue) {
    print(value.serialized())
}


