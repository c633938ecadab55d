import Foundation
import TesseraCore
import TesseraStore

/// `tessera install` / `uninstall`: git configuration for the filter, diff and merge drivers, and the hooks.
///
/// Hooks never overwrite a user's hook: an existing hook is renamed to `<hook>.tessera-chained` and Tessera's hook
/// runs it after its own work, with the same arguments and standard input. `uninstall` puts it back.
public struct Installer {
    public enum Scope { case local, global }

    public static let hookNames = ["pre-push", "post-checkout", "post-merge", "pre-commit"]
    static let marker = "# tessera-hook v1"

    /// The text of a hook, as in the repository's hooks/ folder (a test checks they are the same).
    public static func hookScript(_ name: String) -> String {
        let stdinNote = name == "pre-push" ? "\n# git feeds the pushed refs on stdin: keep a copy for the chained hook.\ninput=$(mktemp)\ntrap 'rm -f \"$input\"' EXIT\ncat >\"$input\"\n" : ""
        let feed = name == "pre-push" ? " <\"$input\"" : ""
        return """
        #!/bin/sh
        \(marker)
        # Installed by `tessera install`; `tessera uninstall` removes it and restores any hook it chained to.
        \(stdinNote)
        tessera=$(git config --get tessera.path 2>/dev/null)
        [ -x "$tessera" ] || tessera=tessera
        command -v "$tessera" >/dev/null 2>&1 || { echo "tessera: not found; install it or run 'git config tessera.path /path/to/tessera'" >&2; exit 1; }
        "$tessera" hook \(name) "$@"\(feed) || exit $?
        chained="$(dirname "$0")/\(name).tessera-chained"
        if [ -x "$chained" ]; then "$chained" "$@"\(feed) || exit $?; fi
        exit 0

        """
    }

    let repository: GitRepository?
    let executable: String

    public init(repository: GitRepository?, executable: String) {
        self.repository = repository
        self.executable = executable
    }

    private func configArgs(_ scope: Scope) -> [String] {
        scope == .global ? ["git", "config", "--global"] : ["git", "config", "--local"]
    }

    private var directory: String? { repository?.workdir ?? repository?.gitDirectory }

    public func settings() -> [(String, String)] {
        let exe = Installer.shellQuote(executable)
        return [
            ("filter.tessera.process", "\(exe) filter-process"),
            ("filter.tessera.required", "true"),
            ("diff.tessera.command", "\(exe) diff-driver"),
            ("merge.tessera.name", "Tessera tensor-wise merge"),
            ("merge.tessera.driver", "\(exe) merge-driver %O %A %B %P"),
            ("tessera.path", executable),
        ]
    }

    public func install(scope: Scope) throws -> [String] {
        var done: [String] = []
        for (k, v) in settings() {
            try Subprocess.check(configArgs(scope) + [k, v], directory: directory, what: "cannot set \(k)")
            done.append("\(k) = \(v)")
        }
        if scope == .local, let repository {
            done += try installHooks(repository: repository)
        }
        return done
    }

    public func uninstall(scope: Scope) throws -> [String] {
        var done: [String] = []
        for section in ["filter.tessera", "diff.tessera", "merge.tessera"] {
            let r = try Subprocess.run(configArgs(scope) + ["--remove-section", section], directory: directory)
            if r.status == 0 { done.append("removed [\(section)]") }
        }
        _ = try Subprocess.run(configArgs(scope) + ["--unset", "tessera.path"], directory: directory)
        if scope == .local, let repository {
            let hooks = hooksDirectory(repository)
            for name in Installer.hookNames {
                let path = "\(hooks)/\(name)"
                if let text = try? String(contentsOfFile: path, encoding: .utf8), text.contains(Installer.marker) {
                    try? FileManager.default.removeItem(atPath: path)
                    done.append("removed hook \(name)")
                    let chained = path + ".tessera-chained"
                    if FileSystem.exists(chained) {
                        try FileSystem.rename(chained, path)
                        done.append("restored your \(name) hook")
                    }
                }
            }
        }
        return done
    }

    func hooksDirectory(_ repository: GitRepository) -> String {
        if let custom = repository.configString("core.hooksPath") {
            if custom.hasPrefix("/") { return custom }
            return (repository.workdir ?? repository.commonDirectory) + "/" + custom
        }
        return repository.commonDirectory + "/hooks"
    }

    func installHooks(repository: GitRepository) throws -> [String] {
        let hooks = hooksDirectory(repository)
        try FileSystem.makeDirectories(hooks)
        var done: [String] = []
        for name in Installer.hookNames {
            let path = "\(hooks)/\(name)"
            if let existing = try? String(contentsOfFile: path, encoding: .utf8) {
                if existing.contains(Installer.marker) {
                    if existing == Installer.hookScript(name) { continue }
                } else {
                    let chained = path + ".tessera-chained"
                    guard !FileSystem.exists(chained) else {
                        throw TesseraError(.conflict, "both \(path) and \(chained) exist",
                                           hint: "merge them into one hook by hand, then run `tessera install` again")
                    }
                    try FileSystem.rename(path, chained)
                    done.append("kept your \(name) hook: it now runs after Tessera's (\(name).tessera-chained)")
                }
            }
            try Installer.hookScript(name).write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o755)
            done.append("installed hook \(name)")
        }
        return done
    }

    public static func shellQuote(_ s: String) -> String {
        if s.allSatisfy({ $0.isLetter || $0.isNumber || "/._-+".contains($0) }) { return s }
        return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// Whether the repository (or the user's global config) has the filter configured.
    public static func isInstalled(_ repository: GitRepository) -> Bool {
        repository.configString("filter.tessera.process") != nil
    }
}

/// `tessera track` / `untrack`: lines in the top-level `.gitattributes`.
public struct Attributes {
    public static let suffix = "filter=tessera diff=tessera merge=tessera -text"

    public static func line(for pattern: String) -> String { "\(escape(pattern)) \(suffix)" }

    static func escape(_ pattern: String) -> String {
        pattern.contains(" ") ? "\"" + pattern + "\"" : pattern
    }

    /// Files git itself reads from the worktree and the index (attributes, ignores, submodules, LFS config): they must
    /// stay plain text in git whatever pattern is tracked, or a fresh clone would read a manifest as its attributes.
    public static let gitFiles = [".gitattributes", ".gitignore", ".gitmodules", ".lfsconfig"]
    static let gitFilesGuard = gitFiles.map { "\($0) !filter !diff !merge" }

    /// Adds a pattern; returns false if it was already tracked. A pattern that matches one of git's own files
    /// (`*`, `.git*`) is followed by lines that exempt them.
    public static func track(_ pattern: String, in worktree: String) throws -> Bool {
        let path = worktree + "/.gitattributes"
        var text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let wanted = line(for: pattern)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        if lines.contains(wanted) { return false }
        // The guard lines must come after every tracked pattern (later lines win in .gitattributes).
        lines.removeAll { gitFilesGuard.contains($0) }
        lines.append(wanted)
        let patterns = lines.compactMap { l -> String? in
            guard l.hasSuffix(suffix) else { return nil }
            return unescape(String(l.dropLast(suffix.count)).trimmingCharacters(in: .whitespaces))
        }
        if gitFiles.contains(where: { f in patterns.contains { fnmatch($0, f, 0) == 0 } }) { lines += gitFilesGuard }
        text = lines.joined(separator: "\n") + "\n"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return true
    }

    static func unescape(_ p: String) -> String {
        if p.hasPrefix("\""), p.hasSuffix("\""), p.count >= 2 { return String(p.dropFirst().dropLast()) }
        return p
    }

    /// Removes a pattern; returns false if it was not tracked.
    public static func untrack(_ pattern: String, in worktree: String) throws -> Bool {
        let path = worktree + "/.gitattributes"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return false }
        let wanted = line(for: pattern)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var kept = lines.filter { $0 != wanted }
        if kept.count == lines.count { return false }
        let patterns = kept.compactMap { l -> String? in
            guard l.hasSuffix(suffix) else { return nil }
            return unescape(String(l.dropLast(suffix.count)).trimmingCharacters(in: .whitespaces))
        }
        if !gitFiles.contains(where: { f in patterns.contains { fnmatch($0, f, 0) == 0 } }) { kept.removeAll { gitFilesGuard.contains($0) } }
        try kept.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return true
    }

    /// The patterns Tessera tracks.
    public static func patterns(in worktree: String) -> [String] {
        guard let text = try? String(contentsOfFile: worktree + "/.gitattributes", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { l in
            guard l.hasSuffix(suffix) else { return nil }
            return unescape(String(l.dropLast(suffix.count)).trimmingCharacters(in: .whitespaces))
        }
    }
}
