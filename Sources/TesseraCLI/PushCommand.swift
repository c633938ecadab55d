import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraRepository

struct PushCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Upload the objects that commits need to a remote's Git LFS storage (what the pre-push hook does).",
        discussion: """
        `git push` runs this through the pre-push hook for the commits it sends. Run
        it to repair a remote whose commits arrived without their tensors (a push from
        a clone without the hook): every object the history names is offered, and the
        remote keeps the ones it lacks. Commits are not pushed; use `git push` for
        them.
        Examples:
          tessera push                 # the current branch's history, to its remote
          tessera push origin --all    # objects of every local branch and tag
          tessera push origin v2 main  # objects of these revisions
        """
    )

    @Argument(help: "The remote (default: the branch's remote, else origin).")
    var remote: String?

    @Argument(help: "Revisions whose history's objects to upload (default: the current branch).")
    var revisions: [String] = []

    @Flag(help: "Upload the objects of every local branch and tag.")
    var all = false

    @Flag(help: "Only report what would be offered.")
    var dryRun = false

    @OptionGroup var options: RepositoryOptions

    func run() throws {
        let repository = try Repository(directory: options.directory)
        let remote = remote ?? repository.transport.defaultRemote()
        let tips = all ? try repository.git.commits(reachableFrom: [], globs: ["refs/heads/*", "refs/tags/*"])
                       : try repository.transferCommits(revisions: revisions, all: false)
        let plan = try PushPlan(history: tips, remote: remote, repository: repository)
        if dryRun {
            print("would offer \(plan.present.count) object(s) to \(remote)" + (plan.absent > 0 ? "; \(plan.absent) named object(s) are not in this store" : ""))
            return
        }
        let report = try plan.send(repository)
        if options.json {
            printJSON(.object([("remote", .string(remote)), ("sent", .int(report.transferred)), ("sent_bytes", .int(report.bytes)),
                               ("already_there", .int(report.alreadyThere)), ("not_in_store", .int(plan.absent))]))
        } else {
            print("sent \(report.transferred) object(s), \(humanBytes(report.bytes)), to \(remote); \(report.alreadyThere) were already there")
            if plan.absent > 0 {
                print("\(plan.absent) object(s) named by this history are not in this store (fetch them with `tessera fetch --all`, or push from where they were made)")
            }
        }
    }
}
