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
    /// Hashes file inputs' tensors for provenance (shared by every file this resolver opens, so that the same tensor
    /// of two inputs is hashed as a pair).
    private let hasher = ProvenanceHasher()

    /// Whether file inputs are hashed for provenance (merges and task vectors record them; evaluation does not).
    let hashesFileInputs: Bool

    init(directory: String, hashesFileInputs: Bool = true) {
        context = try? RepositoryContext(directory: directory)
        self.hashesFileInputs = hashesFileInputs
    }

    func source(_ spec: String) throws -> TensorSource {
        if FileManager.default.fileExists(atPath: spec) {
            let head = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: spec)).readData(ofLength: 17)).map { Array($0) } ?? []
            if Manifest.looksLikeManifest(head), let context {
                // A tracked file that is not checked out (its manifest is in the worktree).
                let text = try String(contentsOfFile: spec, encoding: .utf8)
                return try stored(try Manifest.parse(text, file: spec), name: spec, context: context)
            }
            let plain = try StreamingSafetensorsSource(path: spec)
            guard hashesFileInputs else { return plain }
            let file = HashingSource(plain, hasher: hasher)
            hashes[ObjectIdentifier(file)] = { name in file.hash(of: name) }
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

    /// Stops and waits for the background hashing of file inputs. Commands call it before they return or throw, so
    /// that no thread is still reading a tensor when the process exits.
    func finish() {
        hasher.stop()
    }

    /// The exact SHA-256 of a tensor's bytes in a source this resolver opened (for provenance).
    func tensorHash(_ source: TensorSource, _ name: String) -> String? {
        hashes[ObjectIdentifier(source)]?(name)
    }
}

/// A file source that records each tensor's SHA-256 (for provenance) from the bytes the merge reads anyway (the
/// arrays it reads, or the file mappings it merges from), hashed by the resolver's `ProvenanceHasher` on worker
/// threads while the merge goes on, instead of reading every input a second time at the end.
final class HashingSource: TensorSource, Float32Reading, Float32Mapping, @unchecked Sendable {
    // @unchecked: `hashes` and `submitted` are guarded by `lock`.
    let inner: StreamingSafetensorsSource
    private let hasher: ProvenanceHasher
    private var hashes: [String: String] = [:]
    private var submitted = Set<String>()
    private let lock = NSLock()

    init(_ inner: StreamingSafetensorsSource, hasher: ProvenanceHasher) {
        self.inner = inner
        self.hasher = hasher
    }

    var sourceName: String { inner.sourceName }
    var allowsConcurrentReads: Bool { true }  // the inner file allows them; `hashes` and `submitted` are locked
    var tensorNames: [String] { inner.tensorNames }
    var metadata: [(String, String)] { inner.metadata }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { inner.tensorInfo(name) }

    func rawTensor(_ name: String) throws -> RawTensor {
        let t = try inner.rawTensor(name)
        let bytes = t.bytes
        hashLater(name, count: bytes.count) { body in bytes.withUnsafeBytes(body) }
        return t
    }

    func readFloat32(_ name: String) throws -> [Float]? {
        #if _endian(big)
        return nil  // the floats' storage is not the file's bytes there: hash through rawTensor
        #else
        guard let values = try inner.readFloat32(name) else { return nil }
        // Little-endian float32 storage is exactly the file's bytes; the array is immutable, so it is read uncopied.
        hashLater(name, count: 4 * values.count) { body in values.withUnsafeBytes(body) }
        return values
        #endif
    }

    func mapFloat32(_ name: String) throws -> MappedFloat32? {
        guard let mapped = try inner.mapFloat32(name) else { return nil }
        // The mapping is the file's bytes; the hasher holds it until it is hashed.
        hashLater(name, count: 4 * mapped.values.count) { body in body(UnsafeRawBufferPointer(mapped.values)) }
        return mapped
    }

    private func hashLater(_ name: String, count: Int, _ bytes: @escaping ProvenanceHasher.ByteAccess) {
        lock.lock()
        let first = submitted.insert(name).inserted
        lock.unlock()
        guard first else { return }
        hasher.submit(count: count, bytes) { [self] digest in
            lock.lock(); hashes[name] = digest; lock.unlock()
        }
    }

    /// The tensor's SHA-256; computed now if the merge never read it.
    func hash(of name: String) -> String? {
        hasher.waitUntilIdle()
        lock.lock(); let h = hashes[name]; lock.unlock()
        if let h { return h }
        return (try? inner.rawTensor(name)).map { SHA256Hasher.hex($0.bytes) }
    }
}
