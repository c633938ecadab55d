import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraMerge
import TesseraStore

/// git's merge driver for tracked files (`merge.tessera.driver = "tessera merge-driver %O %A %B %P"`): git hands it
/// the three manifests (merge base, ours, theirs) as files and takes the merged manifest from %A. The tensor-wise
/// merge is `ThreeWayMerge`, ruled by `.tessera/merge.yml` and by a `tessera.merge.*` setting given to this one git
/// command (`git -c tessera.merge.method=...`).
public struct GitMergeDriver {
    public let repository: Repository

    public init(repository: Repository) {
        self.repository = repository
    }

    /// Merges, writes the merged manifest into `ours`, and on conflicts leaves the three versions as checkpoints
    /// (`PATH.base`, `.ours`, `.theirs`) and a report (`PATH.conflict`) beside the file, which holds the merge so far
    /// with our side for every conflicting tensor.
    public func merge(base: String, ours: String, theirs: String, path: String) throws -> ThreeWayMerge.Outcome {
        let lock = try StoreLock(store: repository.store, mode: .shared)  // merged tensors are unreachable until git records the result
        defer { withExtendedLifetime(lock) {} }
        let worktree = (try? repository.worktree) ?? "."
        func manifest(_ file: String, label: String, optional: Bool) throws -> Manifest? {
            let bytes = (try? FileSystem.readFile(file)) ?? []
            if bytes.isEmpty && optional { return nil }
            guard Manifest.looksLikeManifest(bytes) else {
                throw TesseraError(.conflict, "\(path): the \(label) version is not stored by tessera, so it cannot be merged tensor by tensor",
                                   hint: "resolve the file by hand (`git checkout --ours/--theirs \(path)`), then `git add` it")
            }
            return try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: "\(label):\(path)")
        }
        let O = try manifest(base, label: "base", optional: true)
        guard let A = try manifest(ours, label: "ours", optional: false), let B = try manifest(theirs, label: "theirs", optional: false) else {
            throw TesseraError(.conflict, "\(path): a side of the merge is empty", hint: "resolve the file by hand, then `git add` it")
        }
        try repository.fetchMissingObjects(of: [O, A, B].compactMap { $0 }, forFile: path)
        var rules = try MergeRules.load(worktree: worktree)
        if let override = try Self.commandLineOverride(directory: worktree) { rules.rules.insert(override, at: 0) }
        let outcome = try ThreeWayMerge(store: repository.store, path: path).run(base: O, ours: A, theirs: B, rules: rules)
        try Data(outcome.manifest.render().utf8).write(to: URL(fileURLWithPath: ours))
        if outcome.conflicts.isEmpty { return outcome }
        for (suffix, m) in [("base", O), ("ours", A), ("theirs", B)] {
            guard let m else { continue }
            let out = worktree + "/" + path + "." + suffix
            _ = FileManager.default.createFile(atPath: out, contents: nil)
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
            try repository.store.reconstruct(m, file: path) { h.write(Data($0)) }
            try h.close()
        }
        var text = "# tessera merge conflict in \(path)\n# Tensors changed on both branches with no merge method configured:\n"
        for line in outcome.report { text += "  \(line)\n" }
        text += "# The three versions: \(path).base, \(path).ours, \(path).theirs (safetensors).\n"
        text += "# Finish with e.g.: tessera resolve \(path) --method linear   (or ties, task_arithmetic, ours, theirs, ...)\n"
        text += "# Or configure a method for these tensors in \(MergeRules.file) (see docs/merging.md).\n"
        try text.write(toFile: worktree + "/" + path + ".conflict", atomically: true, encoding: .utf8)
        return outcome
    }

    /// A rule for this merge only, from `git -c tessera.merge.method=... [-c tessera.merge.weights=1,1]
    /// [-c tessera.merge.parameters=density=0.5] merge ...` (git passes -c settings on to its drivers).
    public static func commandLineOverride(directory: String) throws -> MergeRules.Rule? {
        func get(_ key: String) -> String? {
            guard let r = try? Subprocess.run(["git", "config", "--get", key], directory: directory), r.status == 0 else { return nil }
            return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let method = get("tessera.merge.method") else { return nil }
        return try MergeRules.override(method: method, weights: get("tessera.merge.weights"), parameters: get("tessera.merge.parameters"))
    }
}

/// A tracked file left conflicted by a merge (`tessera resolve`): the three versions git keeps in the index (stages
/// 1, 2 and 3), merged again with a method chosen for the tensors changed on both sides.
public struct ConflictedCheckpoint {
    public let repository: Repository
    /// The path relative to the worktree's top.
    public let path: String
    let base: Manifest?
    let ours: Manifest
    let theirs: Manifest
    /// Held while merged tensors are stored and unreachable (until `git add`).
    private let lock: StoreLock?

    /// The conflicted file named by `path` (relative to the current directory); an error when it is not conflicted.
    public init(path: String, repository: Repository) throws {
        self.repository = repository
        lock = try StoreLock(store: repository.store, mode: .shared)
        _ = try repository.worktree
        let relative = try repository.relativePath(path)
        func stage(_ n: Int) -> Manifest? {
            guard let bytes = try? repository.git.blob(":\(n):\(relative)"), Manifest.looksLikeManifest(bytes) else { return nil }
            return try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: relative)
        }
        guard let A = stage(2), let B = stage(3) else {
            throw TesseraError(.usage, "\(relative) is not in a conflicted merge state", hint: "run this after a `git merge` that left it conflicted")
        }
        self.path = relative
        base = stage(1)
        ours = A
        theirs = B
    }

    /// Merges with `rule`, writes the file, stages it through git's filter and removes the files the merge driver
    /// left beside it. Returns the tensors merged.
    public func resolve(with rule: MergeRules.Rule) throws -> [(tensor: String, method: String)] {
        let worktree = try repository.worktree
        try repository.fetchMissingObjects(of: [base, ours, theirs].compactMap { $0 }, forFile: path)
        let outcome = try ThreeWayMerge(store: repository.store, path: path).run(base: base, ours: ours, theirs: theirs, rules: MergeRules(rules: [rule]))
        if !outcome.conflicts.isEmpty {
            throw TesseraError(.conflict, "\(path): \(outcome.conflicts.count) tensor(s) cannot be merged by \(rule.method): \(outcome.report.joined(separator: "; "))",
                               hint: "use --method ours or --method theirs for them")
        }
        // Write the file through a temporary file, then stage it through git's own filter.
        let target = worktree + "/" + path
        let tmp = target + ".tessera-resolve"
        _ = FileManager.default.createFile(atPath: tmp, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp))
        try repository.store.reconstruct(outcome.manifest, file: path) { h.write(Data($0)) }
        try h.close()
        try FileSystem.rename(tmp, target)
        try Subprocess.check(["git", "add", "--", path], directory: worktree, what: "git add \(path) failed")
        for suffix in ["base", "ours", "theirs", "conflict"] { try? FileManager.default.removeItem(atPath: target + "." + suffix) }
        return outcome.merged
    }
}
