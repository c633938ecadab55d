import Foundation
import TesseraCore
import TesseraStore

/// `tessera install` / `uninstall`: git configuration for the filter, diff and merge drivers, and the hooks
/// (`GitHooks`).
public struct Installer {
    public enum Scope { case local, global }

    let repository: GitRepository?
    /// How git config names the tessera executable: `tessera` when that name on the PATH is this very binary (so
    /// moving or upgrading the binary keeps every repository working), else this binary's absolute path.
    public let executable: String

    public init(repository: GitRepository?, executable: String) {
        self.repository = repository
        self.executable = executable
    }

    /// The name to write into git config for the binary at `current` (see `executable`), and a warning when only
    /// its absolute path will do.
    public static func configuredName(forBinaryAt current: String) -> (name: String, warning: String?) {
        let resolved = URL(fileURLWithPath: current).resolvingSymlinksInPath().path
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = String(dir) + "/tessera"
            guard FileManager.default.isExecutableFile(atPath: candidate) else { continue }
            // The first `tessera` on the PATH is the one git's shell will run.
            if URL(fileURLWithPath: candidate).resolvingSymlinksInPath().path == resolved { return ("tessera", nil) }
            break
        }
        return (current, "this tessera (\(current)) is not the `tessera` on your PATH, so its absolute path went into git config; moving or upgrading it will break the filter. Put it on your PATH (scripts/setup.sh links it into /usr/local/bin) and run `tessera install` again")
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
            // For `git log -p`, `git show` and `git diff --no-ext-diff`: one readable line per tensor.
            ("diff.tessera.textconv", "\(exe) textconv"),
            ("diff.tessera.cachetextconv", "true"),
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
        if let repository, repository.workdir != nil || scope == .local {
            done += try GitHooks(repository: repository).install()
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
            done += try GitHooks(repository: repository).uninstall()
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
    static let adapterConfigLine = "adapter_config.json !filter diff=tessera"
    static func takesInAdapterWeights(_ pattern: String) -> Bool {
        ["adapter_model.safetensors", "a/adapter_model.safetensors"].contains { (name: String) in fnmatch(pattern, name, 0) == 0 }
    }

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
        // A tracked pattern that takes in PEFT adapter weights: their folder's adapter_config.json stays plain text in
        // git (whatever the pattern) but goes through tessera's diff, which pairs it with the weights (ΔW = s·B·A).
        lines.removeAll { $0 == adapterConfigLine }
        if patterns.contains(where: takesInAdapterWeights) {
            lines.append(adapterConfigLine)
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
        if !patterns.contains(where: takesInAdapterWeights) {
            kept.removeAll { $0 == adapterConfigLine }
        }
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
