import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraMerge
import TesseraStore
import TesseraIO

/// git's merge driver for tracked files (merge.tessera.driver = "tessera merge-driver %O %A %B %P"): git hands it
/// the three manifests (merge base, ours, theirs) and takes the merged manifest from %A.
struct MergeDriverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge-driver",
        abstract: "Tensor-wise three-way merge of a checkpoint (run by git merge, rebase, cherry-pick).",
        shouldDisplay: false
    )

    @Argument var base: String
    @Argument var ours: String
    @Argument var theirs: String
    @Argument var path: String

    func run() throws {
        let context = try RepositoryContext(directory: ".")
        let lock = try StoreLock(store: context.store, mode: .shared)  // merged tensors are unreachable until git records the result
        defer { withExtendedLifetime(lock) {} }
        let worktree = (try? context.worktree) ?? "."
        func manifest(_ file: String, label: String, optional: Bool) throws -> Manifest? {
            let bytes = (try? FileSystem.readFile(file)) ?? []
            if bytes.isEmpty && optional { return nil }
            guard Manifest.looksLikeManifest(bytes) else {
                throw TesseraError(.conflict, "\(path): the \(label) version is not stored by tessera, so it cannot be merged tensor by tensor",
                                   hint: "resolve the file by hand (`git checkout --ours/--theirs \(path)`), then `git add` it")
            }
            return try Manifest.parse(String(decoding: bytes, as: UTF8.self), file: "\(label):\(path)")
        }
        do {
            let O = try manifest(base, label: "base", optional: true)
            let A = try manifest(ours, label: "ours", optional: false)!
            let B = try manifest(theirs, label: "theirs", optional: false)!
            let transport = LFSTransport(repository: context.repository, store: context.store)
            let missing = ([O, A, B].compactMap { $0 }.flatMap(\.objects)).filter { !context.store.contains($0.id) }
            if !missing.isEmpty { try transport.fetch(missing, forFile: path) }
            var rules = try MergeRules.load(worktree: worktree)
            if let override = try Self.commandLineOverride(directory: worktree) { rules.rules.insert(override, at: 0) }
            let outcome = try ThreeWayMerge(store: context.store, path: path).run(base: O, ours: A, theirs: B, rules: rules)
            try Data(outcome.manifest.render().utf8).write(to: URL(fileURLWithPath: ours))
            let methods = Dictionary(grouping: outcome.merged, by: \.method).map { "\($0.value.count) by \($0.key)" }.sorted()
            if outcome.conflicts.isEmpty {
                if !methods.isEmpty { FileHandle.standardError.write(Data("tessera: \(path): merged \(methods.joined(separator: ", "))\n".utf8)) }
                return
            }
            // Leave the three versions as checkpoints and a report beside the file; the file itself holds the
            // merge so far, with our side for every conflicting tensor.
            let files = [("base", O), ("ours", A), ("theirs", B)]
            for (suffix, m) in files {
                guard let m else { continue }
                let out = worktree + "/" + path + "." + suffix
                FileManager.default.createFile(atPath: out, contents: nil)
                let h = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
                try context.store.reconstruct(m, file: path) { h.write(Data($0)) }
                try h.close()
            }
            var text = "# tessera merge conflict in \(path)\n# Tensors changed on both branches with no merge method configured:\n"
            for line in outcome.report { text += "  \(line)\n" }
            text += "# The three versions: \(path).base, \(path).ours, \(path).theirs (safetensors).\n"
            text += "# Finish with e.g.: tessera resolve \(path) --method linear   (or ties, task_arithmetic, ours, theirs, ...)\n"
            text += "# Or configure a method for these tensors in \(MergeRules.file) (see docs/merging.md).\n"
            try text.write(toFile: worktree + "/" + path + ".conflict", atomically: true, encoding: .utf8)
            let names = outcome.conflicts.prefix(5).joined(separator: ", ") + (outcome.conflicts.count > 5 ? ", ..." : "")
            FileHandle.standardError.write(Data("tessera: \(path): \(outcome.conflicts.count) tensor(s) changed on both branches need a merge method (\(names)); the three versions are in \(path).base/.ours/.theirs and \(path).conflict lists them; finish with `tessera resolve \(path) --method linear` (or configure \(MergeRules.file))\n".utf8))
            Foundation.exit(1)
        } catch let e as TesseraError {
            FileHandle.standardError.write(Data("tessera: \(e.description)\n".utf8))
            Foundation.exit(1)
        }
    }
}

extension MergeDriverCommand {
    /// A rule for this merge only, from `git -c tessera.merge.method=... [-c tessera.merge.weights=1,1]
    /// [-c tessera.merge.parameters=density=0.5] merge ...` (git passes -c settings on to its drivers).
    static func commandLineOverride(directory: String) throws -> MergeRules.Rule? {
        func get(_ key: String) -> String? {
            guard let r = try? Subprocess.run(["git", "config", "--get", key], directory: directory), r.status == 0 else { return nil }
            return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let method = get("tessera.merge.method") else { return nil }
        return try MergeRules.override(method: method, weights: get("tessera.merge.weights"), parameters: get("tessera.merge.parameters"))
    }
}

struct ResolveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve",
        abstract: "Finish a conflicted merge of a checkpoint with a chosen merge method, and stage the result.",
        discussion: """
        Reads the three versions git keeps for the conflicted file (merge base, ours,
        theirs), merges every tensor changed on both sides with the method (the merge
        base as the base model), writes the file, `git add`s it and removes the
        .base/.ours/.theirs/.conflict files. Then `git commit` as usual.
        Examples:
          tessera resolve model.safetensors --method linear
          tessera resolve model.safetensors --method ties --param density=0.5
          tessera resolve model.safetensors --method theirs
        """
    )

    @Argument(help: "The conflicted file.")
    var path: String

    @Option(help: "The merge method for the tensors changed on both sides.")
    var method: String

    @Option(help: "Weights of ours and theirs, comma-separated (default 1,1).")
    var weights: String?

    @OptionGroup var parameterOptions: MergeParameterOptions

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let context = try RepositoryContext(directory: directory)
        let lock = try StoreLock(store: context.store, mode: .shared)  // merged tensors are unreachable until `git add`
        defer { withExtendedLifetime(lock) {} }
        let worktree = try context.worktree
        let relative = try context.relativePath(path)
        func stage(_ n: Int) -> Manifest? {
            guard let bytes = try? context.repository.blob(":\(n):\(relative)"), Manifest.looksLikeManifest(bytes) else { return nil }
            return try? Manifest.parse(String(decoding: bytes, as: UTF8.self), file: relative)
        }
        guard let A = stage(2), let B = stage(3) else {
            throw TesseraError(.usage, "\(relative) is not in a conflicted merge state", hint: "run this after a `git merge` that left it conflicted")
        }
        _ = try MergeRegistry.method(named: method)
        var rule = MergeRules.Rule(method: method)
        rule.weights = try MergeCommand.list(weights, count: 2, name: "--weights")
        rule.parameters = try parameterOptions.parsed()
        let O = stage(1)
        let missing = ([O, A, B].compactMap { $0 }.flatMap(\.objects)).filter { !context.store.contains($0.id) }
        if !missing.isEmpty { try LFSTransport(repository: context.repository, store: context.store).fetch(missing, forFile: relative) }
        let outcome = try ThreeWayMerge(store: context.store, path: relative).run(base: O, ours: A, theirs: B, rules: MergeRules(rules: [rule]))
        if !outcome.conflicts.isEmpty {
            throw TesseraError(.conflict, "\(relative): \(outcome.conflicts.count) tensor(s) cannot be merged by \(method): \(outcome.report.joined(separator: "; "))",
                               hint: "use --method ours or --method theirs for them")
        }
        // Write the file through a temporary file, then stage it through git's own filter.
        let target = worktree + "/" + relative
        let tmp = target + ".tessera-resolve"
        FileManager.default.createFile(atPath: tmp, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp))
        try context.store.reconstruct(outcome.manifest, file: relative) { h.write(Data($0)) }
        try h.close()
        try FileSystem.rename(tmp, target)
        try Subprocess.check(["git", "add", "--", relative], directory: worktree, what: "git add \(relative) failed")
        for suffix in ["base", "ours", "theirs", "conflict"] { try? FileManager.default.removeItem(atPath: target + "." + suffix) }
        print("resolved \(relative): \(outcome.merged.count) tensor(s) merged by \(method); staged. Commit to conclude the merge.")
    }
}
