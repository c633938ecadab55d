import ArgumentParser
import Foundation
import TesseraGit
import TesseraIO

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
