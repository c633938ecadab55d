import Foundation
import TesseraCore
import TesseraGit
import TesseraMerge
import TesseraStore
import TesseraIO

/// A checkpoint as a command names it, resolved: its tensors, and the folder its config and tokenizer files are in.
public struct ResolvedCheckpoint {
    public enum Layout: Equatable, Sendable {
        /// One safetensors file (on disk, or tracked: `REV:path`).
        case file
        /// A sharded checkpoint read through its index.
        case sharded(shards: Int)
        /// A PEFT adapter folder's `adapter_model.safetensors`.
        case adapter
    }

    /// The name as given (a path, `REV:path`, `REV:folder`).
    public var name: String
    public var source: TensorSource
    public var layout: Layout
    /// Whether the name is a folder (on disk or at a revision): a Hugging Face model folder.
    public var isFolder: Bool
    /// Where the checkpoint's config and tokenizer files are: the folder itself, else the folder holding the file.
    public var sideFiles: CheckpointFolder?
}

extension ResolvedCheckpoint {
    /// The PEFT adapter this checkpoint is (a folder with adapter_config.json and adapter_model.safetensors), read
    /// and checked; one line saying why not otherwise.
    public func adapterFolder() throws -> AdapterFolder {
        guard layout == .adapter, let folder = sideFiles else {
            throw TesseraError(.invalidParameter, "\(name) is not a PEFT adapter folder",
                               hint: "name a folder with adapter_config.json and adapter_model.safetensors")
        }
        let bytes = try folder.read(CheckpointFolderLayout.adapterConfigName, limit: 16 << 20)
        return try AdapterFolder(configBytes: bytes, tensors: source, name: name)
    }
}

/// Resolves what users name as checkpoints, the same way for every command:
/// - a safetensors file (told from its bytes, whatever its name), or a tracked file's manifest in the worktree;
/// - a Hugging Face folder: `model.safetensors`, or `model.safetensors.index.json` and its shards, or a PEFT adapter
///   (`adapter_model.safetensors` + `adapter_config.json`);
/// - `BASE+ADAPTER` (mergekit's form): the adapter applied to the model;
/// - a shard index file itself;
/// - `REV:path` of a tracked file and `REV:folder` (the same folder layouts, read from git and the object store with
///   no checkout; missing objects are fetched from the remote first).
/// Anything else is one line saying what it is and what to do.
public final class CheckpointResolver {
    /// The repository the names are resolved in (for `REV:path`, and manifests of files not checked out); nil
    /// outside any repository.
    public let repository: Repository?
    private var hashes: [ObjectIdentifier: (String) -> String?] = [:]
    /// Hashes file inputs' tensors for provenance (shared by every file this resolver opens, so that the same tensor
    /// of two inputs is hashed as a pair).
    private let hasher = ProvenanceHasher()
    /// Input hashes remembered from earlier merges of the same unchanged files (nil: no cache folder).
    private let hashCache: TensorHashCache?
    /// Every hashing file source opened, to remember their hashes at `finish`.
    private var hashingSources: [HashingSource] = []
    private lazy var revisions: RevisionCheckpoints? = repository.map { repository in
        RevisionCheckpoints(repository: repository) { [unowned self] manifest, name in try self.stored(manifest, name: name, repository: repository) }
    }

    /// Whether file inputs are hashed for provenance (merges and task vectors record them; evaluation does not).
    public let hashesFileInputs: Bool

    /// Resolves names inside the repository holding `directory`, if any.
    public init(directory: String, hashesFileInputs: Bool = true, hashCache: TensorHashCache? = nil) {
        repository = try? Repository(directory: directory)
        self.hashesFileInputs = hashesFileInputs
        self.hashCache = hashesFileInputs ? (hashCache ?? TensorHashCache.user()) : nil
    }

    public func source(_ spec: String) throws -> TensorSource { try checkpoint(spec).source }

    public func checkpoint(_ spec: String) throws -> ResolvedCheckpoint {
        var st = stat()
        if stat(spec, &st) == 0 {
            if (st.st_mode & S_IFMT) == S_IFDIR {
                let folder = DiskCheckpointFolder(directory: spec) { [unowned self] in try self.openFile($0) }
                return try open(folder: folder, name: spec)
            }
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                throw TesseraError(.usage, "\(spec) is neither a file nor a folder", hint: "name a safetensors file, a model folder or REV:path")
            }
            let parent = (spec as NSString).deletingLastPathComponent
            let beside = DiskCheckpointFolder(directory: parent.isEmpty ? "." : parent) { [unowned self] in try self.openFile($0) }
            let format = CheckpointFileFormat.detect(prefix: DiskCheckpointFolder.prefix(spec, count: 32))
            if format == .json {
                // A shard index: its shards are files beside it.
                let index = try CheckpointFolderLayout.openSharded(index: (spec as NSString).lastPathComponent, in: beside)
                register(index)
                return ResolvedCheckpoint(name: spec, source: index, layout: .sharded(shards: index.shards.count), isFolder: false, sideFiles: beside)
            }
            return ResolvedCheckpoint(name: spec, source: try openFile(spec, format: format), layout: .file, isFolder: false, sideFiles: beside)
        }
        if let applied = try appliedAdapter(spec) { return applied }
        if spec.contains(":") {
            guard let revisions else {
                throw TesseraError(.usage, "\(spec): no such file, and REV:path needs a git repository", hint: "run inside the repository (or -C DIR), or name a file")
            }
            return try revisions.checkpoint(spec, resolver: self)
        }
        if ModelCard.hubID(spec) != nil && !spec.hasSuffix(".safetensors") {
            throw TesseraError(.notFound, "\(spec): no such file or folder (tessera reads local checkpoints; it does not download from the Hugging Face Hub)",
                               hint: "download the model into a folder (e.g. `hf download \(spec) --local-dir DIR`) and name the folder")
        }
        throw TesseraError(.notFound, "\(spec): no such file or folder", hint: "name a safetensors file, a model folder, or REV:path (e.g. HEAD~1:model.safetensors)")
    }

    /// A folder as users name it (a directory, or `REV:folder` read from git and the store), for its small files
    /// (configs, indexes) and the checkpoints in it. One line when it is neither.
    public func folder(_ spec: String) throws -> CheckpointFolder {
        var st = stat()
        if stat(spec, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR else {
                throw TesseraError(.usage, "\(spec) is not a folder", hint: "name a folder, or REV:folder for one tracked in git")
            }
            return DiskCheckpointFolder(directory: spec) { [unowned self] in try self.openFile($0) }
        }
        guard spec.contains(":"), let revisions, let repository else {
            throw TesseraError(.notFound, "\(spec): no such folder", hint: "name a folder, or REV:folder inside a git repository")
        }
        let trimmed = RevisionPath.trimmingSlashes(spec)
        guard repository.git.objectKind(trimmed) == .folder else {
            throw TesseraError(.notFound, "\(spec): no such folder at that revision", hint: "`git ls-tree REV` lists what the revision has")
        }
        let address = RevisionPath(trimmed)
        return RevisionFolder(revisions: revisions, rev: address.rev, path: address.path)
    }

    /// mergekit's `BASE+ADAPTER`: a PEFT adapter folder applied to its base as PEFT's `merge_and_unload` does (read
    /// lazily, tensor by tensor); the side files are the base's. Nil when `spec` is not of that form.
    func appliedAdapter(_ spec: String) throws -> ResolvedCheckpoint? {
        let parts = spec.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { return nil }
        let base = try checkpoint(parts[0])
        let adapter = try checkpoint(parts[1])
        guard base.layout != .adapter else {
            throw TesseraError(.invalidParameter, "\(spec): '\(parts[0])' is an adapter, not a model", hint: "write BASE+ADAPTER: the model first, then the adapter folder")
        }
        let folder = try adapter.adapterFolder()
        var applied = base
        applied.name = spec
        applied.source = try LoRAAppliedSource(base: base.source, adapter: folder.tensors, adapterConfig: folder.configBytes, name: spec)
        return applied
    }

    /// A checkpoint folder (on disk or at a revision) as one source.
    public func open(folder: CheckpointFolder, name: String) throws -> ResolvedCheckpoint {
        let layout = try CheckpointFolderLayout.detect(in: folder)
        let source = try layout.open(in: folder)
        let kind: ResolvedCheckpoint.Layout
        switch layout {
        case .single: kind = .file
        case .sharded:
            let sharded = source as? ShardedSource
            if let sharded { register(sharded) }
            kind = .sharded(shards: sharded?.shards.count ?? 1)
        case .adapter: kind = .adapter
        }
        return ResolvedCheckpoint(name: name, source: source, layout: kind, isFolder: true, sideFiles: folder)
    }

    /// A checkpoint file on disk, told from its bytes: safetensors, or the manifest of a tracked file that is not
    /// checked out.
    public func openFile(_ path: String, format known: CheckpointFileFormat? = nil) throws -> TensorSource {
        let format = known ?? CheckpointFileFormat.detect(prefix: DiskCheckpointFolder.prefix(path, count: 32))
        switch format {
        case .tesseraManifest:
            guard let repository else {
                throw TesseraError(.usage, "\(path) is a tessera manifest (a tracked checkpoint that is not checked out)",
                                   hint: "run inside its repository, or check the file out first")
            }
            let text = String(decoding: try DiskCheckpointFolder.readFile(path, limit: 64 << 20), as: UTF8.self)
            return try stored(try Manifest.parse(text, file: path), name: path, repository: repository)
        case .gguf:
            throw TesseraError(.unsupported, "\(path) is a GGUF file: `tessera eval` reads it, but merges and task vectors read safetensors",
                               hint: "`tessera import \(path) -o FOLDER` writes it as a Hugging Face folder")
        case .json:
            throw TesseraError(.invalidCheckpoint, "\(path) is JSON, not a checkpoint", hint: "name the model's folder, or its .safetensors file")
        case .safetensors:
            let plain = try StreamingSafetensorsSource(path: path)
            guard hashesFileInputs else { return plain }
            let file = HashingSource(plain, hasher: hasher, cache: hashCache)
            hashes[ObjectIdentifier(file)] = { name in file.hash(of: name) }
            hashingSources.append(file)
            return file
        case .zip:
            // A PyTorch checkpoint (its pickle read without executing anything), else a NumPy .npz.
            return try TorchCheckpoint.isTorchArchive(path: path) ? try TorchCheckpoint(path: path) : try NumpyArchive(path: path)
        default:
            throw CheckpointFileFormat.unsupportedError(format, file: path)
                ?? TesseraError(.invalidCheckpoint, "\(path) is not a checkpoint", hint: "name a safetensors file or a model folder")
        }
    }

    func stored(_ manifest: Manifest, name: String, repository: Repository) throws -> TensorSource {
        switch manifest.format {
        case .safetensors: break
        case .pytorch, .npz:
            // Their readers map a file: rebuilt from the objects; the tensors' hashes are the manifest's.
            let source: TensorSource = try MaterializedFile.open(manifest, name: name, repository: repository) { path in
                manifest.format == .pytorch ? try TorchCheckpoint(path: path, name: name) as TensorSource : try NumpyArchive(path: path, name: name)
            }
            var byName: [String: String] = [:]
            for t in manifest.tensors { byName[t.name] = t.stored.rawSHA256 }
            hashes[ObjectIdentifier(source)] = { byName[$0] }
            return source
        case .gguf:
            throw TesseraError(.unsupported, "\(name) is a GGUF file: `tessera eval` and `tessera ls` read it, but merges and task vectors read safetensors",
                               hint: "`tessera import` writes a GGUF as a Hugging Face folder (check it out first)")
        case .opaque:
            throw TesseraError(.unsupported, "\(name) is tracked by tessera but is not a checkpoint it can read (stored whole)",
                               hint: "name a safetensors, PyTorch or NumPy checkpoint")
        }
        try repository.fetchMissingObjects(of: [manifest], forFile: name)
        let checkpoint = try StoredCheckpoint(manifest: manifest, store: repository.store, name: name)
        hashes[ObjectIdentifier(checkpoint)] = { checkpoint.stored($0)?.rawSHA256 }
        return checkpoint
    }

    /// A sharded source's tensor hashes are its shards'.
    public func register(_ sharded: ShardedSource) {
        hashes[ObjectIdentifier(sharded)] = { [weak self, weak sharded] name in
            guard let self, let shard = sharded?.shard(of: name) else { return nil }
            return self.tensorHash(shard, name)
        }
    }

    /// Stops and waits for the background hashing of file inputs. Commands call it before they return or throw, so
    /// that no thread is still reading a tensor when the process exits.
    public func finish() {
        hasher.stop()
        for file in hashingSources { file.rememberHashes() }
    }

    /// The exact SHA-256 of a tensor's bytes in a source this resolver opened (for provenance).
    public func tensorHash(_ source: TensorSource, _ name: String) -> String? {
        hashes[ObjectIdentifier(source)]?(name)
    }
}

/// A file source that records each tensor's SHA-256 (for provenance) as the merge reads it: the resolver's
/// `ProvenanceHasher` hashes the tensor's bytes on worker threads while the merge goes on, from the page cache the
/// merge's own read has just filled, instead of reading every input a second time at the end.
public final class HashingSource: TensorSource, Float32Reading, Float32Mapping, @unchecked Sendable {
    // @unchecked: `hashes` and `submitted` are guarded by `lock`.
    public let inner: StreamingSafetensorsSource
    private let hasher: ProvenanceHasher
    private var hashes: [String: String] = [:]
    private var submitted = Set<String>()
    private let lock = NSLock()

    private let cache: TensorHashCache?
    /// The file's stat data and the time (ns since 1970) when it was opened, for the cache; nil when unknown.
    private let opened: (stat: FileSystem.Stat, at: Int)?
    /// Whether the hashes came from the cache (nothing to remember then).
    private let cached: Bool

    init(_ inner: StreamingSafetensorsSource, hasher: ProvenanceHasher, cache: TensorHashCache? = nil) {
        self.inner = inner
        self.hasher = hasher
        self.cache = cache
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let opened = (try? inner.fileStat()).map { (stat: $0, at: Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec)) }
        self.opened = opened
        if let cache, let opened, let known = cache.lookup(inner.path, stat: opened.stat, tensorNames: inner.tensorNames) {
            hashes = known
            submitted = Set(known.keys)
            cached = true
        } else {
            cached = false
        }
    }

    /// Writes the file's hashes to the cache when every tensor was hashed and the file is unchanged since it was
    /// opened (the cache checks that it had settled before).
    func rememberHashes() {
        guard let cache, let opened, !cached else { return }
        let names = inner.tensorNames
        lock.lock()
        let complete = names.compactMap { n in hashes[n].map { (n, $0) } }
        lock.unlock()
        guard complete.count == names.count else { return }
        cache.record(inner.path, opened: opened.stat, openedAt: opened.at, current: FileSystem.fileStat(inner.path), hashes: complete)
    }

    public var sourceName: String { inner.sourceName }
    public var allowsConcurrentReads: Bool { true }  // the inner file allows them; `hashes` and `submitted` are locked
    public var tensorNames: [String] { inner.tensorNames }
    public var metadata: [(String, String)] { inner.metadata }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { inner.tensorInfo(name) }

    public func rawTensor(_ name: String) throws -> RawTensor {
        let t = try inner.rawTensor(name)
        hashLater(name)
        return t
    }

    public func readFloat32(_ name: String) throws -> [Float]? {
        guard let values = try inner.readFloat32(name) else { return nil }
        hashLater(name)
        return values
    }

    public func mapFloat32(_ name: String) throws -> MappedFloat32? {
        guard let mapped = try inner.mapFloat32(name) else { return nil }
        hashLater(name, mapped: mapped)
        return mapped
    }

    /// Hands the tensor's range of the file to the hasher, once: it reads the bytes again from the page cache, so
    /// the merge's arrays are its own (written in place) and freed as soon as the merge is done with them. A
    /// read-only mapping the merge made is hashed as it is.
    private func hashLater(_ name: String, mapped: MappedFloat32? = nil) {
        lock.lock()
        let first = submitted.insert(name).inserted
        lock.unlock()
        guard first, let location = inner.dataLocation(name) else { return }
        hasher.submit(file: location.file, offset: location.offset, count: location.count, mapped: mapped) { [self] digest in
            lock.lock(); hashes[name] = digest; lock.unlock()
        }
    }

    /// The tensor's SHA-256; computed now if the merge never read it.
    public func hash(of name: String) -> String? {
        lock.lock(); let unread = !submitted.contains(name); lock.unlock()
        if unread { hashUnread() }
        hasher.waitUntilIdle()
        lock.lock(); let h = hashes[name]; lock.unlock()
        if let h { return h }
        return (try? inner.rawTensor(name)).map { SHA256Hasher.hex($0.bytes) }
    }

    /// Hands every tensor the merge never read to the hasher's workers, so that they are hashed over the cores, two
    /// at a time where lengths match, instead of one by one on the calling thread: a slices merge reads only some
    /// layers of each input, and hashing the rest serially at the end was a fifth of its wall time.
    private func hashUnread() {
        for name in inner.tensorNames { hashLater(name) }
    }
}
