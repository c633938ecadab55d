import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraStore

extension Repository {
    /// The commits whose manifests' objects a transfer moves: the named revisions (default HEAD), or with `all`
    /// every commit of every ref and HEAD.
    public func transferCommits(revisions: [String], all: Bool) throws -> [String] {
        if all {
            return try git.commits(reachableFrom: [], globs: ["refs/*"]) + (git.resolveCommit("HEAD").map { [$0] } ?? [])
        }
        return try (revisions.isEmpty ? ["HEAD"] : revisions).map { rev in
            guard let c = git.resolveCommit(rev) else {
                throw TesseraError(.notFound, "\(rev) is not a revision of this repository", hint: "name a branch, tag or commit (`git log --oneline` lists them)")
            }
            return c
        }
    }

    /// Object ids the manifests of these commits name (delta bases included), each once, in the order first named.
    func objectIDs(namedIn commits: [String]) throws -> [String] {
        var seen = Set<String>()
        var out: [String] = []
        for (_, m) in try git.manifests(inCommits: commits) {
            for id in m.objectIDs where seen.insert(id).inserted { out.append(id) }
        }
        return out
    }
}

/// The objects a push sends to a remote's Git LFS storage: the one collection behind the pre-push hook (the commits
/// git is about to send) and `tessera push` (a whole history, to repair a remote).
public struct PushPlan {
    public let remote: String
    /// Every object the commits' manifests name, in the order first named.
    public let named: [String]
    /// Those of them this store has (the ones offered to the remote).
    public let present: [String]
    /// Named objects this store lacks: they must already be on the remote (a clone that never fetched them).
    public var absent: Int { named.count - present.count }

    init(repository: Repository, remote: String, named: [String]) {
        self.remote = remote
        // Manifests name a delta's whole chain; what the objects' trailers name is added too (a manifest written by
        // an older version names only the direct base), so a remote never gets a delta without its bases.
        var all = named
        var seen = Set(named)
        var at = 0
        while at < all.count {
            if let trailer = try? repository.store.trailer(of: all[at]) {
                for dependency in trailer.dependencyIDs where seen.insert(dependency).inserted { all.append(dependency) }
            }
            at += 1
        }
        self.named = all
        present = all.filter { repository.store.contains($0) }
    }

    /// What the pre-push hook sends. git gives the hook one line per ref update, "<local ref> <local sha> <remote
    /// ref> <remote sha>": the objects of the commits reachable from each local sha and neither from its remote sha
    /// nor from any ref the remote is known to have. Deletions send nothing.
    public init(refUpdates lines: [String], remote: String, repository: Repository) throws {
        let knownRemoteRefs = (try? Subprocess.run(["git", "for-each-ref", "--format=%(objectname)", "refs/remotes/\(remote)/"],
                                                   directory: repository.commandDirectory).stdoutText) ?? ""
        let known = knownRemoteRefs.split(separator: "\n").map(String.init)
        var named: [String] = []
        var seen = Set<String>()
        for line in lines {
            let f = line.split(separator: " ").map(String.init)
            guard f.count == 4 else { continue }
            let (localSHA, remoteSHA) = (f[1], f[3])
            if localSHA.allSatisfy({ $0 == "0" }) { continue }  // deleting a remote ref sends nothing
            var exclude: [String] = []
            if !remoteSHA.allSatisfy({ $0 == "0" }), repository.git.resolveCommit(remoteSHA) != nil { exclude.append(remoteSHA) }
            let commits = try repository.git.commits(reachableFrom: [localSHA], excluding: exclude + known)
            for id in try repository.objectIDs(namedIn: commits) where seen.insert(id).inserted { named.append(id) }
        }
        self.init(repository: repository, remote: remote, named: named)
    }

    /// What `tessera push` offers: every object the whole history of `tips` names (the remote keeps the ones it
    /// lacks).
    public init(history tips: [String], remote: String, repository: Repository) throws {
        let history = try repository.git.commits(reachableFrom: tips)
        self.init(repository: repository, remote: remote, named: try repository.objectIDs(namedIn: history))
    }

    /// Uploads the present objects (git-lfs skips what the remote has) and reports what was sent.
    public func send(_ repository: Repository) throws -> TransferReport {
        try repository.transport.push(present, remote: remote)
    }
}

/// The objects a fetch downloads: those the manifests of some commits name and the store lacks.
public struct FetchPlan {
    /// How many distinct objects the manifests name.
    public let named: Int
    /// The ones the store lacks.
    public let missing: [(id: String, size: Int)]

    /// An object that is in the store but cannot be read is an error here: fetching would not repair it.
    public init(commits: [String], repository: Repository) throws {
        var missing: [(id: String, size: Int)] = []
        var unreadable: [(String, String)] = []
        var seen = Set<String>()
        for (_, m) in try repository.git.manifests(inCommits: commits) {
            for o in m.objects where seen.insert(o.id).inserted {
                switch repository.store.presence(o.id) {
                case .present: break
                case .missing: missing.append(o)
                case let .unreadable(why): unreadable.append((o.id, why))
                }
            }
        }
        if let (id, why) = unreadable.first {
            throw TesseraError(.io, "\(unreadable.count) object(s) are in the store but cannot be read (object \(id.prefix(12)): \(why))",
                               hint: "fix the permissions of .git/tessera/objects, or delete the unreadable objects and run `tessera fetch` again")
        }
        named = seen.count
        self.missing = missing
    }

    /// Downloads the missing objects (holding the store's lock shared, so that gc waits).
    public func fetch(_ repository: Repository, remote: String?) throws -> TransferReport {
        let lock = try StoreLock(store: repository.store, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        return missing.isEmpty ? TransferReport() : try repository.transport.fetch(missing, remote: remote)
    }
}
