import ArgumentParser
import Foundation
import TesseraGit
import TesseraIO

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
