import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraRepository

struct FsckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Verify every object reachable from any ref, reflog, worktree or index (SHA-256 and decoded content).",
        discussion: """
        Objects that a manifest names but the store lacks are reported as missing
        (fetch them with `git tessera fetch --all`); objects whose bytes do not match
        their id are reported as corrupt. Delta bases are checked too, transitively
        (a missing one is named with the tensor that needs it), and so are delta
        chains that loop or run deeper than 16.
        Examples:
          tessera fsck
          tessera fsck --json
        """
    )

    @OptionGroup var options: RepositoryOptions

    @Flag(help: "Also verify objects that nothing reaches.")
    var unreachable = false

    func run() throws {
        let verification = try StoreVerification(repository: try Repository(directory: options.directory), includeUnreachable: unreachable)
        let report = verification.run()
        if options.json {
            printJSON(.object([("checked", .int(report.checked)), ("missing", .array(report.missing.map { .string($0) })),
                               ("not_fetched", .array(report.notFetched.map { .string($0) })),
                               ("corrupt", .array(report.corrupt.map { .string($0.id) })), ("ok", .bool(report.isClean))]))
        } else {
            for id in report.missing { print(report.missingLine(id)) }
            for (id, why) in report.corrupt { print("corrupt \(id): \(why)") }
            print("checked \(report.checked - report.notFetched.count) object(s) from \(report.manifests) manifest(s): \(report.missing.count) missing, \(report.corrupt.count) corrupt"
                  + (report.notFetched.isEmpty ? "" : "; \(report.notFetched.count) of the remote's history not fetched (`tessera fetch --all` brings them)"))
        }
        if !report.isClean {
            throw TesseraError(.objectCorrupt, "the object store has problems (\(report.missing.count) missing, \(report.corrupt.count) corrupt)",
                               hint: "fetch missing objects with `tessera fetch --all`; delete corrupt ones from .git/tessera/objects and fetch them again")
        }
    }
}
