import Foundation
import TesseraCore
import TesseraGit
import TesseraIO

/// `REV:path` as git reads it: the first colon separates the revision from the path (`:path` is the index, `REV:`
/// the revision's top folder).
public struct RevisionPath: Equatable, Sendable {
    public var rev: String
    public var path: String

    public init(rev: String, path: String) {
        self.rev = rev
        self.path = path
    }

    /// Splits at the first colon; a spec without one is a revision with an empty path.
    public init(_ spec: String) {
        guard let colon = spec.firstIndex(of: ":") else {
            self.init(rev: spec, path: "")
            return
        }
        self.init(rev: String(spec[..<colon]), path: String(spec[spec.index(after: colon)...]))
    }

    public var spec: String { "\(rev):\(path)" }

    /// The spec without trailing slashes (`REV:folder/` names the folder), keeping `REV:/`.
    public static func trimmingSlashes(_ spec: String) -> String {
        var s = Substring(spec)
        while s.hasSuffix("/") && !s.hasSuffix(":/") { s = s.dropLast() }
        return String(s)
    }
}

extension Repository {
    /// The manifest of a tracked file named as `REV:path`, `:path` (the index), or a path in the worktree (its
    /// staged version). Anything else is an error saying why.
    public func trackedManifest(_ spec: String) throws -> (name: String, manifest: Manifest) {
        if spec.contains(":"), !FileSystem.exists(spec) {
            guard let manifest = try manifestBlob(spec, name: spec) else {
                throw TesseraError(.notFound, "\(spec) is not tracked by tessera (git stores it as a plain file)",
                                   hint: "`tessera track PATTERN` tracks files matching PATTERN from the next `git add`")
            }
            return (spec, manifest)
        }
        let relative = try relativePath(spec)
        if let bytes = try? git.blob(":" + relative), Manifest.looksLikeManifest(bytes) {
            return (relative, try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: relative))
        }
        throw TesseraError(.notFound, "\(spec) is not tracked by tessera in the index",
                           hint: "`git add` it (with a `tessera track` pattern that matches it), or name a revision: REV:\(spec)")
    }

    /// The manifest when `target` names a tracked file (`REV:path` of a file, `:path`, a worktree file or a path
    /// staged in the index); nil when it names something else a checkpoint resolver reads (a folder, an untracked
    /// file, a shard index, `REV:folder`).
    public func trackedManifestIfAny(_ target: String) throws -> (name: String, manifest: Manifest)? {
        if FileManager.default.fileExists(atPath: target) {
            guard !FileSystem.isDirectory(target), let relative = try? relativePath(target),
                  let bytes = try? git.blob(":" + relative), Manifest.looksLikeManifest(bytes) else { return nil }
            return (relative, try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: relative))
        }
        // A path in the index (tracked, not in the worktree); anything else is the resolver's to name.
        guard target.contains(":") else { return try? trackedManifest(target) }
        guard target.hasPrefix(":") || git.objectKind(RevisionPath.trimmingSlashes(target)) == .file,
              let bytes = try? git.blob(target), Manifest.looksLikeManifest(bytes) else { return nil }
        return (target, try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: target))
    }
}
