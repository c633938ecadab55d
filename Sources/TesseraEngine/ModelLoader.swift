import Foundation
import TesseraCore
import TesseraIO

/// Chooses the architecture of a checkpoint, checks that every tensor it needs is present with the shape its config
/// implies (and, in a GGUF, stored in a type the engine can dequantise) before loading or computing anything, and
/// builds the model.
public enum ModelLoader {
    /// Architectures the engine runs, by Hugging Face `model_type`.
    public static let supportedModelTypes = ["llama", "gpt2", "gpt_neo"]

    /// Loads a decoder-only model from a tensor source. `config` is the Hugging Face config.json; it may be nil for a
    /// GGUF, whose metadata carries the config. `tokenizerVocabularySize`, if given, must not exceed the model's.
    public static func load(source: TensorSource, config: JSONValue? = nil, tokenizerVocabularySize: Int? = nil) throws -> any DecoderArchitecture {
        let model: any DecoderArchitecture
        if let gguf = source as? GGUFFile, config == nil {
            let architecture = gguf["general.architecture"]?.stringValue ?? "(none)"
            guard architecture == "llama" else {
                throw TesseraError(.unsupported, "\(gguf.path): architecture '\(architecture)' is not supported by the engine",
                                   hint: "supported GGUF architectures: llama")
            }
            let c = try LlamaConfig.fromGGUF(gguf)
            let names = LlamaTensorNames(convention: .gguf)
            try check(source: source, expected: names.expected(c), vocabularySize: c.vocabularySize, tokenizerVocabularySize: tokenizerVocabularySize)
            model = try LlamaModel(config: c, source: source, names: names)
        } else {
            guard let config else {
                throw TesseraError(.usage, "\(source.sourceName): a config.json is needed to load a safetensors model",
                                   hint: "put config.json beside the weights")
            }
            switch try modelType(config, source: source.sourceName) {
            case "llama":
                let c = try LlamaConfig.fromHF(config)
                let names = LlamaTensorNames(convention: .huggingFace)
                try check(source: source, expected: names.expected(c), vocabularySize: c.vocabularySize, tokenizerVocabularySize: tokenizerVocabularySize)
                model = try LlamaModel(config: c, source: source, names: names)
            case "gpt2":
                let c = try GPT2Config.fromHF(config)
                try check(source: source, expected: GPT2TensorNames(source: source).expected(c), vocabularySize: c.vocabularySize,
                          tokenizerVocabularySize: tokenizerVocabularySize)
                model = try GPT2Model(config: c, source: source)
            default:  // "gpt_neo"
                let c = try GPTNeoConfig.fromHF(config)
                try check(source: source, expected: GPTNeoTensorNames(source: source).expected(c), vocabularySize: c.vocabularySize,
                          tokenizerVocabularySize: tokenizerVocabularySize)
                model = try GPTNeoModel(config: c, source: source)
            }
        }
        return model
    }

    /// Loads a `.gguf` file, or a Hugging Face directory holding `config.json` and `model.safetensors`.
    public static func load(path: String, tokenizerVocabularySize: Int? = nil) throws -> any DecoderArchitecture {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw TesseraError(.notFound, "\(path): no such file or directory", hint: "pass a .gguf file or a model directory")
        }
        if !isDirectory.boolValue {
            return try load(source: GGUFFile(path: path), tokenizerVocabularySize: tokenizerVocabularySize)
        }
        let configPath = (path as NSString).appendingPathComponent("config.json")
        let weightsPath = (path as NSString).appendingPathComponent("model.safetensors")
        guard let configData = FileManager.default.contents(atPath: configPath) else {
            throw TesseraError(.notFound, "\(configPath): missing", hint: "a Hugging Face model directory needs config.json")
        }
        let config: JSONValue
        do { config = try JSONParser.parse(configData) } catch {
            throw TesseraError(.invalidCheckpoint, "\(configPath): not valid JSON", hint: "fix or re-download config.json", underlying: error)
        }
        guard FileManager.default.fileExists(atPath: weightsPath) else {
            throw TesseraError(.notFound, "\(weightsPath): missing",
                               hint: "the engine reads a single model.safetensors (merge sharded checkpoints first)")
        }
        return try load(source: SafetensorsFile(path: weightsPath), config: config, tokenizerVocabularySize: tokenizerVocabularySize)
    }

    /// The architecture named by config.json's `model_type`, or else its `architectures` list.
    static func modelType(_ config: JSONValue, source: String) throws -> String {
        let byClass = ["LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2", "GPTNeoForCausalLM": "gpt_neo"]
        if let t = config["model_type"]?.stringValue {
            if supportedModelTypes.contains(t) { return t }
            throw TesseraError(.unsupported, "\(source): model_type '\(t)' is not supported by the engine",
                               hint: "supported: \(supportedModelTypes.joined(separator: ", "))")
        }
        let classes = config["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
        if let t = classes.lazy.compactMap({ byClass[$0] }).first { return t }
        throw TesseraError(.unsupported, "\(source): architecture \(classes.isEmpty ? "(not named in config.json)" : classes.joined(separator: ", ")) is not supported by the engine",
                           hint: "supported: \(byClass.keys.sorted().joined(separator: ", "))")
    }

    /// Every expected tensor present, with the implied shape, in a type the engine reads; tokenizer fits the vocabulary.
    static func check(source: TensorSource, expected: [(name: String, shape: [Int])], vocabularySize: Int, tokenizerVocabularySize: Int?) throws {
        if let n = tokenizerVocabularySize, n > vocabularySize {
            throw TesseraError(.shapeMismatch, "\(source.sourceName): the tokenizer has \(n) tokens but the model's vocabulary is \(vocabularySize)",
                               hint: "use the tokenizer that belongs to this model")
        }
        let gguf = source as? GGUFFile
        for (name, shape) in expected {
            guard let info = source.tensorInfo(name) else {
                throw TesseraError(.notFound, "\(source.sourceName): tensor '\(name)' (shape \(shape)) is missing",
                                   hint: "the checkpoint is incomplete or not of the architecture its config names")
            }
            guard info.shape == shape else {
                throw TesseraError(.shapeMismatch, "\(source.sourceName): tensor '\(name)' has shape \(info.shape) but the config implies \(shape)",
                                   hint: "check that config.json belongs to these weights")
            }
            if let gguf {
                try gguf.requireSupported(name)
            } else if ![.f32, .f16, .bf16, .f64].contains(info.dtype) {
                throw TesseraError(.unsupported, "\(source.sourceName): tensor '\(name)' has dtype \(info.dtype.rawValue), which the engine cannot compute with",
                                   hint: "convert the checkpoint to F32, F16 or BF16")
            }
        }
    }
}

/// Loads a decoder-only language model from a tensor source (see `ModelLoader.load`).
public func loadCausalLM(source: TensorSource, config: JSONValue? = nil, tokenizerVocabularySize: Int? = nil) throws -> any DecoderArchitecture {
    try ModelLoader.load(source: source, config: config, tokenizerVocabularySize: tokenizerVocabularySize)
}

/// Loads a decoder-only language model checking that `tokenizer` fits its vocabulary.
public func loadCausalLM(source: TensorSource, config: JSONValue? = nil, tokenizer: any TextTokenizer) throws -> any DecoderArchitecture {
    try ModelLoader.load(source: source, config: config, tokenizerVocabularySize: tokenizer.vocabularySize)
}
