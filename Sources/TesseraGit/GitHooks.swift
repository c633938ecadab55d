import Foundation
import TesseraCore
import TesseraStore
import TesseraIO

/// The git hooks Tessera needs in a repository: `pre-push` (send the objects the pushed commits' manifests name) and
/// `pre-commit` (refuse to commit a tracked checkpoint raw, or a manifest naming absent objects).
///
/// They are installed by `tessera install`, and by the filter the first time it runs in a repository (as git-lfs's
/// filter does), so that a clone made with only a global install still pushes its tensors.
///
/// A user's own hook is never overwritten: it is renamed `<hook>.tessera-chained` and Tessera's hook runs it after
/// its own work, with the same arguments and standard input; `uninstall` puts it back.
///
/// Coexisting with git-lfs, which wants `pre-push` too: when git-lfs is installed, Tessera's `pre-push` begins with
/// git-lfs's own hook, byte for byte, padded to 1024 bytes. `git lfs install` (and `git lfs update`) compare only the
/// first 1024 bytes of an existing hook with their text, so they accept this hook as theirs and leave it alone,
/// in either order of installation. The padding ends the line that runs `git lfs pre-push` with `</dev/null`, so
/// that run does nothing; Tessera's part then keeps the pushed refs from standard input and runs Tessera's pre-push
/// and git-lfs's real one with them. A plain git-lfs `pre-push` found at install time is replaced by this hook (which
/// does its work), and `uninstall` writes git-lfs's hook back.
public struct GitHooks {
    public static let names = ["pre-push", "pre-commit"]
    /// Hooks that earlier versions installed (their work now happens when the filter starts); removed on install.
    static let retiredNames = ["post-checkout", "post-merge"]
    /// Every Tessera hook carries this (any version).
    static let markerPrefix = "# tessera-hook v"
    static let marker = "# tessera-hook v2"
    /// How much of a hook git-lfs reads to recognise its own.
    static let gitLFSPrefixLength = 1024

    let repository: GitRepository

    public init(repository: GitRepository) { self.repository = repository }

    /// Where git runs hooks from (core.hooksPath or `<common git dir>/hooks`), and whether it is the default.
    public var directory: (path: String, isDefault: Bool) {
        if let custom = repository.configString("core.hooksPath") {
            if custom.hasPrefix("/") { return (custom, false) }
            if custom.hasPrefix("~/") { return (NSHomeDirectory() + custom.dropFirst(), false) }
            return ((repository.workdir ?? repository.commonDirectory) + "/" + custom, false)
        }
        return (repository.commonDirectory + "/hooks", true)
    }

    // MARK: Texts

    /// The hook text `git lfs install` writes for `name` with the git-lfs on this machine, or nil without git-lfs.
    /// Read from a scratch repository, so that it is exactly the installed version's text.
    public static func gitLFSHookText(_ name: String) -> String? {
        gitLFSHookTexts?[name]
    }

    private static let gitLFSHookTexts: [String: String]? = {
        let scratch = NSTemporaryDirectory() + "tessera-lfs-hooks-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let unset = Subprocess.repositoryVariables
        guard (try? Subprocess.run(["git", "init", "-q", scratch], unsetting: unset))?.status == 0,
              (try? Subprocess.run(["git", "lfs", "install", "--local", "--skip-smudge"], directory: scratch, unsetting: unset))?.status == 0
        else { return nil }
        var texts: [String: String] = [:]
        for name in ["pre-push", "post-checkout", "post-commit", "post-merge"] {
            if let t = try? String(contentsOfFile: scratch + "/.git/hooks/" + name, encoding: .utf8) { texts[name] = t }
        }
        return texts["pre-push"] == nil ? nil : texts
    }()

    /// The text of Tessera's hook `name`. `gitLFSPrefix` is git-lfs's text for the same hook (pre-push only).
    public static func script(_ name: String, gitLFSPrefix: String? = nil) -> String {
        let pushes = name == "pre-push"
        var head = ""
        var runsGitLFS = false
        if pushes, let lfs = gitLFSPrefix {
            // git-lfs's hook, whose last line runs `git lfs pre-push "$@"`: padded with spaces up to byte 1024 on that
            // same line, which then ends with a redirection from /dev/null (see the type's comment).
            var text = lfs
            while text.hasSuffix("\n") { text.removeLast() }
            let padding = max(1, gitLFSPrefixLength - text.utf8.count)
            head = text + String(repeating: " ", count: padding) + "</dev/null\n"
            runsGitLFS = true
        } else {
            head = "#!/bin/sh\n"
        }
        let stdin = pushes ? """

        # git feeds the pushed refs on stdin: keep them for each command below.
        input=$(mktemp) || exit 1
        trap 'rm -f "$input"' EXIT
        cat >"$input"

        """ : "\n"
        let feed = pushes ? " <\"$input\"" : ""
        let gitLFS = runsGitLFS ? "git lfs pre-push \"$@\"\(feed) || exit $?\n" : ""
        let why = runsGitLFS
            ? "# The lines above are git-lfs's own pre-push hook in the first 1024 bytes, so that `git lfs install` keeps this\n# hook; its run above gets no refs, the one below gets them.\n"
            : ""
        return head + """
        \(marker)
        # Installed by tessera (`tessera install`, or its filter the first time it ran here); `tessera uninstall` removes
        # it and restores any hook it chained to.
        \(why)\(stdin)tessera=$(git config --get tessera.path 2>/dev/null)
        [ -n "$tessera" ] || tessera=tessera
        command -v "$tessera" >/dev/null 2>&1 || { echo "tessera: not found; put it on your PATH or run 'git config tessera.path /path/to/tessera'" >&2; exit 1; }
        "$tessera" hook \(name) "$@"\(feed) || exit $?
        \(gitLFS)chained="$(dirname "$0")/\(name).tessera-chained"
        if [ -x "$chained" ]; then "$chained" "$@"\(feed) || exit $?; fi
        exit 0

        """
    }

    /// The text installed for `name` on this machine.
    func currentScript(_ name: String) -> String {
        GitHooks.script(name, gitLFSPrefix: name == "pre-push" ? GitHooks.gitLFSHookText(name) : nil)
    }

    static func isTessera(_ text: String) -> Bool { text.contains(markerPrefix) }

    /// A hook git-lfs wrote (any version): a shebang, git-lfs's check that it is installed, and `git lfs NAME "$@"`.
    static func isGitLFS(_ text: String, name: String) -> Bool {
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return lines.count == 3 && lines[0].hasPrefix("#!") && lines[1].hasPrefix("command -v git-lfs")
            && lines[2] == "git lfs \(name) \"$@\""
    }

    // MARK: Installing

    /// Whether Tessera's hooks are in place (what the filter checks when it starts).
    public var areInstalled: Bool {
        let dir = directory.path
        return GitHooks.names.allSatisfy { name in
            (try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)).map(GitHooks.isTessera) ?? false
        }
    }

    /// Installs (or updates) the hooks; returns what it did, one line each.
    @discardableResult
    public func install() throws -> [String] {
        let dir = directory.path
        try FileSystem.makeDirectories(dir)
        var done: [String] = []
        for name in GitHooks.retiredNames {
            done += try remove(name, in: dir)
        }
        for name in GitHooks.names {
            let path = "\(dir)/\(name)"
            let wanted = currentScript(name)
            if let existing = try? String(contentsOfFile: path, encoding: .utf8) {
                if GitHooks.isTessera(existing) {
                    if existing == wanted { continue }
                } else if GitHooks.isGitLFS(existing, name: name) && name == "pre-push" && wanted.contains("git lfs pre-push") {
                    // Tessera's hook runs git-lfs's pre-push itself: replacing it keeps git-lfs working.
                    done.append("took over git-lfs's \(name) hook (Tessera's runs it)")
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
            try wanted.write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o755)
            done.append("installed hook \(name)")
        }
        return done
    }

    /// Removes Tessera's hooks and restores what they replaced.
    public func uninstall() throws -> [String] {
        let dir = directory.path
        var done: [String] = []
        for name in GitHooks.names + GitHooks.retiredNames {
            let path = "\(dir)/\(name)"
            let hadGitLFS = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").contains("git lfs \(name)")
            let removed = try remove(name, in: dir)
            done += removed
            // A hook that carried git-lfs's work gives it back to git-lfs (unless a chained hook was restored).
            if !removed.isEmpty, hadGitLFS, !FileSystem.exists(path), let lfs = GitHooks.gitLFSHookText(name) {
                try lfs.write(toFile: path, atomically: true, encoding: .utf8)
                chmod(path, 0o755)
                done.append("restored git-lfs's \(name) hook")
            }
        }
        return done
    }

    private func remove(_ name: String, in dir: String) throws -> [String] {
        let path = "\(dir)/\(name)"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), GitHooks.isTessera(text) else { return [] }
        FileSystem.remove(path)
        var done = ["removed hook \(name)"]
        let chained = path + ".tessera-chained"
        if FileSystem.exists(chained) {
            try FileSystem.rename(chained, path)
            done.append("restored your \(name) hook")
        }
        return done
    }
}
