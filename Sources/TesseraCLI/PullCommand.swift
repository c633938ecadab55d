import ArgumentParser
import Foundation
import TesseraCore
import TesseraRepository
import TesseraStore

struct PullCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Fetch what the checkout needs and replace tracked files left as manifests with their content.",
        discussion: """
        A clone made before `tessera install` (or without the filter configured) holds
        manifests where the checkpoints should be, and git sees nothing to repair.
        This is `git lfs pull` for Tessera; `tessera install` does it too. Commits are
        not fetched; use `git pull` for them.
        Examples:
          tessera pull
          tessera pull upstream
        """
    )

    @Argument(help: "The remote to fetch objects from (default: the branch's remote, else origin).")
    var remote: String?

    @OptionGroup var options: RepositoryOptions

    func run() throws {
        let repository = try Repository(directory: options.directory)
        _ = try repository.worktree
        let lock = try StoreLock(store: repository.store, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        let paths = try ManifestCheckout(repository).checkOut(remote: remote)
        if options.json {
            printJSON(.object([("checked_out", .array(paths.map { .string($0) }))]))
        } else if paths.isEmpty {
            print("every tracked file is checked out")
        } else {
            for p in paths { print("checked out \(p)") }
        }
    }
}
