import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

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
        let context = try RepositoryContext(directory: ".")
        switch name {
        case "pre-push": try prePush(context)
        case "post-checkout", "post-merge":
            // Hooks of earlier versions (`tessera install` removes them): the filter now does this when it starts.
            if let worktree = context.repository.workdir {
                try StatCache(store: context.store, worktree: worktree).promotePending()
            }
        case "pre-commit": try preCommit(context)
        default: throw TesseraError(.usage, "unknown hook \(name)")
        }
    }

    /// Sends the objects that the pushed commits' manifests name, as Git LFS objects, before git sends the commits.
    private func prePush(_ context: RepositoryContext) throws {
        let remote = arguments.first ?? "origin"
        let transport = LFSTransport(repository: context.repository, store: context.store)
        var wanted: [String] = []
        var seen = Set<String>()
        while let line = readLine() {
            let f = line.split(separator: " ").map(String.init)
            guard f.count == 4 else { continue }
            let (localSHA, remoteSHA) = (f[1], f[3])
            if localSHA.allSatisfy({ $0 == "0" }) { continue }  // deleting a remote ref sends nothing
            let ids = try transport.objectsToPush(local: localSHA, remoteSHA: remoteSHA.allSatisfy({ $0 == "0" }) ? nil : remoteSHA, remote: remote)
            for id in ids where seen.insert(id).inserted { wanted.append(id) }
        }
        let present = wanted.filter { context.store.contains($0) }
        let absent = wanted.count - present.count
        if absent > 0 {
            FileHandle.standardError.write(Data("tessera: \(absent) object(s) named by the pushed commits are not in this repository's store; they must already be on '\(remote)' (`tessera fetch --all` checks)\n".utf8))
        }
        if !present.isEmpty {
            let report = try transport.push(present, remote: remote)
            if isatty(2) != 0 && report.transferred > 0 {
                FileHandle.standardError.write(Data("tessera: sent \(report.transferred) object(s), \(humanBytes(report.bytes)), to \(remote)\n".utf8))
            }
        }
    }

    /// Refuses a commit that would store a tracked checkpoint raw (the filter was not configured when it was added).
    private func preCommit(_ context: RepositoryContext) throws {
        let r = try Subprocess.run(["git", "diff", "--cached", "--name-only", "-z", "--diff-filter=AM"], directory: context.repository.workdir)
        let paths = r.stdout.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        var raw: [String] = []
        var dangling: [String] = []
        for path in paths where context.repository.attribute("filter", path: path) == "tessera" {
            guard let bytes = try? context.repository.blob(":" + path) else { continue }
            if !Manifest.looksLikeManifest(bytes) {
                if bytes.count > 1 << 20 { raw.append("\(path) (\(humanBytes(bytes.count)))") }
                continue
            }
            // A manifest staged without the filter (`git update-index`, a script) must name objects this repository
            // has; a commit of one that does not would be a checkpoint nobody can check out. The manifest of HEAD
            // itself may lack local objects (a clone that has not fetched them): the remote has those.
            if let head = try? context.repository.blob("HEAD:" + path), head == bytes { continue }
            if let m = try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: path) {
                let absent = m.objectIDs.filter { !context.store.contains($0) }
                if !absent.isEmpty { dangling.append("\(path) (\(absent.count) of \(m.objectIDs.count) objects, e.g. \(absent[0].prefix(12)))") }
            } else {
                dangling.append("\(path) (not a valid manifest)")
            }
        }
        if !dangling.isEmpty {
            throw TesseraError(.objectMissing, "staged manifest of \(dangling.joined(separator: ", ")) names objects that are not in this repository's store",
                               hint: "`git add` the real file again (the filter stores its tensors), or fetch the objects first (`tessera fetch`)")
        }
        if !raw.isEmpty {
            throw TesseraError(.usage, "\(raw.joined(separator: ", ")) is tracked by tessera in .gitattributes but was staged as a raw file, because the tessera filter is not configured here",
                               hint: "run `tessera install`, then `git add` the file again (or commit with --no-verify to store it raw on purpose)")
        }
    }
}

struct HookScriptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hook-script",
        abstract: "Print the text of a hook that tessera installs (scripts/write-hooks.sh uses it).",
        shouldDisplay: false
    )

    @Argument var name: String

    @Flag(help: "The pre-push hook as installed beside git-lfs (its first 1024 bytes are git-lfs's own hook).")
    var gitLFS = false

    func run() throws {
        guard GitHooks.names.contains(name) else { throw TesseraError(.usage, "unknown hook \(name)", hint: "one of " + GitHooks.names.joined(separator: ", ")) }
        print(GitHooks.script(name, gitLFSPrefix: gitLFS ? GitHooks.gitLFSHookText(name) : nil), terminator: "")
    }
}
