import TesseraCore
import TesseraIO

/// The index of a sharded Hugging Face checkpoint (`model.safetensors.index.json`, as transformers'
/// `save_pretrained` writes it above its shard size): `{"metadata": {...}, "weight_map": {tensor: shard file}}`.
public struct ShardIndex: Sendable {
    /// Tensor name and the shard file that holds it, in the index's order.
    public let weightMap: [(tensor: String, shard: String)]
    /// The distinct shard files, sorted (transformers' names sort in shard order).
    public let shards: [String]
    /// `metadata.total_size` when the index states it.
    public let totalSize: Int?

    /// The largest index accepted: about 200 bytes per tensor, so 64 MB is far beyond any real model.
    public static let maxBytes = 64 << 20

    /// Whether a file's first bytes could be an index: JSON text (an object), not a binary format.
    public static func looksLikeIndex(prefix: [UInt8]) -> Bool {
        guard let first = prefix.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }) else { return false }
        return first == UInt8(ascii: "{")
    }

    public init(weightMap: [(tensor: String, shard: String)], totalSize: Int? = nil) {
        self.weightMap = weightMap
        shards = Array(Set(weightMap.map(\.shard))).sorted()
        self.totalSize = totalSize
    }

    /// Parses and checks an index: a JSON object with a non-empty `weight_map` of tensor names to shard file names.
    /// Shard names must be plain file names in the index's folder (a name with a path could read files anywhere).
    public static func parse(_ bytes: [UInt8], file: String) throws -> ShardIndex {
        guard bytes.count <= maxBytes else {
            throw TesseraError(.invalidCheckpoint, "\(file): \(bytes.count) bytes is too large for a shard index (at most \(maxBytes))",
                               hint: "the file is not a model.safetensors.index.json")
        }
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch let e as JSONError {
            throw TesseraError(.invalidCheckpoint, "\(file): not a shard index: invalid JSON (\(e.message) at byte \(e.offset))",
                               hint: "a sharded checkpoint's index is JSON with a weight_map, as transformers writes it")
        }
        guard let map = json["weight_map"]?.objectValue else {
            throw TesseraError(.invalidCheckpoint, "\(file): not a shard index: no \"weight_map\" object",
                               hint: "a sharded checkpoint's index is JSON with a weight_map, as transformers writes it")
        }
        guard !map.isEmpty else {
            throw TesseraError(.invalidCheckpoint, "\(file): the shard index lists no tensors", hint: "the index is incomplete; re-save the model")
        }
        var entries: [(String, String)] = []
        entries.reserveCapacity(map.count)
        for (tensor, value) in map {
            guard let shard = value.stringValue else {
                throw TesseraError(.invalidCheckpoint, "\(file): weight_map entry for '\(tensor)' is not a file name",
                                   hint: "the index is corrupt; re-save the model")
            }
            try SafetensorsLayout.validateName(tensor, file: file)
            try validateShardName(shard, file: file)
            entries.append((tensor, shard))
        }
        var total: Int? = nil
        if let t = json["metadata"]?["total_size"] {
            // transformers writes an integer; some tools write it as a float or a string: only an exact integer counts.
            total = t.intValue ?? t.stringValue.flatMap { Int($0) } ?? t.doubleValue.flatMap { $0 >= 0 && $0 < 9e15 && $0 == $0.rounded() ? Int($0) : nil }
        }
        return ShardIndex(weightMap: entries, totalSize: total)
    }

    static func validateShardName(_ shard: String, file: String) throws {
        let bad = shard.isEmpty || shard == "." || shard == ".." || shard.contains("/") || shard.contains("\\")
            || shard.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
        if bad {
            throw TesseraError(.invalidCheckpoint, "\(file): shard name \(String(reflecting: shard)) is not a file name in the index's folder",
                               hint: "the index is corrupt or hostile; shards must sit beside their index")
        }
    }

    /// The index as transformers (5.x) writes it: `metadata.total_parameters` (elements) and `total_size` (bytes of
    /// tensor data over all shards), and the weight map, keys sorted, indented by two spaces, with a final newline.
    public static func render(weightMap: [(tensor: String, shard: String)], totalParameters: Int, totalSize: Int) -> String {
        var out = "{\n  \"metadata\": {\n    \"total_parameters\": \(totalParameters),\n    \"total_size\": \(totalSize)\n  },\n  \"weight_map\": {\n"
        let sorted = weightMap.sorted { Array($0.tensor.utf8).lexicographicallyPrecedes(Array($1.tensor.utf8)) }
        for (k, e) in sorted.enumerated() {
            out += "    "
            JSONValue.writeString(e.tensor, to: &out)
            out += ": "
            JSONValue.writeString(e.shard, to: &out)
            out += k == sorted.count - 1 ? "\n" : ",\n"
        }
        out += "  }\n}\n"
        return out
    }
}

/// A sharded checkpoint as one tensor source: names from the index's weight map, each tensor read from its shard.
/// Opening checks every shard and every listed tensor, so a missing shard or a tensor the index promises but its
/// shard lacks is one clear error before any merge or evaluation starts. Tensors a shard holds but the index does not
/// list are not part of the checkpoint (transformers and mergekit read through the weight map too).
public final class ShardedSource: TensorSource, Float32Reading, Float32Mapping, @unchecked Sendable {
    // @unchecked Sendable: immutable after init; reads go to the shards, which say whether they allow concurrency.
    public let sourceName: String
    public let index: ShardIndex
    /// The shards, by file name.
    public let shards: [(name: String, source: TensorSource)]
    private let shardOf: [ExactName: TensorSource]
    public let tensorNames: [String]

    /// `open` opens a shard by its file name (it throws a clear error when the shard is missing or unreadable).
    public init(name: String, index: ShardIndex, open: (String) throws -> TensorSource) throws {
        sourceName = name
        self.index = index
        var opened: [(String, TensorSource)] = []
        var byShard: [String: TensorSource] = [:]
        for shard in index.shards {
            let s = try open(shard)
            opened.append((shard, s))
            byShard[shard] = s
        }
        shards = opened
        var map: [ExactName: TensorSource] = [:]
        var listed: [String: Set<ExactName>] = [:]
        for (tensor, shard) in index.weightMap {
            guard let s = byShard[shard] else { continue }
            guard s.tensorInfo(tensor) != nil else {
                throw TesseraError(.invalidCheckpoint, "\(name): the index puts tensor '\(tensor)' in \(shard), which does not hold it",
                                   hint: "the shards do not match their index; re-download or re-save the model")
            }
            map[ExactName(tensor)] = s
            listed[shard, default: []].insert(ExactName(tensor))
        }
        shardOf = map
        // Shard by shard, each in its own (file) order: the order the model was saved in, and sequential reads.
        var names: [String] = []
        names.reserveCapacity(map.count)
        for (shard, s) in opened {
            let keep = listed[shard] ?? []
            for t in s.tensorNames where keep.contains(ExactName(t)) { names.append(t) }
        }
        tensorNames = names
    }

    /// The shard that holds a tensor.
    public func shard(of tensor: String) -> TensorSource? { shardOf[ExactName(tensor)] }

    public var allowsConcurrentReads: Bool { shards.allSatisfy { $0.source.allowsConcurrentReads } }

    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { shardOf[ExactName(name)]?.tensorInfo(name) }

    /// The first shard's metadata (a sharded save writes the same metadata, e.g. `format: pt`, into every shard).
    public var metadata: [(String, String)] { shards.first?.source.metadata ?? [] }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let s = shardOf[ExactName(name)] else {
            throw TesseraError(.notFound, "\(sourceName): no tensor named '\(name)'", hint: "`tessera ls \(sourceName)` lists the tensors")
        }
        return try s.rawTensor(name)
    }

    public func readFloat32(_ name: String) throws -> [Float]? {
        guard let s = shardOf[ExactName(name)] as? Float32Reading else { return nil }
        return try s.readFloat32(name)
    }

    public func mapFloat32(_ name: String) throws -> MappedFloat32? {
        guard let s = shardOf[ExactName(name)] as? Float32Mapping else { return nil }
        return try s.mapFloat32(name)
    }
}
