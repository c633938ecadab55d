import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraMerge
import TesseraStore

/// git's merge of a PEFT adapter's weights (`DIR/adapter_model.safetensors`), on ΔW: the result is
/// ours + theirs − base module by module, exactly, as concatenated factors (`AdapterMerge.threeWay`), never an
/// average of A and B taken separately. Each version's scaling comes from its own adapter_config.json (found with
/// `AdapterVersions`). The merged adapter has another rank, so its config changes too: git merges adapter_config.json
/// as text and would keep the old r, so the new config is written into the worktree and the merge stops for the
/// user to `git add` both files and commit (git offers a driver no way to change another path of the merge).
public struct AdapterGitMerge {
    public let repository: Repository

    public init(repository: Repository) {
        self.repository = repository
    }

    public struct Outcome {
        public var rank: Int
        public var modules: Int
        /// Where the merged adapter_config.json was written.
        public var configPath: String
    }

    /// Merges the three manifests git handed over (`base` may be empty: no common version) and writes the merged
    /// manifest into `ours`. Throws (one line) when a version's config cannot be found for sure, or when the two
    /// sides' configs differ (their merge is then not defined by the weights alone).
    public func merge(base: String, ours: String, theirs: String, path: String) throws -> Outcome {
        let lock = try StoreLock(store: repository.store, mode: .shared)
        defer { withExtendedLifetime(lock) {} }
        let versions = AdapterVersions(repository: repository)
        let top = try repository.worktree
        func oid(_ file: String) throws -> String {
            let r = try Subprocess.check(["git", "hash-object", "--no-filters", file], directory: top, what: "git hash-object failed")
            return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // The commits git is merging, when it says (merge, cherry-pick, revert, rebase): each version's config is
        // taken from its own commit first.
        func revParse(_ rev: String) -> String? {
            guard let r = try? Subprocess.run(["git", "rev-parse", "--verify", "-q", rev + "^{commit}"], directory: top), r.status == 0 else { return nil }
            return r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // `git merge` names the commit it merges in the driver's environment (GITHEAD_<id>, for its labels); the
        // sequencer's heads are tried after it.
        let named = ProcessInfo.processInfo.environment.keys.filter { $0.hasPrefix("GITHEAD_") }.sorted().map { String($0.dropFirst("GITHEAD_".count)) }
        let theirsCommit = (named + ["MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "REBASE_HEAD"]).lazy.compactMap(revParse).first
        var baseCommits: [String] = []
        if let theirsCommit {
            if let r = try? Subprocess.run(["git", "merge-base", "--all", "HEAD", theirsCommit], directory: top), r.status == 0 {
                baseCommits = r.stdoutText.split(separator: "\n").map(String.init)
            }
            if let parent = revParse(theirsCommit + "^") { baseCommits.append(parent) }  // a cherry-pick's base
        }
        func config(_ file: String, _ label: String) throws -> [UInt8] {
            let preferred: [String]
            switch label {
            case "ours": preferred = ["HEAD"]
            case "theirs": preferred = theirsCommit.map { [$0] } ?? []
            default: preferred = baseCommits
            }
            guard let v = try versions.sibling(of: path, oid: try oid(file), preferring: preferred) else {
                throw TesseraError(.conflict, "\(path): the adapter_config.json of the \(label) version cannot be found for sure, so ΔW is not known",
                                   hint: "merge the adapter by hand (tessera merge OURS THEIRS), then `git add` it")
            }
            return try versions.bytes(v)
        }
        let hasBase = ((try? FileSystem.readFile(base)) ?? []).isEmpty == false
        let oursConfig = try config(ours, "ours"), theirsConfig = try config(theirs, "theirs")
        guard oursConfig == theirsConfig else {
            throw TesseraError(.conflict, "\(path): the two branches' adapter_config.json differ, so the merged adapter's config is not defined by its weights",
                               hint: "make the configs equal on both branches first, or merge the adapter folders with `tessera merge` and commit the result")
        }
        let O = hasBase ? try versions.open(weights: .file(base), config: try config(base, "base"), label: "base:\(path)") : nil
        let A = try versions.open(weights: .file(ours), config: oursConfig, label: "ours:\(path)")
        let B = try versions.open(weights: .file(theirs), config: theirsConfig, label: "theirs:\(path)")
        let merged = try AdapterMerge.threeWay(base: O, ours: A, theirs: B)
        // The merged weights, written as a file and stored through the filter's own cleaner: the manifest git records.
        let tmp = top + "/" + path + ".tessera-merge-\(ProcessInfo.processInfo.processIdentifier).safetensors"
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let writer = try CheckpointOutputWriter(target: .file(tmp), headerReserve: 1 << 20)
        try merged.write { try writer.append($0, $1) }
        try writer.finish(metadata: [("format", "pt")])
        let bytes = try FileSystem.readFile(tmp)
        let cleaner = CheckpointCleaner(store: repository.store, fileName: path)
        try bytes.withUnsafeBytes { try cleaner.consume($0) }
        let manifest = try cleaner.finish()
        try Data(manifest).write(to: URL(fileURLWithPath: ours))
        let configPath = top + "/" + AdapterVersions.sibling(of: path)
        try Data(merged.configBytes).write(to: URL(fileURLWithPath: configPath))
        return Outcome(rank: merged.rank, modules: merged.tensors.count / 2, configPath: AdapterVersions.sibling(of: path))
    }
}
