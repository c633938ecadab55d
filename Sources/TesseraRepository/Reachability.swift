import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

/// Everything that keeps an object alive: manifests in the history of every ref and reflog entry (stashes
/// included), in every worktree's HEAD and index (staged but uncommitted files), and in the stat cache.
public struct Reachability {
    /// Every manifest that keeps objects alive, with where it was found ("history:PATH", "index:PATH", "statcache").
    public private(set) var manifests: [(origin: String, manifest: Manifest)] = []
    /// Objects that only this repository can have: named by commits no remote-tracking ref reaches, by an index or
    /// by the stat cache. A missing object outside this set is merely not fetched yet (the remote has it).
    public private(set) var localOnlyObjectIDs = Set<String>()

    public init(repository: Repository) throws {
        let repo = repository.git
        var tips: [String] = []
        if let head = repo.resolveCommit("HEAD") { tips.append(head) }
        tips += repo.reflogCommits()
        for wt in repo.linkedWorktreeGitDirectories() {
            if let text = try? String(contentsOfFile: wt + "/HEAD", encoding: .utf8) {
                let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
                if t.hasPrefix("ref: ") { if let c = repo.resolveCommit(String(t.dropFirst(5))) { tips.append(c) } } else { tips.append(t) }
            }
        }
        let commits = try repo.commits(reachableFrom: tips, globs: ["refs/*"])
        for (path, m) in try repo.manifests(inCommits: commits) { manifests.append(("history:\(path)", m)) }
        let published = Set(try repo.commits(reachableFrom: [], globs: ["refs/remotes/*"]))
        for (_, m) in try repo.manifests(inCommits: commits.filter { !published.contains($0) }) { localOnlyObjectIDs.formUnion(m.objectIDs) }
        for (path, m) in repo.manifestsInIndex() { manifests.append(("index:\(path)", m)); localOnlyObjectIDs.formUnion(m.objectIDs) }
        for wt in repo.linkedWorktreeGitDirectories() {
            for (path, m) in repo.manifestsInIndex(path: wt + "/index") { manifests.append(("index:\(path)", m)); localOnlyObjectIDs.formUnion(m.objectIDs) }
        }
        let cacheDir = repository.store.root + "/statcache"
        for name in FileSystem.list(cacheDir) {
            guard let bytes = try? FileSystem.readFile(cacheDir + "/" + name), let nl = bytes.firstIndex(of: 0x0A),
                  let m = try? Manifest.parse(String(decoding: bytes[(nl + 1)...], as: UTF8.self)) else { continue }
            manifests.append(("statcache", m))
        }
    }

    public var objectIDs: Set<String> {
        var s = Set<String>()
        for (_, m) in manifests { s.formUnion(m.objectIDs) }
        return s
    }

    /// `objectIDs` and every object their trailers depend on, transitively (a delta's base, its base's base...).
    /// Manifests written since chains exist name a delta's whole chain, but one written by an older version, or
    /// damaged, may not: what the objects themselves name is kept too. A worklist, each object once, so a loop in a
    /// crafted store ends; objects the store lacks or cannot read add nothing.
    public func objectIDsWithDependencies(in store: ObjectStore) -> (ids: Set<String>, dependentOf: [String: String]) {
        var all = objectIDs
        var dependentOf: [String: String] = [:]
        var work = Array(all)
        while let id = work.popLast() {
            guard let trailer = try? store.trailer(of: id) else { continue }
            for dependency in trailer.dependencyIDs where all.insert(dependency).inserted {
                dependentOf[dependency] = id
                work.append(dependency)
            }
        }
        return (all, dependentOf)
    }
}
