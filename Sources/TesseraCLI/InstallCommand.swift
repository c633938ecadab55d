import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraRepository
import TesseraStore

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
        if let warning { printError("tessera: \(warning)") }
        guard let repository, repository.workdir != nil, !skipCheckout else {
            if global && repository == nil {
                print("clones made before this keep manifests where checkpoints belong: run `tessera pull` in them")
            }
            return
        }
        let store = try repository.objectStore()
        let lock = try StoreLock(store: store, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        for path in try ManifestCheckout(try Repository(git: repository)).checkOut() { print("checked out \(path)") }
    }
}
