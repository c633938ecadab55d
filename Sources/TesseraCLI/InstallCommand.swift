import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

struct InstallCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Configure git for Tessera's filter, diff and merge drivers, install its hooks, check files out.",
        discussion: """
        Per repository by default; --global configures your user once, and every clone
        then works (the filter installs the hooks the first time it runs in a
        repository). In a repository, tracked files that a clone left as manifests are
        fetched and checked out (as `git lfs pull`). Existing hooks are kept and
        chained; git-lfs's hooks keep working, in either order of install.
        Examples:
          tessera install && tessera track "*.safetensors"
          tessera install --global
        """
    )

    @Flag(help: "Configure the drivers in your global git config instead of this repository's.")
    var global = false

    @Flag(help: "Do not check out files left as manifests.")
    var skipCheckout = false

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let repository = global ? try? GitRepository(discovering: directory) : try GitRepository(discovering: directory)
        let (name, warning) = Installer.configuredName(forBinaryAt: ExecutablePath.current)
        let installer = Installer(repository: repository, executable: name)
        for line in try installer.install(scope: global ? .global : .local) { print(line) }
        if let warning { FileHandle.standardError.write(Data("tessera: \(warning)\n".utf8)) }
        guard let repository, repository.workdir != nil, !skipCheckout else {
            if global && repository == nil {
                print("clones made before this keep manifests where checkpoints belong: run `tessera pull` in them")
            }
            return
        }
        let store = try repository.objectStore()
        let lock = try StoreLock(store: store, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        for path in try ManifestCheckout(repository: repository, store: store).checkOut() { print("checked out \(path)") }
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
        let lines = try Installer(repository: repository, executable: "tessera").uninstall(scope: global ? .global : .local)
        if lines.isEmpty { print("nothing to uninstall") }
        for line in lines { print(line) }
    }
}

struct TrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Track files matching a pattern with Tessera (writes .gitattributes).",
        discussion: """
        With no pattern, lists the tracked patterns. Installs Tessera in the
        repository first if it is not yet, so that a tracked pattern never commits raw
        files by accident.
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
            let (name, warning) = Installer.configuredName(forBinaryAt: ExecutablePath.current)
            _ = try Installer(repository: repository, executable: name).install(scope: .local)
            print("installed tessera in this repository (git config and hooks)")
            if let warning { FileHandle.standardError.write(Data("tessera: \(warning)\n".utf8)) }
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
