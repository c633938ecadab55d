import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit

/// Run by git (filter.tessera.process), not by people.
struct FilterProcessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "filter-process",
        abstract: "git's long-running clean/smudge filter (started by git; see `tessera install`).",
        shouldDisplay: false
    )

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        do {
            try FilterProcess().run()
        } catch let e as TesseraError {
            FileHandle.standardError.write(Data("tessera filter: \(e.description)\n".utf8))
            Foundation.exit(1)
        }
    }
}
