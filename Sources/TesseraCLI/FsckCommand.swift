import ArgumentParser
import Foundation
import TesseraCore
import TesseraEval
import TesseraGit
import TesseraStore
import TesseraIO

struct FsckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Verify every object reachable from any ref, reflog, worktree or index (SHA-256 and decoded content).",
        discussion: """
        Objects that a manifest names but the store lacks are reported as missing
        (fetch them with `git tessera fetch --all`); objects whose bytes do not match
        their id are reported as corrupt.
        Examples:
          tessera fsck
          tessera fsck --json
        """
    )

    @OptionGroup var options: RepositoryOptions

    @Flag(help: "Also verify objects that nothing reaches.")
    var unreachable = false

    func run() throws {
        let context = try RepositoryContext(directory: options.directory)
        let reach = try Reachability(context: context)
        // What the manifests say each object holds (its raw length and value), checked against the object itself:
        // an object can be intact and still not be what a manifest claims (a hostile or damaged manifest).
        var expected: [String: (length: Int, raw: String)] = [:]
        var inconsistent: [(String, String)] = []
        for (origin, m) in reach.manifests {
            for segment in m.segments {
                guard let st = segment.stored else { continue }
                let claim = (segment.end - segment.begin, st.rawSHA256)
                if let known = expected[st.objectID], known != claim {
                    inconsistent.append((st.objectID, "\(origin) names it for \(claim.0) bytes of value \(claim.1.prefix(12)), another manifest for \(known.length) bytes of value \(known.raw.prefix(12))"))
                } else {
                    expected[st.objectID] = claim
                }
            }
        }
        var ids = reach.objectIDs
        if unreachable { ids.formUnion(context.store.allObjectIDs()) }
        let sorted = ids.sorted()
        var missing: [String] = []
        var corrupt: [(String, String)] = inconsistent
        let progress = ProgressReporter(label: "verifying objects", total: sorted.count)
        let decoder = ObjectDecoder()
        for id in sorted {
            switch context.store.presence(id) {
            case .missing:
                missing.append(id)
            case let .unreadable(why):
                corrupt.append((id, "cannot be read: \(why)"))
            case .present:
                do {
                    try context.store.verify(id, expectedLength: expected[id]?.length, expectedRawSHA256: expected[id]?.raw, decoder: decoder)
                } catch let e as TesseraError {
                    corrupt.append((id, e.message))
                } catch {
                    corrupt.append((id, "\(error)"))
                }
            }
            progress.advance()
        }
        progress.finish()
        // Objects of published history that a partial clone has not fetched are not a problem: the remote has them.
        let notFetched = missing.filter { !reach.localOnlyObjectIDs.contains($0) }
        missing = missing.filter { reach.localOnlyObjectIDs.contains($0) }
        if options.json {
            printJSON(.object([("checked", .int(sorted.count)), ("missing", .array(missing.map { .string($0) })),
                               ("not_fetched", .array(notFetched.map { .string($0) })),
                               ("corrupt", .array(corrupt.map { .string($0.0) })), ("ok", .bool(missing.isEmpty && corrupt.isEmpty))]))
        } else {
            for id in missing { print("missing \(id)") }
            for (id, why) in corrupt { print("corrupt \(id): \(why)") }
            print("checked \(sorted.count - notFetched.count) object(s) from \(reach.manifests.count) manifest(s): \(missing.count) missing, \(corrupt.count) corrupt"
                  + (notFetched.isEmpty ? "" : "; \(notFetched.count) of the remote's history not fetched (`tessera fetch --all` brings them)"))
        }
        if !corrupt.isEmpty || !missing.isEmpty {
            throw TesseraError(.objectCorrupt, "the object store has problems (\(missing.count) missing, \(corrupt.count) corrupt)",
                               hint: "fetch missing objects with `tessera fetch --all`; delete corrupt ones from .git/tessera/objects and fetch them again")
        }
    }
}

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
        let context = try RepositoryContext(directory: options.directory)
        // Wait for running git commands that write to the store (their new objects are not reachable yet).
        var lock = try StoreLock(store: context.store, mode: .exclusive, wait: false)
        if lock == nil {
            FileHandle.standardError.write(Data("tessera gc: waiting for the git commands using the object store to finish\n".utf8))
            lock = try StoreLock(store: context.store, mode: .exclusive)
        }
        defer { withExtendedLifetime(lock) {} }
        let reachable = try Reachability(context: context).objectIDs
        let now = Date().timeIntervalSince1970
        var deleted = 0
        var freed = 0
        var kept = 0
        for id in context.store.allObjectIDs() {
            if reachable.contains(id) { kept += 1; continue }
            let path = context.store.objectPath(id)
            guard let st = FileSystem.fileStat(path) else { continue }
            if now - Double(st.mtimeNanoseconds) / 1e9 < grace { kept += 1; continue }
            if !dryRun { context.store.remove(id) }
            deleted += 1
            freed += st.size
        }
        var tmpRemoved = 0
        for name in FileSystem.list(context.store.tmpDirectory) {
            let p = context.store.tmpDirectory + "/" + name
            if let st = FileSystem.fileStat(p), now - Double(st.mtimeNanoseconds) / 1e9 >= max(grace, 60) || grace == 0 {
                if !dryRun { FileSystem.remove(p) }
                tmpRemoved += 1
            }
        }
        let verb = dryRun ? "would delete" : "deleted"
        if options.json {
            printJSON(.object([("deleted", .int(deleted)), ("freed_bytes", .int(freed)), ("kept", .int(kept)), ("temporary_files", .int(tmpRemoved)), ("dry_run", .bool(dryRun))]))
        } else {
            print("\(verb) \(deleted) unreachable object(s) (\(humanBytes(freed))), kept \(kept); \(verb) \(tmpRemoved) temporary file(s)")
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
