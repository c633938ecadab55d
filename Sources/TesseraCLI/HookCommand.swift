import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore

/// Run by the git hooks that `tessera install` writes.
struct HookCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hook",
        abstract: "Work done from git hooks (pre-push, post-checkout, post-merge, pre-commit).",
        shouldDisplay: false
    )

    @Argument var name: String
    @Argument(parsing: .allUnrecognized) var arguments: [String] = []

    func run() throws {
        let context = try RepositoryContext(directory: ".")
        switch name {
        case "pre-push": try prePush(context)
        case "post-checkout", "post-merge":
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
            FileHandle.standardError.write(Data("tessera: \(absent) object(s) named by the pushed commits are not in this repository's store; they must already be on '\(remote)' (fetch them with `git tessera fetch --all` to check)\n".utf8))
        }
        if !present.isEmpty {
            try transport.push(present, remote: remote)
            if isatty(2) != 0 { FileHandle.standardError.write(Data("tessera: sent \(present.count) object(s) to \(remote)\n".utf8)) }
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

struct FetchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download the objects that tracked files need, from a remote's Git LFS storage.",
        discussion: """
        A checkout fetches what it needs by itself; use this to prefetch or to make history available offline.
        Examples:
          git tessera fetch                 # objects for HEAD
          git tessera fetch origin/main v2  # objects for these revisions
          git tessera fetch --all           # objects for every revision of every ref
        """
    )

    @Argument(help: "Revisions whose files' objects to fetch (default HEAD).")
    var revisions: [String] = []

    @Flag(help: "Fetch objects for the whole history of every ref.")
    var all = false

    @Option(help: "The remote to fetch from (default: the branch's remote, else origin).")
    var remote: String?

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let context = try RepositoryContext(directory: directory)
        let commits: [String]
        if all {
            commits = try context.repository.commits(reachableFrom: [], globs: ["refs/*"]) + (context.repository.resolveCommit("HEAD").map { [$0] } ?? [])
        } else {
            commits = try (revisions.isEmpty ? ["HEAD"] : revisions).map { rev in
                guard let c = context.repository.resolveCommit(rev) else {
                    throw TesseraError(.notFound, "\(rev) is not a revision of this repository", hint: "name a branch, tag or commit (`git log --oneline` lists them)")
                }
                return c
            }
        }
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
        if objects.isEmpty { print("all \(seen.count) object(s) are present"); return }
        try LFSTransport(repository: context.repository, store: context.store).fetch(objects, remote: remote)
        print("fetched \(objects.count) object(s)")
    }
}

struct HookScriptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hook-script",
        abstract: "Print the text of a hook that `tessera install` writes (scripts/write-hooks.sh uses it).",
        shouldDisplay: false
    )

    @Argument var name: String

    func run() throws {
        guard Installer.hookNames.contains(name) else { throw TesseraError(.usage, "unknown hook \(name)", hint: "one of " + Installer.hookNames.joined(separator: ", ")) }
        print(Installer.hookScript(name), terminator: "")
    }
}
