#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import TesseraCore
import TesseraIO

/// Where a command writes a checkpoint (`merge -o`, `taskvec -o`), decided before any work is done.
///
/// A path ending in `.safetensors`, or an existing regular file, is one safetensors file. An existing folder, a path
/// ending in `/`, or a new path without a weight-file extension is a Hugging Face folder (as mergekit users type
/// `-o ./merged-model`). Nothing tessera did not write is ever replaced: an existing file must carry tessera's
/// provenance metadata, an existing folder must be empty or hold only the files its tessera model card lists, and a
/// symbolic link is refused. Everything is written under a temporary name beside the target and renamed into place
/// when complete.
public enum CheckpointOutputTarget: Equatable, Sendable {
    case file(String)
    case folder(String)

    public var path: String {
        switch self {
        case let .file(p), let .folder(p): return p
        }
    }

    /// Extensions of other weight formats: `-o model.bin` must not silently become a folder named model.bin.
    static let otherWeightExtensions: Set<String> = ["bin", "pt", "pth", "ckpt", "gguf", "h5", "npz", "onnx", "msgpack", "json", "yml", "yaml"]

    public static func resolve(_ path: String) throws -> CheckpointOutputTarget {
        guard !path.isEmpty else { throw TesseraError(.usage, "-o names no path", hint: "give an output file (.safetensors) or folder") }
        var st = stat()
        if lstat(path, &st) == 0 {
            switch st.st_mode & S_IFMT {
            case S_IFLNK:
                throw TesseraError(.conflict, "\(path) is a symbolic link; nothing was written",
                                   hint: "tessera does not write through links: name the file or folder itself, or a new path")
            case S_IFDIR:
                _ = try replaceableFolderFiles(path)
                return .folder(path)
            case S_IFREG:
                try checkReplaceableFile(path)
                return .file(path)
            default:
                throw TesseraError(.conflict, "\(path) exists and is neither a file nor a folder; nothing was written", hint: "choose another output (-o)")
            }
        }
        if path.hasSuffix("/") { return .folder(path) }
        if path.hasSuffix(".safetensors") { return .file(path) }
        let ext = (path.split(separator: "/").last.map(String.init) ?? path).split(separator: ".", omittingEmptySubsequences: false)
        if ext.count > 1, let last = ext.last, otherWeightExtensions.contains(last.lowercased()) {
            throw TesseraError(.usage, "-o \(path): tessera writes safetensors, as one .safetensors file or as a Hugging Face folder",
                               hint: "name a .safetensors file, or a folder (a path without extension, or ending in /)")
        }
        return .folder(path)
    }

    /// An existing output file may be replaced only if tessera wrote it (its metadata says how it was made).
    static func checkReplaceableFile(_ path: String) throws {
        let meta = (try? StreamingSafetensorsSource(path: path))?.metadata ?? []
        guard meta.contains(where: { $0.0 == "tessera.merge.format" || $0.0 == "tessera.taskvec.format" }) else {
            throw TesseraError(.conflict, "\(path) exists and was not written by tessera (it has no tessera provenance); nothing was written",
                               hint: "choose another output (-o), or move that file away yourself")
        }
    }

    /// The files of an existing output folder tessera may replace: none if it is empty, else those its tessera model
    /// card lists (every entry of the folder must be one of them).
    public static func replaceableFolderFiles(_ path: String) throws -> [String] {
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw TesseraError(.io, "\(path): cannot list the folder", hint: "check that it is readable", underlying: error)
        }
        if entries.isEmpty { return [] }
        let refuse = { (why: String) in
            TesseraError(.conflict, "\(path) is not empty and \(why); nothing was written",
                         hint: "choose a new output folder (-o), or move those files away yourself")
        }
        var st = stat()
        let card = (path as NSString).appendingPathComponent("README.md")
        guard lstat(card, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG,
              let bytes = try? DiskCheckpointFolder.readFile(card, limit: ModelCard.maxBytes),
              let listed = ModelCard.filesWritten(byCard: String(decoding: bytes, as: UTF8.self)) else {
            let shown = entries.sorted().prefix(3).joined(separator: ", ")
            throw refuse("was not written by tessera (no tessera model card; it holds \(shown)\(entries.count > 3 ? ", ..." : ""))")
        }
        let known = Set(listed)
        let foreign = entries.filter { e in
            guard known.contains(e) else { return true }
            return lstat((path as NSString).appendingPathComponent(e), &st) != 0 || (st.st_mode & S_IFMT) != S_IFREG
        }.sorted()
        if !foreign.isEmpty {
            throw refuse("holds files tessera did not write (\(foreign.prefix(3).joined(separator: ", "))\(foreign.count > 3 ? ", ..." : ""))")
        }
        return entries
    }
}

/// What a finished output wrote.
public struct CheckpointOutputResult: Sendable {
    /// The files written (for a file target, its own name).
    public var files: [String]
    /// When a replaced folder could not be removed whole (someone put a file in it meanwhile), where it was left.
    public var leftover: String?
}

/// Writes a checkpoint tensor by tensor to a `CheckpointOutputTarget`: one safetensors file, or a Hugging Face folder
/// with the weights (sharded above `maxShardSize` bytes, as transformers' `save_pretrained` shards), the base model's
/// config and tokenizer files, and a model card.
public final class CheckpointOutputWriter {
    public let target: CheckpointOutputTarget
    public let maxShardSize: Int
    /// "model" (model.safetensors, model-00001-of-00002.safetensors) or "adapter_model" for PEFT adapters.
    public let weightsName: String
    private let headerReserve: Int
    private let staging: String
    private var shards: [(writer: SafetensorsStreamWriter, bytes: Int, tensors: [String])] = []
    private var parameters = 0
    private var names = Set<ExactName>()
    private var finished = false

    /// transformers' default `max_shard_size` ("5GB", decimal).
    public static let defaultMaxShardSize = 5_000_000_000

    /// `headerReserve`: bytes to leave for each safetensors header (see `SafetensorsStreamWriter.headerEstimate`).
    public init(target: CheckpointOutputTarget, maxShardSize: Int = defaultMaxShardSize, headerReserve: Int = 1 << 20,
                weightsName: String = "model") throws {
        guard maxShardSize > 0 else { throw TesseraError(.usage, "the shard size must be positive", hint: "e.g. --max-shard-size 5GB") }
        self.target = target
        self.maxShardSize = maxShardSize
        self.headerReserve = headerReserve
        self.weightsName = weightsName
        let url = URL(fileURLWithPath: target.path).standardizedFileURL
        let parent = url.deletingLastPathComponent().path
        let pid = ProcessInfo.processInfo.processIdentifier
        staging = (parent as NSString).appendingPathComponent(".\(url.lastPathComponent).tessera-tmp-\(pid)")
        switch target {
        case .file:
            guard FileManager.default.fileExists(atPath: parent) else {
                throw TesseraError(.notFound, "\(target.path): the folder \(parent) does not exist", hint: "create it first, or choose another output (-o)")
            }
        case .folder:
            do {
                try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
                try? FileManager.default.removeItem(atPath: staging)  // a previous run of this same process id that died
                try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: false)
            } catch {
                throw TesseraError(.io, "\(target.path): cannot create a folder beside it", hint: "check that the parent folder is writable", underlying: error)
            }
        }
    }

    deinit {
        if !finished {
            shards = []  // the writers remove their own temporary files
            try? FileManager.default.removeItem(atPath: staging)
        }
    }

    private func shard(for bytes: Int) throws -> SafetensorsStreamWriter {
        if case .file = target {
            if shards.isEmpty { shards.append((try SafetensorsStreamWriter(path: staging, reserveHeader: headerReserve), 0, [])) }
            return shards[0].writer
        }
        // A new shard when this tensor would take the current one past the limit (a tensor larger than the limit
        // gets a shard of its own).
        if shards.isEmpty || (shards[shards.count - 1].bytes > 0 && shards[shards.count - 1].bytes > maxShardSize - bytes) {
            let path = (staging as NSString).appendingPathComponent("shard-\(shards.count + 1).safetensors")
            shards.append((try SafetensorsStreamWriter(path: path, reserveHeader: headerReserve), 0, []))
        }
        return shards[shards.count - 1].writer
    }

    private func record(_ name: String, bytes: Int, elements: Int) throws {
        guard names.insert(ExactName(name)).inserted else {
            throw TesseraError(.invalidParameter, "\(target.path): tensor '\(name)' written twice")
        }
        parameters += elements
        shards[shards.count - 1].bytes += bytes
        shards[shards.count - 1].tensors.append(name)
    }

    public func append(_ name: String, _ tensor: RawTensor) throws {
        let w = try shard(for: tensor.bytes.count)
        try w.append(name, tensor)
        try record(name, bytes: tensor.bytes.count, elements: tensor.elementCount)
    }

    public func append(_ name: String, float32 values: [Float], shape: [Int]) throws {
        let (bytes, overflow) = values.count.multipliedReportingOverflow(by: 4)
        guard !overflow else { throw TesseraError(.shapeMismatch, "tensor '\(name)' is too large") }
        let w = try shard(for: bytes)
        try w.append(name, float32: values, shape: shape)
        try record(name, bytes: bytes, elements: values.count)
    }

    /// An F32 tensor from float storage the caller holds for the call (a file mapping), written without a copy.
    public func append(_ name: String, float32 values: UnsafeBufferPointer<Float>, shape: [Int]) throws {
        let (bytes, overflow) = values.count.multipliedReportingOverflow(by: 4)
        guard !overflow else { throw TesseraError(.shapeMismatch, "tensor '\(name)' is too large") }
        let w = try shard(for: bytes)
        try w.append(name, float32: values, shape: shape)
        try record(name, bytes: bytes, elements: values.count)
    }

    /// The weight file names the folder will have, in shard order.
    func shardFileNames() -> [String] {
        if shards.count <= 1 { return ["\(weightsName).safetensors"] }
        let n = shards.count
        func five(_ k: Int) -> String { let s = String(k); return String(repeating: "0", count: max(0, 5 - s.count)) + s }
        return (1...n).map { "\(weightsName)-\(five($0))-of-\(five(n)).safetensors" }
    }

    /// Writes the headers (with `metadata` in every weight file) and, for a folder, the shard index, `sideFiles`
    /// (name and bytes) and the model card (`card` receives every file name the folder will hold, README.md
    /// included), then renames the result into place.
    @discardableResult
    public func finish(metadata: [(String, String)], sideFiles: [(name: String, bytes: [UInt8])] = [],
                       card: ((_ files: [String]) -> String)? = nil) throws -> CheckpointOutputResult {
        if shards.isEmpty { _ = try shard(for: 0) }  // a checkpoint with no tensors is still a valid (empty) file
        // transformers 4 refuses safetensors metadata without `format` (save_pretrained writes "pt").
        let metadata = metadata.contains { $0.0 == "format" } ? metadata : [("format", "pt")] + metadata
        switch target {
        case let .file(path):
            try shards[0].writer.finish(metadata: metadata)
            // Replace only what tessera wrote: check again, the output may have appeared while the merge ran.
            var st = stat()
            if lstat(path, &st) == 0 {
                guard (st.st_mode & S_IFMT) == S_IFREG else {
                    throw TesseraError(.conflict, "\(path) appeared while writing and is not a file; nothing was written", hint: "choose another output (-o)")
                }
                try CheckpointOutputTarget.checkReplaceableFile(path)
            }
            try Self.rename(staging, path)
            finished = true
            return CheckpointOutputResult(files: [(path as NSString).lastPathComponent], leftover: nil)
        case let .folder(path):
            let weightFiles = shardFileNames()
            var files = weightFiles
            for (k, s) in shards.enumerated() {
                try s.writer.finish(metadata: metadata)
                try Self.rename((staging as NSString).appendingPathComponent("shard-\(k + 1).safetensors"),
                                (staging as NSString).appendingPathComponent(weightFiles[k]))
            }
            if shards.count > 1 {
                var map: [(tensor: String, shard: String)] = []
                for (k, s) in shards.enumerated() { for t in s.tensors { map.append((t, weightFiles[k])) } }
                let total = shards.reduce(0) { $0 + $1.bytes }
                let indexName = "\(weightsName).safetensors.index.json"
                try write(Array(ShardIndex.render(weightMap: map, totalParameters: parameters, totalSize: total).utf8), indexName)
                files.append(indexName)
            }
            for f in sideFiles where !files.contains(f.name) && f.name != "README.md" {
                try ShardIndex.validateShardName(f.name, file: "side file")
                try write(f.bytes, f.name)
                files.append(f.name)
            }
            if let card {
                files.append("README.md")
                try write(Array(card(files).utf8), "README.md")
            }
            let leftover = try swapIntoPlace(path)
            finished = true
            return CheckpointOutputResult(files: files, leftover: leftover)
        }
    }

    private func write(_ bytes: [UInt8], _ name: String) throws {
        let p = (staging as NSString).appendingPathComponent(name)
        guard FileManager.default.createFile(atPath: p, contents: Data(bytes)) else {
            throw TesseraError(.io, "\(target.path): cannot write \(name)", hint: "check free disk space")
        }
    }

    /// Puts the staged folder at `path`: a rename when nothing is there (or an empty folder, which rename replaces);
    /// else the previous output (all of it tessera's, checked again now) is moved aside, the new one renamed in, and
    /// the old files removed one by one (never a whole tree: a file someone added meanwhile stays, and is reported).
    private func swapIntoPlace(_ path: String) throws -> String? {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            try Self.rename(staging, path)
            return nil
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw TesseraError(.conflict, "\(path) appeared while writing and is not a folder; nothing was written", hint: "choose another output (-o)")
        }
        let old = try CheckpointOutputTarget.replaceableFolderFiles(path)
        if old.isEmpty, posixRename(staging, path) == 0 { return nil }
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let aside = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tessera-old-\(ProcessInfo.processInfo.processIdentifier)").path
        try Self.rename(path, aside)
        do { try Self.rename(staging, path) } catch {
            _ = posixRename(aside, path)
            throw error
        }
        for f in old { unlink((aside as NSString).appendingPathComponent(f)) }
        return rmdir(aside) == 0 ? nil : aside
    }

    static func rename(_ from: String, _ to: String) throws {
        guard posixRename(from, to) == 0 else {
            let why = String(cString: strerror(errno))
            throw TesseraError(errno == ENOSPC ? .noSpace : .io, "cannot rename \(from) to \(to): \(why)", hint: "check the output folder's permissions")
        }
    }
}

/// rename(2), under a name the writer's own `rename` does not shadow.
private func posixRename(_ from: String, _ to: String) -> Int32 { rename(from, to) }

/// Parses a size as transformers' `max_shard_size` takes it: bytes, or a number with KB/MB/GB/TB (decimal) or
/// KiB/MiB/GiB/TiB (binary) units.
public func parseByteSize(_ text: String) throws -> Int {
    let s = text.trimmingCharacters(in: .whitespaces).uppercased()
    let units: [(String, Double)] = [("KIB", 1024), ("MIB", 1_048_576), ("GIB", 1_073_741_824), ("TIB", 1_099_511_627_776),
                                     ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1)]
    var number = s, factor = 1.0
    for (u, f) in units where s.hasSuffix(u) {
        number = String(s.dropLast(u.count)).trimmingCharacters(in: .whitespaces)
        factor = f
        break
    }
    guard let v = Double(number), v.isFinite, v > 0, v * factor >= 1, v * factor < 9e18 else {
        throw TesseraError(.usage, "'\(text)' is not a size", hint: "e.g. 5GB, 500MB, 2GiB or a number of bytes")
    }
    return Int(v * factor)
}
