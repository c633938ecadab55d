import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraRepository

struct GcCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Delete objects that nothing reaches (never a reachable one), and stale temporary files.",
        discussion: """
        An object is kept if any ref, reflog entry (stashes too), worktree HEAD, index
        or the stat cache reaches it. Unreachable objects younger than the grace
        period are kept too, so a `git add` running at the same time is safe.
        Examples:
          tessera gc                 # grace period 1 hour
          tessera gc --prune now
          tessera gc --dry-run
        """
    )

    @OptionGroup var options: RepositoryOptions

    @Option(help: "Keep unreachable objects younger than this: 'now', or seconds / minutes / hours ('90s', '30m', '2h').")
    var prune: String = "1h"

    @Flag(help: "Only report what would be deleted.")
    var dryRun = false

    func run() throws {
        let grace = try Self.parseDuration(prune)
        let collector = GarbageCollector(repository: try Repository(directory: options.directory), gracePeriod: grace)
        let result = try collector.collect(dryRun: dryRun) {
            printError("tessera gc: waiting for the git commands using the object store to finish")
        }
        let verb = dryRun ? "would delete" : "deleted"
        if options.json {
            printJSON(.object([("deleted", .int(result.deleted)), ("freed_bytes", .int(result.freedBytes)), ("kept", .int(result.kept)),
                               ("temporary_files", .int(result.temporaryFiles)), ("dry_run", .bool(dryRun))]))
        } else {
            print("\(verb) \(result.deleted) unreachable object(s) (\(humanBytes(result.freedBytes))), kept \(result.kept); \(verb) \(result.temporaryFiles) temporary file(s)")
        }
    }

    static func parseDuration(_ s: String) throws -> Double {
        if s == "now" { return 0 }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        if let u = s.last, let f = units[u], let v = Double(s.dropLast()) { return v * f }
        if let v = Double(s) { return v }
        throw TesseraError(.usage, "invalid --prune value '\(s)'", hint: "use now, 90s, 30m, 2h or 1d")
    }
}
