#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TesseraCore
import TesseraIO

/// A folder that may hold a checkpoint in the Hugging Face layout: a folder on disk, or a folder at a git revision
/// (`REV:folder`, read from git and the object store). Layout detection and opening are the same for both.
public protocol CheckpointFolder {
    /// The folder as users name it ("models/a", "HEAD:models/a").
    var name: String { get }
    /// Names of the regular files directly in the folder.
    func fileNames() throws -> [String]
    /// A small file's bytes (configs, tokenizer files, a shard index); an error if it is larger than `limit` bytes.
    func read(_ file: String, limit: Int) throws -> [UInt8]
    /// A safetensors file of the folder as a tensor source.
    func openCheckpoint(_ file: String) throws -> TensorSource
}

extension CheckpointFolder {
    /// "folder/file" for messages.
    public func path(_ file: String) -> String { name.hasSuffix("/") || name.hasSuffix(":") ? name + file : name + "/" + file }
}

/// Where a folder keeps its weights, as transformers and PEFT save them.
public enum CheckpointFolderLayout: Equatable, Sendable {
    /// One `model.safetensors`.
    case single(weights: String)
    /// `model.safetensors.index.json` and the shards it names.
    case sharded(index: String)
    /// A PEFT adapter: `adapter_model.safetensors` (or PEFT's older `adapter_model.bin`, a `torch.save` zip) with
    /// `adapter_config.json`.
    case adapter(weights: String, config: String)

    public static let singleName = "model.safetensors"
    public static let indexName = "model.safetensors.index.json"
    public static let adapterName = "adapter_model.safetensors"
    public static let adapterConfigName = "adapter_config.json"
    /// PEFT's weights file before safetensors (`safe_serialization=False`): read by `TorchCheckpoint`, which executes
    /// nothing.
    public static let adapterBinName = "adapter_model.bin"

    /// The files tessera copies from an input folder into an output folder beside the weights: the model's config,
    /// generation settings, tokenizer and chat template (what transformers' `from_pretrained` reads besides weights).
    public static let sideFileNames = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                       "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.txt", "vocab.json",
                                       "merges.txt", "chat_template.jinja", "chat_template.json"]

    /// The weights' file names (without the folder) for messages.
    public var description: String {
        switch self {
        case let .single(w): return w
        case let .sharded(i): return i
        case let .adapter(w, _): return w
        }
    }

    /// Finds the checkpoint in a folder, or says in one line why there is none.
    public static func detect(in folder: CheckpointFolder) throws -> CheckpointFolderLayout {
        let files = try folder.fileNames()
        let present = Set(files)
        let hasSingle = present.contains(singleName), hasIndex = present.contains(indexName)
        if hasSingle && hasIndex {
            throw TesseraError(.invalidCheckpoint, "\(folder.name) holds both \(singleName) and \(indexName): which one is the model is ambiguous",
                               hint: "remove the stale one, or name the file itself (\(folder.path(singleName)) or \(folder.path(indexName)))")
        }
        if hasSingle { return .single(weights: singleName) }
        if hasIndex { return .sharded(index: indexName) }
        if let weights = [adapterName, adapterBinName].first(where: present.contains) {
            guard present.contains(adapterConfigName) else {
                throw TesseraError(.invalidCheckpoint, "\(folder.name) holds \(weights) but no \(adapterConfigName)",
                                   hint: "a PEFT adapter folder has both; name the weights file itself to read its tensors")
            }
            return .adapter(weights: weights, config: adapterConfigName)
        }
        throw notACheckpoint(folder: folder.name, files: files)
    }

    /// The one-line reason a folder without Hugging Face safetensors weights is not a checkpoint.
    static func notACheckpoint(folder: String, files: [String]) -> TesseraError {
        func matching(_ test: (String) -> Bool) -> [String] { files.filter(test).sorted() }
        let pytorch = matching { $0.hasSuffix(".bin") || $0.hasSuffix(".pt") || $0.hasSuffix(".pth") || $0.hasSuffix(".ckpt")
            || $0 == "pytorch_model.bin.index.json" }
        if let first = pytorch.first {
            return TesseraError(.unsupported, "\(folder) holds PyTorch weights (\(first)): not supported yet: convert it to safetensors",
                                hint: "in Python: AutoModel.from_pretrained(folder).save_pretrained(new_folder) writes model.safetensors")
        }
        let safetensors = matching { $0.hasSuffix(".safetensors") || $0.hasSuffix(".safetensors.index.json") }
        if !safetensors.isEmpty {
            return TesseraError(.notFound, "\(folder) has no \(singleName), \(indexName) or \(adapterName), but holds \(safetensors.prefix(3).joined(separator: ", "))",
                                hint: "name the file itself, e.g. \(folder)/\(safetensors[0])")
        }
        let gguf = matching { $0.hasSuffix(".gguf") }
        if let first = gguf.first {
            return TesseraError(.unsupported, "\(folder) holds a GGUF file (\(first)), not a safetensors checkpoint",
                                hint: "name the .gguf file itself (tessera eval reads it), or `tessera import` it into a Hugging Face folder")
        }
        let other = matching { $0.hasSuffix(".h5") || $0.hasSuffix(".msgpack") || $0.hasSuffix(".onnx") || $0.hasSuffix(".npz") }
        if let first = other.first {
            return TesseraError(.unsupported, "\(folder) holds \(first): not supported yet: convert it to safetensors",
                                hint: "tessera reads safetensors checkpoints (single, sharded or PEFT adapters)")
        }
        return TesseraError(.notFound, "\(folder) holds no checkpoint (no \(singleName), \(indexName) or \(adapterName))",
                            hint: "name a safetensors file, a Hugging Face model folder, or REV:path")
    }

    /// Opens the checkpoint as one tensor source (a sharded one reads through its index).
    public func open(in folder: CheckpointFolder) throws -> TensorSource {
        switch self {
        case let .single(weights), let .adapter(weights, _):
            return try folder.openCheckpoint(weights)
        case let .sharded(indexFile):
            return try Self.openSharded(index: indexFile, in: folder)
        }
    }

    /// Opens the shards an index names, all of which must be files of the same folder.
    public static func openSharded(index indexFile: String, in folder: CheckpointFolder) throws -> ShardedSource {
        let indexPath = folder.path(indexFile)
        let index = try ShardIndex.parse(try folder.read(indexFile, limit: ShardIndex.maxBytes), file: indexPath)
        let present = Set(try folder.fileNames())
        let missing = index.shards.filter { !present.contains($0) }
        if let first = missing.first {
            throw TesseraError(.notFound, "\(indexPath) names shard \(first), which is missing\(missing.count > 1 ? " (and \(missing.count - 1) more)" : "")",
                               hint: "download or restore every shard the index lists into \(folder.name)")
        }
        return try ShardedSource(name: indexPath, index: index) { try folder.openCheckpoint($0) }
    }
}

/// A folder on disk.
public struct DiskCheckpointFolder: CheckpointFolder {
    public let name: String
    public let directory: String
    private let opener: (String) throws -> TensorSource

    /// `open` opens a checkpoint file by its path (the caller decides how: hashing, manifests in a worktree...).
    public init(directory: String, name: String? = nil, open: @escaping (String) throws -> TensorSource) {
        self.directory = directory
        self.name = name ?? directory
        opener = open
    }

    func full(_ file: String) -> String { directory.hasSuffix("/") ? directory + file : directory + "/" + file }

    public func fileNames() throws -> [String] {
        guard let dir = opendir(directory) else {
            throw TesseraError(.io, "\(name): cannot list the folder (\(String(cString: strerror(errno))))", hint: "check that it exists and is readable")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let n = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if n == "." || n == ".." { continue }
            // Regular files, following symlinks (Hugging Face's cache links each file to a blob).
            var st = stat()
            if stat(full(n), &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG { names.append(n) }
        }
        return names.sorted()
    }

    public func read(_ file: String, limit: Int) throws -> [UInt8] {
        try DiskCheckpointFolder.readFile(full(file), limit: limit, name: path(file))
    }

    public func openCheckpoint(_ file: String) throws -> TensorSource { try opener(full(file)) }

    /// Reads a whole regular file of at most `limit` bytes (its size is checked before anything is allocated).
    public static func readFile(_ path: String, limit: Int, name: String? = nil) throws -> [UInt8] {
        let shown = name ?? path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw TesseraError(errno == ENOENT ? .notFound : .io, "\(shown): cannot open (\(String(cString: strerror(errno))))",
                               hint: "check that it exists and is readable")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw TesseraError(.io, "\(shown): not a regular file", hint: "name a file")
        }
        let size = Int(st.st_size)
        guard size <= limit else {
            throw TesseraError(.invalidCheckpoint, "\(shown): \(size) bytes is larger than such a file can be (at most \(limit))",
                               hint: "check that the file is what its name says")
        }
        var out = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let r = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, size - done, off_t(done)) }
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { break }
            done += r
        }
        return Array(out.prefix(done))
    }

    /// The first `count` bytes of a file (fewer if it is shorter), for format detection.
    public static func prefix(_ path: String, count: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let r = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(done)) }
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { break }
            done += r
        }
        return Array(out.prefix(done))
    }
}

/// What a file's first bytes say it is. Formats are told from bytes, not from names: a checkpoint renamed, or a
/// pickle named `.safetensors`, is still recognised for what it is.
public enum CheckpointFileFormat: Equatable, Sendable {
    case safetensors
    case tesseraManifest
    case gguf
    /// JSON text: a shard index, an adapter config, a config...
    case json
    /// A zip archive: PyTorch's `torch.save` format (or NumPy's .npz).
    case zip
    /// A pickle stream: PyTorch's legacy format.
    case pickle
    case empty
    case unknown

    public static func detect(prefix: [UInt8]) -> CheckpointFileFormat {
        if prefix.isEmpty { return .empty }
        if SafetensorsLayout.looksLikeSafetensors(prefix: prefix) { return .safetensors }
        if prefix.starts(with: Array("tessera-manifest ".utf8)) { return .tesseraManifest }
        if prefix.starts(with: Array("GGUF".utf8)) { return .gguf }
        if prefix.starts(with: [0x50, 0x4B, 0x03, 0x04]) || prefix.starts(with: [0x50, 0x4B, 0x05, 0x06]) { return .zip }
        if prefix.count >= 2, prefix[0] == 0x80, (2...5).contains(prefix[1]) { return .pickle }
        if ShardIndex.looksLikeIndex(prefix: prefix) { return .json }
        // Safetensors with an implausible header length (or a truncated file): the parser says what is wrong with it.
        if prefix.count >= 8, prefix.count < 9 || prefix[8] == UInt8(ascii: "{") { return .safetensors }
        return .unknown
    }

    /// The one-line error for a file that is not a checkpoint tessera reads, or nil if it is one.
    public static func unsupportedError(_ format: CheckpointFileFormat, file: String) -> TesseraError? {
        switch format {
        case .zip:
            return TesseraError(.unsupported, "\(file) is a zip archive (PyTorch's torch.save format, or NumPy .npz): not supported yet: convert it to safetensors",
                                hint: "in Python: safetensors.torch.save_file(torch.load(path), 'model.safetensors')")
        case .pickle:
            return TesseraError(.unsupported, "\(file) is a pickled PyTorch checkpoint: not supported yet: convert it to safetensors",
                                hint: "in Python: safetensors.torch.save_file(torch.load(path), 'model.safetensors')")
        case .empty:
            return TesseraError(.invalidCheckpoint, "\(file) is empty", hint: "the file is incomplete; re-save or re-download it")
        case .unknown:
            return TesseraError(.invalidCheckpoint, "\(file) is not a checkpoint (not safetensors, a shard index, or a Hugging Face folder)",
                                hint: "name a safetensors file, a model folder, or REV:path")
        default:
            return nil
        }
    }
}
