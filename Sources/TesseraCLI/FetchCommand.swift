import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

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
        let context = try RepositoryContext(directory: options.directory)
        let commits = try TransferPlan.commits(context: context, revisions: revisions, all: all)
        var objects: [(id: String, size: Int)] = []
        var unreadable: [(String, String)] = []
        var seen = Set<String>()
        for (_, m) in try context.repository.manifests(inCommits: commits) {
            for o in m.objects where seen.insert(o.id).inserted {
                switch context.store.presence(o.id) {
                case .present: break
                case .missing: objects.append(o)
                case let .unreadable(why): unreadable.append((o.id, why))
                }
            }
        }
        if let (id, why) = unreadable.first {
            throw TesseraError(.io, "\(unreadable.count) object(s) are in the store but cannot be read (object \(id.prefix(12)): \(why))",
                               hint: "fix the permissions of .git/tessera/objects, or delete the unreadable objects and run `tessera fetch` again")
        }
        let lock = try StoreLock(store: context.store, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        let report = objects.isEmpty ? TransferReport()
            : try LFSTransport(repository: context.repository, store: context.store).fetch(objects, remote: remote)
        if options.json {
            printJSON(.object([("named", .int(seen.count)), ("fetched", .int(report.transferred)), ("fetched_bytes", .int(report.bytes)),
                               ("already_present", .int(seen.count - report.transferred))]))
        } else if report.transferred == 0 {
            print("all \(seen.count) object(s) are present")
        } else {
            print("fetched \(report.transferred) object(s), \(humanBytes(report.bytes)); \(seen.count - report.transferred) were already present")
        }
    }
}

/// The commits whose manifests' objects a transfer command moves.
enum TransferPlan {
    static func commits(context: RepositoryContext, revisions: [String], all: Bool) throws -> [String] {
        if all {
            return try context.repository.commits(reachableFrom: [], globs: ["refs/*"]) + (context.repository.resolveCommit("HEAD").map { [$0] } ?? [])
        }
        return try (revisions.isEmpty ? ["HEAD"] : revisions).map { rev in
            guard let c = context.repository.resolveCommit(rev) else {
                throw TesseraError(.notFound, "\(rev) is not a revision of this repository", hint: "name a branch, tag or commit (`git log --oneline` lists them)")
            }
            return c
        }
    }
}
