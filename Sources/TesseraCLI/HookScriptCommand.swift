import ArgumentParser
import TesseraGit
import TesseraIO

struct HookScriptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hook-script",
        abstract: "Print the text of a hook that tessera installs (scripts/write-hooks.sh uses it).",
        shouldDisplay: false
    )

    @Argument var name: String

    @Flag(help: "The pre-push hook as installed beside git-lfs (its first 1024 bytes are git-lfs's own hook).")
    var gitLFS = false

    func run() throws {
        guard GitHooks.names.contains(name) else { throw TesseraError(.usage, "unknown hook \(name)", hint: "one of " + GitHooks.names.joined(separator: ", ")) }
        print(GitHooks.script(name, gitLFSPrefix: gitLFS ? GitHooks.gitLFSHookText(name) : nil), terminator: "")
    }
}
