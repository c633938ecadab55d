import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraRepository

struct FetchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download the objects that tracked files need, from a remote's Git LFS storage.",
        discussion: """
        A checkout fetches what it needs by itself; use this to prefetch or to make
        history available offline. `tessera pull` also replaces files left as
        manifests.
        Examples:
          tessera fetch                  # objects for HEAD
          tessera fetch origin/main v2   # objects for these revisions
          tessera fetch --all            # objects for every revision of every ref
        """
    )

    @Argument(help: "Revisions whose files' objects to fetch (default HEAD).")
    var revisions: [String] = []

    @Flag(help: "Fetch objects for the whole history of every ref.")
    var all = false

    @Option(help: "The remote to fetch from (default: the branch's remote, else origin).")
    var remote: String?

    @OptionGroup var options: RepositoryOptions

    func run() throws {
        let repository = try Repository(directory: options.directory)
        let plan = try FetchPlan(commits: try repository.transferCommits(revisions: revisions, all: all), repository: repository)
        let report = try plan.fetch(repository, remote: remote)
        if options.json {
            printJSON(.object([("named", .int(plan.named)), ("fetched", .int(report.transferred)), ("fetched_bytes", .int(report.bytes)),
                               ("already_present", .int(plan.named - report.transferred))]))
        } else if report.transferred == 0 {
            print("all \(plan.named) object(s) are present")
        } else {
            print("fetched \(report.transferred) object(s), \(humanBytes(report.bytes)); \(plan.named - report.transferred) were already present")
        }
    }
}
