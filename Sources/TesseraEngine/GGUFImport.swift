import Foundation
import TesseraCore
import TesseraIO

/// Turns a llama GGUF into a Hugging Face model directory: `model.safetensors` (F32, HF tensor names, Q/K rows
/// un-permuted so the split-halves RoPE of HF applies), `config.json`, `generation_config.json`, and, when the GGUF
/// has a tokenizer, `tokenizer.json` rebuilt from its `tokenizer.ggml.*` metadata and `tokenizer_config.json` (special
/// tokens, chat template) as transformers' GGUF loading sets them up. Loading the directory gives the same logits as
/// the GGUF.
public enum GGUFImport {
    /// Writes the folder and returns the names of the files written. The folder is built under a temporary name
    /// beside `directory` and renamed into place only when complete, so a failure leaves nothing behind; an
    /// existing non-empty `directory` (or a file there) is refused, never overwritten.
    @discardableResult
    public static func writeHuggingFaceDirectory(from gguf: GGUFFile, to directory: String) throws -> [String] {
        let architecture = gguf["general.architecture"]?.stringValue ?? "(none)"
        guard architecture == "llama" else {
            throw TesseraError(.unsupported, "\(gguf.path): importing architecture '\(architecture)' is not supported", hint: "only llama GGUFs can be imported")
        }
        let c = try LlamaConfig.fromGGUF(gguf)
        let from = LlamaTensorNames(convention: .gguf), to = LlamaTensorNames(convention: .huggingFace)
        try ModelLoader.check(source: gguf, expected: from.expected(c), vocabularySize: c.vocabularySize, tokenizerVocabularySize: nil)
        // Everything that can fail on the GGUF's contents is computed before the first file is written.
        let tokenizerFiles: (tokenizer: JSONValue, config: JSONValue)? =
            gguf["tokenizer.ggml.tokens"] == nil ? nil : (try huggingFaceTokenizerJSON(from: gguf), try tokenizerConfigJSON(from: gguf))

        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: directory, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw TesseraError(.usage, "\(directory) exists and is not a folder", hint: "choose another output folder (-o)")
            }
            guard (try? fm.contentsOfDirectory(atPath: directory))?.isEmpty == true else {
                throw TesseraError(.usage, "\(directory) already exists and is not empty; nothing was written",
                                   hint: "choose a new output folder (-o), or remove that one yourself")
            }
        }
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        let staging = target.deletingLastPathComponent()
            .appendingPathComponent(".\(target.lastPathComponent).tessera-import-\(ProcessInfo.processInfo.processIdentifier)").path
        do {
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        } catch {
            throw TesseraError(.io, "\(directory): cannot create a folder beside it", hint: "check that the parent folder exists and is writable")
        }
        var complete = false
        defer { if !complete { try? fm.removeItem(atPath: staging) } }
        func file(_ name: String) -> String { (staging as NSString).appendingPathComponent(name) }

        var written: [String] = []
        var tensors: [(String, RawTensor)] = []
        func add(_ hfName: String, _ ggufName: String, unpermuteHeads: Int? = nil) throws {
            var values = try gguf.dequantized(ggufName)
            guard let shape = gguf.info(ggufName)?.shape else {
                throw TesseraError(.notFound, "\(gguf.path): no tensor named '\(ggufName)'")
            }
            if let heads = unpermuteHeads { values = unpermuteRoPERows(values, rows: shape[0], cols: shape[1], heads: heads) }
            tensors.append((hfName, try RawTensor(floats: values, shape: shape, dtype: .f32)))
        }
        try add(to.embedding, from.embedding)
        try add(to.finalNorm, from.finalNorm)
        if !c.tiedEmbeddings { try add(to.output, from.output) }
        for i in 0..<c.layers {
            for tensor in LlamaTensorNames.LayerTensor.allCases {
                let heads = tensor == .query ? c.heads : tensor == .key ? c.kvHeads : nil
                try add(to.name(tensor, layer: i), from.name(tensor, layer: i), unpermuteHeads: heads)
            }
        }
        try SafetensorsWriter.write(tensors: tensors, metadata: [("format", "pt")], to: file("model.safetensors"))
        tensors = []
        written.append("model.safetensors")

        var config = c.hfConfigJSON()
        var generation: [(String, JSONValue)] = [("_from_model_config", .bool(true))]
        for (key, name) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                            ("tokenizer.ggml.padding_token_id", "pad_token_id")] {
            if let id = gguf[key]?.intValue { generation.append((name, .int(id))) }
        }
        if case var .object(pairs) = config {
            pairs += generation.dropFirst()
            config = .object(pairs)
        }
        try AtomicFile.write(Data(config.serialized().utf8), to: file("config.json"))
        written.append("config.json")
        try AtomicFile.write(Data(JSONValue.object(generation).serialized().utf8), to: file("generation_config.json"))
        written.append("generation_config.json")
        if let tokenizerFiles {
            try AtomicFile.write(Data(tokenizerFiles.tokenizer.serialized().utf8), to: file("tokenizer.json"))
            written.append("tokenizer.json")
            try AtomicFile.write(Data(tokenizerFiles.config.serialized().utf8), to: file("tokenizer_config.json"))
            written.append("tokenizer_config.json")
        }
        // rename(2) replaces an empty folder but never a non-empty one: a folder that filled up meanwhile is kept.
        guard rename(staging, target.path) == 0 else {
            let reason = String(cString: strerror(errno))
            throw TesseraError(.io, "\(directory): cannot move the finished folder into place (\(reason)); nothing was written",
                               hint: "check that the folder is still absent or empty and its parent writable")
        }
        complete = true
        return written
    }

    /// tokenizer_config.json as transformers writes it after loading a GGUF tokenizer: the special tokens by content
    /// (`tokenizer.ggml.{bos,eos,padding,unknown}_token_id`), whether BOS/EOS are added, the chat template
    /// (`tokenizer.chat_template`), and transformers' "no limit" model_max_length (a GGUF records none).
    public static func tokenizerConfigJSON(from gguf: GGUFFile) throws -> JSONValue {
        let tokens = try tokenizerStrings(gguf, "tokenizer.ggml.tokens", required: true)
        var pairs: [(String, JSONValue)] = []
        for (key, name) in [("tokenizer.ggml.add_bos_token", "add_bos_token"), ("tokenizer.ggml.add_eos_token", "add_eos_token")] {
            // transformers' converter treats an absent flag as false.
            pairs.append((name, .bool(gguf[key]?.boolValue ?? false)))
        }
        for (key, name) in [("tokenizer.ggml.bos_token_id", "bos_token"), ("tokenizer.ggml.eos_token_id", "eos_token"),
                            ("tokenizer.ggml.padding_token_id", "pad_token"), ("tokenizer.ggml.unknown_token_id", "unk_token")] {
            guard let value = gguf[key] else { continue }
            guard let id = value.intValue, id >= 0, id < tokens.count else {
                throw TesseraError(.invalidCheckpoint, "\(gguf.path): \(key) \(value) is not a token id of the \(tokens.count)-token vocabulary",
                                   hint: "the GGUF's tokenizer metadata is corrupt")
            }
            pairs.append((name, .string(tokens[id])))
        }
        if let template = gguf["tokenizer.chat_template"]?.stringValue { pairs.append(("chat_template", .string(template))) }
        // transformers' VERY_LARGE_INTEGER, int(1e30), written as it writes it.
        pairs.append(("model_max_length", .number(1e30, text: "1000000000000000019884624838656")))
        pairs.append(("tokenizer_class", .string("PreTrainedTokenizerFast")))
        return .object(pairs.sorted { $0.0 < $1.0 })
    }

    /// A metadata array of strings, every element checked (a non-string would shift the ids of all later tokens).
    static func tokenizerStrings(_ gguf: GGUFFile, _ key: String, required: Bool) throws -> [String] {
        guard let value = gguf[key] else {
            if required { throw TesseraError(.invalidCheckpoint, "\(gguf.path): \(key) is missing", hint: "the GGUF has no tokenizer to convert") }
            return []
        }
        guard let array = value.arrayValue else {
            throw TesseraError(.invalidCheckpoint, "\(gguf.path): \(key) is not an array", hint: "the GGUF's tokenizer metadata is corrupt")
        }
        return try array.enumerated().map { index, item in
            guard let s = item.stringValue else {
                throw TesseraError(.invalidCheckpoint, "\(gguf.path): \(key)[\(index)] is a \(item.typeName), not a string",
                                   hint: "the GGUF's tokenizer metadata is corrupt")
            }
            return s
        }
    }

    /// Undoes llama.cpp's Q/K permutation: within each head, GGUF row 2i+h holds HF row h·(headDim/2)+i.
    public static func unpermuteRoPERows(_ w: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
        let headDim = rows / heads, half = headDim / 2
        var out = [Float](repeating: 0, count: w.count)
        for head in 0..<heads {
            for i in 0..<half {
                for h in 0..<2 {
                    let src = (head * headDim + 2 * i + h) * cols
                    let dst = (head * headDim + h * half + i) * cols
                    for j in 0..<cols { out[dst + j] = w[src + j] }
                }
            }
        }
        return out
    }

    /// A Hugging Face tokenizer.json for a GGUF's GPT-2-style byte-level BPE vocabulary: BPE model with vocab and
    /// merges, ByteLevel pre-tokenizer and decoder, control tokens (token_type 3) and user-defined tokens (type 4)
    /// as added tokens, the control ones special.
    public static func huggingFaceTokenizerJSON(from gguf: GGUFFile) throws -> JSONValue {
        let model = gguf["tokenizer.ggml.model"]?.stringValue ?? "(none)"
        guard model == "gpt2" else {
            throw TesseraError(.unsupported, "\(gguf.path): tokenizer model '\(model)' cannot be converted", hint: "only GPT-2-style byte-level BPE GGUF tokenizers are supported")
        }
        let tokens = try tokenizerStrings(gguf, "tokenizer.ggml.tokens", required: true)
        let merges = try tokenizerStrings(gguf, "tokenizer.ggml.merges", required: false)
        var types: [Int] = []
        if let value = gguf["tokenizer.ggml.token_type"] {
            // A dropped or extra entry would shift every id after it: the lists must match exactly.
            guard let array = value.arrayValue else {
                throw TesseraError(.invalidCheckpoint, "\(gguf.path): tokenizer.ggml.token_type is not an array", hint: "the GGUF's tokenizer metadata is corrupt")
            }
            types = try array.enumerated().map { index, item in
                guard let type = item.intValue else {
                    throw TesseraError(.invalidCheckpoint, "\(gguf.path): tokenizer.ggml.token_type[\(index)] is not an integer", hint: "the GGUF's tokenizer metadata is corrupt")
                }
                return type
            }
            guard types.count == tokens.count else {
                throw TesseraError(.invalidCheckpoint, "\(gguf.path): \(tokens.count) tokens but \(types.count) token types",
                                   hint: "the GGUF's tokenizer metadata is corrupt")
            }
        }
        var added: [JSONValue] = []
        for (id, type) in types.enumerated() where type == 3 || type == 4 {
            added.append(.object([
                ("id", .int(id)), ("content", .string(tokens[id])), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                ("rstrip", .bool(false)), ("normalized", .bool(type == 4)), ("special", .bool(type == 3)),
            ]))
        }
        let mergePairs: [JSONValue] = try merges.map { m in
            guard let space = m.firstIndex(of: " ") else {
                throw TesseraError(.invalidCheckpoint, "\(gguf.path): merge '\(m)' is not two symbols separated by a space")
            }
            return .array([.string(String(m[..<space])), .string(String(m[m.index(after: space)...]))])
        }
        // As transformers writes them when it converts a GGUF tokenizer (the decoder's add_prefix_space has no effect).
        func byteLevel(prefixSpace: Bool) -> JSONValue {
            .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(prefixSpace)),
                     ("trim_offsets", .bool(true)), ("use_regex", .bool(true))])
        }
        return .object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null),
            ("added_tokens", .array(added)), ("normalizer", .null), ("pre_tokenizer", byteLevel(prefixSpace: false)),
            ("post_processor", .null), ("decoder", byteLevel(prefixSpace: true)),
            ("model", .object([
                ("type", .string("BPE")), ("dropout", .null), ("unk_token", .null),
                ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null), ("fuse_unk", .bool(false)),
                ("byte_fallback", .bool(false)), ("ignore_merges", .bool(false)),
                ("vocab", .object(tokens.enumerated().map { ($0.element, JSONValue.int($0.offset)) })),
                ("merges", .array(mergePairs)),
            ])),
        ])
    }
}
