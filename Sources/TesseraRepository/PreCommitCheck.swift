import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraStore

/// What the pre-commit hook refuses: a tracked checkpoint staged raw (the filter was not configured when it was
/// added), and a staged manifest naming objects this repository does not have (a checkpoint nobody could check out).
public enum PreCommitCheck {
    /// Raw files up to this size are let through: small files matching a pattern by accident are not worth a refusal.
    public static let rawFileAllowance = 1 << 20

    /// Checks the staged additions and modifications; throws the refusal.
    public static func run(_ repository: Repository) throws {
        let git = repository.git
        let r = try Subprocess.run(["git", "diff", "--cached", "--name-only", "-z", "--diff-filter=AM"], directory: git.workdir)
        let paths = r.stdout.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        var raw: [String] = []
        var dangling: [String] = []
        for path in paths where git.attribute("filter", path: path) == "tessera" {
            guard let bytes = try? git.blob(":" + path) else { continue }
            if !Manifest.looksLikeManifest(bytes) {
                if bytes.count > rawFileAllowance { raw.append("\(path) (\(humanBytes(bytes.count)))") }
                continue
            }
            // A manifest staged without the filter (`git update-index`, a script) must name objects this repository
            // has. The manifest of HEAD itself may lack local objects (a clone that has not fetched them): the
            // remote has those.
            if let head = try? git.blob("HEAD:" + path), head == bytes { continue }
            if let m = try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: path) {
                let absent = m.objectIDs.filter { !repository.store.contains($0) }
                if !absent.isEmpty { dangling.append("\(path) (\(absent.count) of \(m.objectIDs.count) objects, e.g. \(absent[0].prefix(12)))") }
            } else {
                dangling.append("\(path) (not a valid manifest)")
            }
        }
        if !dangling.isEmpty {
            throw TesseraError(.objectMissing, "staged manifest of \(dangling.joined(separator: ", ")) names objects that are not in this repository's store",
                               hint: "`git add` the real file again (the filter stores its tensors), or fetch the objects first (`tessera fetch`)")
        }
        if !raw.isEmpty {
            throw TesseraError(.usage, "\(raw.joined(separator: ", ")) is tracked by tessera in .gitattributes but was staged as a raw file, because the tessera filter is not configured here",
                               hint: "run `tessera install`, then `git add` the file again (or commit with --no-verify to store it raw on purpose)")
        }
    }
}
