import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraRepository

/// Run by the git hooks that `tessera install` writes.
struct HookCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hook",
        abstract: "Work done from git hooks (pre-push, pre-commit).",
        shouldDisplay: false
    )

    @Argument var name: String
    @Argument(parsing: .allUnrecognized) var arguments: [String] = []

    func run() throws {
        let repository = try Repository(directory: ".")
        switch name {
        case "pre-push": try prePush(repository)
        case "post-checkout", "post-merge":
            // Hooks of earlier versions (`tessera install` removes them): the filter now does this when it starts.
            if let worktree = repository.git.workdir {
                try StatCache(store: repository.store, worktree: worktree).promotePending()
            }
        case "pre-commit": try PreCommitCheck.run(repository)
        default: throw TesseraError(.usage, "unknown hook \(name)")
        }
    }

    /// Sends the objects that the pushed commits' manifests name, as Git LFS objects, before git sends the commits.
    /// git names the ref updates on standard input.
    private func prePush(_ repository: Repository) throws {
        let remote = arguments.first ?? "origin"
        var updates: [String] = []
        while let line = readLine() { updates.append(line) }
        let plan = try PushPlan(refUpdates: updates, remote: remote, repository: repository)
        if plan.absent > 0 {
            printError("tessera: \(plan.absent) object(s) named by the pushed commits are not in this repository's store; they must already be on '\(remote)' (`tessera fetch --all` checks)")
        }
        if !plan.present.isEmpty {
            let report = try plan.send(repository)
            if isatty(2) != 0 && report.transferred > 0 {
                printError("tessera: sent \(report.transferred) object(s), \(humanBytes(report.bytes)), to \(remote)")
            }
        }
    }
}
