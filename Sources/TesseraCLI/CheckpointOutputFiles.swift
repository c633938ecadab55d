import ArgumentParser
import Foundation
import TesseraCore
import TesseraMerge
import TesseraRepository

/// The output options of commands that write a checkpoint (`merge`, `taskvec compute|apply`).
struct CheckpointOutputOptions: ParsableArguments {
    @Option(name: [.customShort("o"), .long], help: ArgumentHelp(
        "The output: a .safetensors file, or a Hugging Face folder (an existing folder, a path ending in /, or a path without extension).",
        valueName: "path"))
    var output: String

    @Option(help: ArgumentHelp("Shard a folder output's weights above this size, as transformers does (default 5GB; e.g. 2GB, 500MB).",
                               valueName: "size"))
    var maxShardSize: String?

    /// Where the output goes; refusals (a file or folder tessera did not write, a link) come before any work.
    func target() throws -> CheckpointOutputTarget { try CheckpointOutputTarget.resolve(output) }

    func shardSize() throws -> Int {
        try maxShardSize.map(parseByteSize) ?? CheckpointOutputWriter.defaultMaxShardSize
    }
}

/// Writes a command's output checkpoint: the weights through `CheckpointOutputWriter`, and for a folder the config,
/// generation and tokenizer files of the reference input (the base model, else the first one) when it is a folder,
/// and a model card.
final class OutputCheckpoint {
    let target: CheckpointOutputTarget
    let writer: CheckpointOutputWriter
    /// The input whose side files a folder output takes, when it is a folder (on disk or at a revision).
    let reference: ResolvedCheckpoint?
    /// The output dtype when the command sets one (config.json's dtype is then updated to it).
    let dtype: DType?
    /// The input layer of each output layer when the output's layers are not the reference's (a `slices:` merge):
    /// config.json's layer count and per-layer lists are written to match.
    var layerOrigins: [Int]?
    /// Side files that replace the reference's or are added (a tokenizer from another input, a chat template).
    var extraSideFiles: [(name: String, bytes: [UInt8])] = []
    /// Whether `extraSideFiles` hold another model's tokenizer: the reference's tokenizer files are then left out.
    var replacesTokenizer = false
    /// The output's vocabulary rows when a merge across vocabularies changed them (config.json's vocab_size).
    var vocabularySize: Int?

    init(options: CheckpointOutputOptions, target: CheckpointOutputTarget, reference: ResolvedCheckpoint?, dtype: DType?,
         headerReserve: Int) throws {
        self.target = target
        self.reference = reference?.isFolder == true ? reference : nil
        self.dtype = dtype
        let adapter = reference?.layout == .adapter
        writer = try CheckpointOutputWriter(target: target, maxShardSize: try options.shardSize(), headerReserve: headerReserve,
                                            weightsName: adapter ? "adapter_model" : "model")
    }

    var isFolder: Bool { if case .folder = target { return true }; return false }

    func append(_ name: String, _ tensor: RawTensor) throws { try writer.append(name, tensor) }
    func append(_ name: String, float32 values: [Float], shape: [Int]) throws { try writer.append(name, float32: values, shape: shape) }
    func append(_ name: String, float32 values: UnsafeBufferPointer<Float>, shape: [Int]) throws { try writer.append(name, float32: values, shape: shape) }

    /// Finishes the output; `card` is rendered for a folder with the final file list.
    func finish(metadata: [(String, String)], card: ModelCard) throws -> CheckpointOutputResult {
        guard isFolder else { return try writer.finish(metadata: metadata) }
        var card = card
        card.title = URL(fileURLWithPath: target.path).standardizedFileURL.lastPathComponent
        if reference?.layout == .adapter { card.libraryName = "peft" }
        return try writer.finish(metadata: metadata, sideFiles: try sideFiles()) { card.render(files: $0) }
    }

    func sideFiles() throws -> [(name: String, bytes: [UInt8])] {
        guard let reference, let folder = reference.sideFiles else { return extraSideFiles }
        let present = Set(try folder.fileNames())
        var names = CheckpointFolderLayout.sideFileNames
        if reference.layout == .adapter { names.insert(CheckpointFolderLayout.adapterConfigName, at: 0) }
        var out: [(String, [UInt8])] = []
        for name in names where present.contains(name) {
            var bytes = try folder.read(name, limit: ResolvedModel.sideFileLimit)
            if name == "config.json", let dtype { bytes = Self.settingDType(dtype, inConfig: bytes) }
            if name == "config.json", let layerOrigins { bytes = Self.settingLayers(layerOrigins, inConfig: bytes) }
            if name == "config.json", let vocabularySize { bytes = Self.setting("vocab_size", to: vocabularySize, inConfig: bytes) }
            if extraSideFiles.contains(where: { $0.name == name }) { continue }
            if replacesTokenizer, name != "config.json", name != "generation_config.json" { continue }
            out.append((name, bytes))
        }
        return out + extraSideFiles
    }

    /// config.json with an integer key set (added at the end when missing), as mergekit's `set_config_value` does.
    static func setting(_ key: String, to value: Int, inConfig bytes: [UInt8]) -> [UInt8] {
        guard case var .object(pairs)? = try? JSONParser.parse(bytes) else { return bytes }
        if let k = pairs.firstIndex(where: { $0.0 == key }) {
            guard pairs[k].1.intValue != value else { return bytes }
            pairs[k].1 = .int(value)
        } else {
            pairs.append((key, .int(value)))
        }
        return Array((prettyJSON(.object(pairs)) + "\n").utf8)
    }

    /// config.json with every layer-count key it has (`num_hidden_layers`, `n_layer`, `num_layers`, `n_layers`) set
    /// to the output's number of layers, as mergekit writes it. Per-layer lists, which mergekit 0.1.5 leaves as they
    /// were (transformers then refuses the config, or applies the wrong attention to a layer), are rebuilt from the
    /// layer each output layer comes from: `layer_types` and GPT-Neo's `attention_layers` (one entry per layer) and
    /// its `attention_types` (`[[types, repeat], ...]`, written back as one run of the per-layer list).
    static func settingLayers(_ origins: [Int], inConfig bytes: [UInt8]) -> [UInt8] {
        guard case let .object(pairs)? = try? JSONParser.parse(bytes) else { return bytes }
        let count = origins.count
        func perLayer(_ list: [JSONValue]) -> [JSONValue]? {
            guard origins.allSatisfy({ $0 < list.count }) else { return nil }
            return origins.map { list[$0] }
        }
        var changed = false
        let updated = pairs.map { key, value -> (String, JSONValue) in
            if LayerLayout.layerCountKeys.contains(key), let n = value.intValue, n != count {
                changed = true
                return (key, .int(count))
            }
            if key == "layer_types" || key == "attention_layers", let list = value.arrayValue, let out = perLayer(list) {
                changed = true
                return (key, .array(out))
            }
            if key == "attention_types", let runs = value.arrayValue {
                // Expanded as transformers expands it: each [types, n] repeats `types` n times.
                var expanded: [JSONValue] = []
                for run in runs {
                    guard let r = run.arrayValue, r.count == 2, let types = r[0].arrayValue, let n = r[1].intValue, n >= 0, n < 1 << 16 else { return (key, value) }
                    for _ in 0..<n {
                        expanded += types
                        // A real model has at most a few hundred layers; a hostile config must not grow memory.
                        guard expanded.count <= 1 << 16 else { return (key, value) }
                    }
                }
                guard let out = perLayer(expanded) else { return (key, value) }
                changed = true
                return (key, .array([.array([.array(out), .int(1)])]))
            }
            return (key, value)
        }
        guard changed else { return bytes }
        return Array((prettyJSON(.object(updated)) + "\n").utf8)
    }

    /// config.json with its `torch_dtype` (transformers 4) or `dtype` (transformers 5) set to the output's dtype, as
    /// mergekit writes it; unchanged if it states neither, is not JSON, or already says so.
    static func settingDType(_ dtype: DType, inConfig bytes: [UInt8]) -> [UInt8] {
        let name: String
        switch dtype {
        case .f32: name = "float32"
        case .f16: name = "float16"
        case .bf16: name = "bfloat16"
        default: return bytes
        }
        guard case let .object(pairs)? = try? JSONParser.parse(bytes) else { return bytes }
        var changed = false
        let updated = pairs.map { key, value -> (String, JSONValue) in
            guard key == "torch_dtype" || key == "dtype", let s = value.stringValue, s != name else { return (key, value) }
            changed = true
            return (key, .string(name))
        }
        guard changed else { return bytes }
        return Array((prettyJSON(.object(updated)) + "\n").utf8)
    }

    /// Hugging Face Hub ids of the inputs that are folders whose config.json records one (`_name_or_path`).
    static func hubIDs(_ inputs: [ResolvedCheckpoint]) -> [String] {
        var out: [String] = []
        for c in inputs where c.isFolder {
            guard let folder = c.sideFiles, (try? folder.fileNames())?.contains("config.json") == true,
                  let bytes = try? folder.read("config.json", limit: 16 << 20),
                  let id = (try? JSONParser.parse(bytes))?["_name_or_path"]?.stringValue.flatMap(ModelCard.hubID),
                  !out.contains(id) else { continue }
            out.append(id)
        }
        return out
    }

    /// "into OUT" plus, for a folder, what it holds.
    func describe(_ result: CheckpointOutputResult) -> String {
        var s = target.path
        if isFolder { s += " (Hugging Face folder: \(result.files.joined(separator: ", ")))" }
        if let leftover = result.leftover { s += "; the previous output was left at \(leftover): it holds files tessera did not write" }
        return s
    }
}

/// JSON text indented by two spaces, keys in their stored order (how transformers writes config files).
func prettyJSON(_ value: JSONValue, indent: Int = 0) -> String {
    let pad = String(repeating: " ", count: indent + 2), end = String(repeating: " ", count: indent)
    switch value {
    case let .array(items) where !items.isEmpty:
        return "[\n" + items.map { pad + prettyJSON($0, indent: indent + 2) }.joined(separator: ",\n") + "\n" + end + "]"
    case let .object(pairs) where !pairs.isEmpty:
        return "{\n" + pairs.map { k, v in
            var key = ""
            JSONValue.writeString(k, to: &key)
            return pad + key + ": " + prettyJSON(v, indent: indent + 2)
        }.joined(separator: ",\n") + "\n" + end + "}"
    default:
        return value.serialized()
    }
}
