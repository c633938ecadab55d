import Foundation
import TesseraCore
import TesseraGit
import TesseraIO
import TesseraMerge

extension CheckpointResolver {
    /// A checkpoint as `tessera eval` names models: anything `checkpoint` reads, and `REV` alone for the one
    /// checkpoint tracked in that revision.
    public func checkpoint(orRevision spec: String) throws -> ResolvedCheckpoint {
        if !FileManager.default.fileExists(atPath: spec), !spec.contains(":"), let repository,
           let commit = repository.git.resolveCommit(spec) {
            return try checkpoint(try repository.singleCheckpoint(inCommit: commit, rev: spec))
        }
        return try checkpoint(spec)
    }
}

extension Repository {
    /// `REV:PATH` of the one checkpoint tracked in a revision: one tracked file, or one folder holding them all with
    /// a shard index (a sharded checkpoint). Anything else is an error listing what the revision holds.
    public func singleCheckpoint(inCommit commit: String, rev: String) throws -> String {
        let found = try git.manifests(inCommits: [commit]).filter { $0.manifest.format == .safetensors }
        if found.count == 1 { return "\(rev):\(found[0].path)" }
        let folders = Set(found.map { ($0.path as NSString).deletingLastPathComponent })
        if found.count > 1, folders.count == 1, let folder = folders.first,
           git.objectKind("\(rev):\(folder)") == .folder,
           (try? git.treeEntries("\(rev):\(folder)"))?.contains(where: { $0.name == CheckpointFolderLayout.indexName }) == true {
            return "\(rev):\(folder)"
        }
        throw TesseraError(.usage, "\(rev) holds \(found.count) tracked checkpoints",
                           hint: found.isEmpty ? "name a revision that tracks a checkpoint, a model folder or a file"
                               : "name one: \(rev):PATH (\(found.map(\.path).prefix(4).joined(separator: ", ")))")
    }
}

extension ResolvedCheckpoint {
    /// Copies the named files that accompany the weights (config, tokenizer) into `directory`: from the
    /// checkpoint's folder (on disk or at its revision), else, for `REV:path` of a file, from the same folder in the
    /// worktree. Files found nowhere are skipped.
    public func copySideFiles(_ names: [String], into directory: String, limit: Int, worktree: String?) throws {
        let present = Set((try? sideFiles?.fileNames()) ?? [])
        for name in names {
            if let folder = sideFiles, present.contains(name) {
                try Data(try folder.read(name, limit: limit)).write(to: URL(fileURLWithPath: directory + "/" + name))
            } else if !isFolder, let folder = sideFiles as? RevisionFolder, let worktree {
                let inRepository = folder.path.isEmpty ? name : folder.path + "/" + name
                if FileManager.default.fileExists(atPath: worktree + "/" + inRepository) {
                    try FileManager.default.copyItem(atPath: worktree + "/" + inRepository, toPath: directory + "/" + name)
                }
            }
        }
    }
}
