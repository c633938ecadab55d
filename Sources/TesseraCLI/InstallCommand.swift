import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit

struct InstallCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Configure git to use Tessera's filter, diff and merge drivers, and install its hooks.",
        discussion: """
        Per repository by default; --global configures the drivers for your user (hooks are per repository: run
        `tessera install` in each repository that pushes Tessera objects). Existing hooks are kept and chained.
        Example:
          tessera install && tessera track "*.safetensors"
        """
    )

    @Flag(help: "Configure the drivers in your global git config instead of this repository's.")
    var global = false

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let repository = global ? try? GitRepository(discovering: directory) : try GitRepository(discovering: directory)
        let installer = Installer(repository: repository, executable: ExecutablePath.current)
        for line in try installer.install(scope: global ? .global : .local) { print(line) }
        if global, let repository, repository.workdir != nil {
            for line in try installer.install(scope: .local) where line.contains("hook") { print(line) }
        }
    }
}

struct UninstallCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall",
        abstract: "Undo `tessera install`: remove the git configuration and hooks, restoring chained hooks.",
        discussion: "Example:\n  tessera uninstall"
    )

    @Flag(help: "Remove the global configuration instead of this repository's.")
    var global = false

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let repository = try? GitRepository(discovering: directory)
        if !global && repository == nil { throw TesseraError(.usage, "not a git repository", hint: "use --global outside a repository") }
        let lines = try Installer(repository: repository, executable: ExecutablePath.current).uninstall(scope: global ? .global : .local)
        if lines.isEmpty { print("nothing to uninstall") }
        for line in lines { print(line) }
    }
}

struct TrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Track files matching a pattern with Tessera (writes .gitattributes).",
        discussion: """
        With no pattern, lists the tracked patterns. Installs Tessera in the repository first if it is not yet, so
        that a tracked pattern never commits raw files by accident.
        Examples:
          tessera track "*.safetensors"
          tessera track "checkpoints/**"
        """
    )

    @Argument(help: "gitattributes patterns, e.g. \"*.safetensors\".")
    var patterns: [String] = []

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let repository = try GitRepository(discovering: directory)
        guard let worktree = repository.workdir else { throw TesseraError(.usage, "this repository is bare", hint: "track files in a clone with a working tree") }
        if patterns.isEmpty {
            let tracked = Attributes.patterns(in: worktree)
            if tracked.isEmpty { print("no patterns are tracked; try: tessera track \"*.safetensors\"") }
            for p in tracked { print(p) }
            return
        }
        if !Installer.isInstalled(repository) {
            _ = try Installer(repository: repository, executable: ExecutablePath.current).install(scope: .local)
            print("installed tessera in this repository (git config and hooks)")
        }
        for p in patterns {
            print(try Attributes.track(p, in: worktree) ? "tracking \(p)" : "\(p) is already tracked")
        }
    }
}

struct UntrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "untrack",
        abstract: "Stop tracking a pattern (edits .gitattributes; files already committed stay as they are).",
        discussion: "Example:\n  tessera untrack \"*.bin\""
    )

    @Argument(help: "Patterns given to `tessera track`.")
    var patterns: [String]

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let repository = try GitRepository(discovering: directory)
        guard let worktree = repository.workdir else { throw TesseraError(.usage, "this repository is bare") }
        for p in patterns {
            print(try Attributes.untrack(p, in: worktree) ? "untracked \(p)" : "\(p) was not tracked")
        }
    }
}
