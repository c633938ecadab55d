import Foundation
import TesseraCore
import TesseraGit
import TesseraMerge
import TesseraStore

/// Resolves what users name as checkpoints on the command line: a safetensors file, or `REV:path` read from the
/// object store with no checkout (missing objects are fetched from the remote first).
final class CheckpointResolver {
    let context: RepositoryContext?
    private var hashes: [ObjectIdentifier: (String) -> String?] = [:]

    init(directory: String) {
        context = try? RepositoryContext(directory: directory)
    }

    func source(_ spec: String) throws -> TensorSource {
        if FileManager.default.fileExists(atPath: spec) {
            let head = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: spec)).readData(ofLength: 17)).map { Array($0) } ?? []
            if Manifest.looksLikeManifest(head), let context {
                // A tracked file that is not checked out (its manifest is in the worktree).
                let text = try String(contentsOfFile: spec, encoding: .utf8)
                return try stored(try Manifest.parse(text, file: spec), name: spec, context: context)
            }
            let file = try StreamingSafetensorsSource(path: spec)
            hashes[ObjectIdentifier(file)] = { name in (try? file.rawTensor(name)).map { SHA256Hasher.hex($0.bytes) } }
            return file
        }
        guard spec.contains(":") else {
            throw TesseraError(.notFound, "\(spec): no such file", hint: "name a safetensors file or REV:path (e.g. HEAD~1:model.safetensors)")
        }
        guard let context else {
            throw TesseraError(.usage, "\(spec) names a revision but this is not a git repository", hint: "run inside the repository, or name a file")
        }
        let (name, manifest) = try context.manifest(spec)
        return try stored(manifest, name: name, context: context)
    }

    private func stored(_ manifest: Manifest, name: String, context: RepositoryContext) throws -> TensorSource {
        let missing = manifest.objects.filter { !context.store.contains($0.id) }
        if !missing.isEmpty {
            try LFSTransport(repository: context.repository, store: context.store).fetch(missing, forFile: name)
        }
        let checkpoint = try StoredCheckpoint(manifest: manifest, store: context.store, name: name)
        hashes[ObjectIdentifier(checkpoint)] = { checkpoint.stored($0)?.rawSHA256 }
        return checkpoint
    }

    /// The exact SHA-256 of a tensor's bytes in a source this resolver opened (for provenance).
    func tensorHash(_ source: TensorSource, _ name: String) -> String? {
        hashes[ObjectIdentifier(source)]?(name)
    }
}
