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
    private var hashingSources: [HashingSource] = []

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
            let file = HashingSource(plain)
            hashes[ObjectIdentifier(file)] = { name in file.hash(of: name) }
            hashingSources.append(file)
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
        for source in hashingSources { source.stopHashing() }
    }

    /// The exact SHA-256 of a tensor's bytes in a source this resolver opened (for provenance).
    func tensorHash(_ source: TensorSource, _ name: String) -> String? {
        hashes[ObjectIdentifier(source)]?(name)
    }
}

/// A file source that computes each tensor's SHA-256 (for provenance) from the bytes the merge reads anyway, on a
/// second core while the merge goes on, instead of reading every input a second time at the end. At most two
/// tensors wait to be hashed, so memory stays bounded.
final class HashingSource: TensorSource, Float32Reading, Float32Mapping, ConcurrentReading, @unchecked Sendable {
    // @unchecked: `hashes` is guarded by `lock`; the queue serialises hashing.
    let inner: StreamingSafetensorsSource
    private var hashes: [String: String] = [:]
    private var stopped = false
    private let lock = NSLock()
    private let queue = DispatchQueue(label: "tessera.provenance-hash")
    private let pending = DispatchSemaphore(value: 2)

    init(_ inner: StreamingSafetensorsSource) { self.inner = inner }

    var sourceName: String { inner.sourceName }
    var tensorNames: [String] { inner.tensorNames }
    var metadata: [(String, String)] { inner.metadata }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { inner.tensorInfo(name) }

    func rawTensor(_ name: String) throws -> RawTensor {
        let t = try inner.rawTensor(name)
        hashLater(name, t.bytes)
        return t
    }

    func readFloat32(_ name: String) throws -> [Float]? {
        #if _endian(big)
        return nil  // the floats' storage is not the file's bytes there: hash through rawTensor
        #else
        guard let values = try inner.readFloat32(name) else { return nil }
        hashLater(name, values)  // little-endian float32 storage is exactly the file's bytes
        return values
        #endif
    }

    func mapFloat32(_ name: String) throws -> MappedFloat32? {
        guard let mapped = try inner.mapFloat32(name) else { return nil }
        // The mapping is the file's bytes; the hashing thread holds it until it is hashed.
        hashLater(name) { SHA256Hasher.hex(UnsafeRawBufferPointer(mapped.values)) }
        return mapped
    }

    /// Queues the SHA-256 of a tensor's bytes; the array is immutable, so the hashing thread reads it uncopied.
    private func hashLater<Element: Sendable>(_ name: String, _ storage: [Element]) {
        hashLater(name) { storage.withUnsafeBytes { SHA256Hasher.hex($0) } }
    }

    /// Queues `digest` (which holds the tensor's bytes) to run on the hashing queue.
    private func hashLater(_ name: String, _ digest: @escaping @Sendable () -> String) {
        lock.lock(); let known = hashes[name] != nil; lock.unlock()
        if known { return }
        pending.wait()
        queue.async { [self] in
            defer { pending.signal() }
            lock.lock(); let skip = stopped; lock.unlock()
            if skip { return }
            let h = digest()
            lock.lock(); hashes[name] = h; lock.unlock()
        }
    }

    /// Skips the hashes still queued and waits for the one being computed.
    func stopHashing() {
        lock.lock(); stopped = true; lock.unlock()
        queue.sync {}
    }

    /// The tensor's SHA-256; computed now if the merge never read it.
    func hash(of name: String) -> String? {
        queue.sync {}
        lock.lock(); let h = hashes[name]; lock.unlock()
        if let h { return h }
        return (try? inner.rawTensor(name)).map { SHA256Hasher.hex($0.bytes) }
    }
}
