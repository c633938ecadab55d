import CoreFoundation  // owns `stat` as Foundation imports it on Linux
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraGit
import TesseraIO
import TesseraMerge
import TesseraRepository

/// A model as `tessera eval` names it, loaded for the tasks that need it: any checkpoint `CheckpointResolver` reads
/// (a safetensors file with config.json beside it, a Hugging Face folder, single or sharded, a shard index, `REV:path`
/// and `REV:folder` with config and tokenizer from the same revision), `REV` alone (the one checkpoint tracked in
/// that revision), or a GGUF file (told from its bytes).
struct ResolvedModel {
    var label: String
    var kind: Kind
    /// The library and router attached, when the model is routed.
    var routing: RoutedEvaluation?
    enum Kind {
        case causal(any CausalLanguageModel, any TextTokenizer)
        case embedder(SentenceEmbedder)
    }

    var models: EvalModels {
        switch kind {
        case let .causal(lm, tok):
            var models = EvalModels(languageModel: lm, tokenizer: tok)
            if let routing { models.taskWillStart = { routing.taskWillStart($0) } }
            return models
        case let .embedder(e): return EvalModels(embedder: e)
        }
    }

    var requirement: ModelRequirement {
        if case .causal = kind { return .causalLanguageModel }
        return .sentenceEmbedder
    }

    /// The files the engine reads beside the weights.
    static let sideFiles = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                            "sentence_bert_config.json"]

    /// `adapters` are attached, unmerged, to the loaded model (`LoRAAdapterAttachment`).
    static func resolve(_ spec: String, resolver: CheckpointResolver, adapters: [LoRAAdapterInput] = [], routing: RoutedEvaluation? = nil) throws -> ResolvedModel {
        var st = stat()
        if stat(spec, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG,
           CheckpointFileFormat.detect(prefix: DiskCheckpointFolder.prefix(spec, count: 32)) == .gguf {
            return try fromGGUF(spec, adapters: adapters, routing: routing)
        }
        // A GGUF tracked by tessera, at a revision: rebuilt from its objects for the engine, which maps a file.
        if spec.contains(":"), let repository = resolver.repository, let manifest = try? repository.manifestBlob(spec, name: spec),
           manifest.format == .gguf {
            return try MaterializedFile.open(manifest, name: spec, repository: repository) { try fromGGUF($0, label: spec, adapters: adapters, routing: routing) }
        }
        let checkpoint = try resolver.checkpoint(orRevision: spec)
        if checkpoint.layout == .adapter {
            throw TesseraError(.unsupported, "\(spec) is a PEFT adapter, not a whole model",
                               hint: "evaluate it on its base model: tessera eval BASE --adapter \(spec)")
        }
        if let disk = checkpoint.sideFiles as? DiskCheckpointFolder {
            return try fromFolder(weights: checkpoint.source, folder: disk.directory, label: spec, adapters: adapters, routing: routing)
        }
        // Side files from the revision's folder, else (for REV:path) from the same folder in the worktree.
        let tmp = NSTemporaryDirectory() + "tessera-eval-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try checkpoint.copySideFiles(sideFiles, into: tmp, limit: sideFileLimit, worktree: resolver.repository?.git.workdir)
        return try fromFolder(weights: checkpoint.source, folder: tmp, label: spec, adapters: adapters, routing: routing)
    }

    /// Config and tokenizer files are read whole; real ones are at most tens of megabytes.
    static let sideFileLimit = 512 << 20

    static func fromFolder(weights: TensorSource, folder: String, label: String, adapters given: [LoRAAdapterInput] = [],
                           routing: RoutedEvaluation? = nil) throws -> ResolvedModel {
        let adapters = try given.map { try $0.droppingUnchangedReplacements(base: weights) }
        let configPath = folder + "/config.json"
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw TesseraError(.notFound, "\(label): no config.json beside the weights", hint: "commit the model's config.json in the same folder as the checkpoint")
        }
        let config: JSONValue
        do { config = try JSONParser.parse(Array(data)) } catch {
            throw TesseraError(.invalidCheckpoint, "\(label): config.json is not valid JSON (\(error))", hint: "fix or re-download config.json")
        }
        if config["model_type"]?.stringValue == "bert" {
            let model = try BERTModel(config: BERTConfig(configJSON: configPath), weights: weights)
            if !adapters.isEmpty { try LoRAAdapterAttachment.attach(adapters, to: model) }
            if routing != nil {
                throw TesseraError(.unsupported, "\(label) is a sentence encoder; routed libraries run on causal language models", hint: "route a Llama, GPT-2 or GPT-Neo base")
            }
            return ResolvedModel(label: label, kind: .embedder(SentenceEmbedder(model: model, tokenizer: try WordPieceTokenizer.load(directory: folder))))
        }
        guard FileManager.default.fileExists(atPath: folder + "/tokenizer.json") else {
            throw TesseraError(.notFound, "\(label): no tokenizer.json beside the weights", hint: "commit the model's tokenizer.json with it (`tessera import` writes one)")
        }
        let tokenizer = try BPETokenizer(tokenizerJSONPath: folder + "/tokenizer.json")
        let lm = try loadCausalLM(source: weights, config: config, tokenizer: tokenizer)
        if !adapters.isEmpty { try LoRAAdapterAttachment.attach(adapters, to: lm) }
        if let routing { return ResolvedModel(label: label, kind: .causal(try routing.attach(lm, tokenizer: tokenizer), tokenizer), routing: routing) }
        return ResolvedModel(label: label, kind: .causal(lm, tokenizer))
    }

    static func fromGGUF(_ path: String, label: String? = nil, adapters: [LoRAAdapterInput] = [], routing: RoutedEvaluation? = nil) throws -> ResolvedModel {
        let gguf = try GGUFFile(path: path)
        let json = try GGUFImport.huggingFaceTokenizerJSON(from: gguf)
        let tokens = gguf["tokenizer.ggml.tokens"]?.arrayValue?.compactMap(\.stringValue) ?? []
        func token(_ key: String) -> String? { gguf[key]?.intValue.flatMap { $0 < tokens.count ? tokens[$0] : nil } }
        let tokenizer = try BPETokenizer(tokenizerJSON: Array(json.serialized().utf8), bosToken: token("tokenizer.ggml.bos_token_id"),
                                         eosToken: token("tokenizer.ggml.eos_token_id"), source: path)
        let lm = try loadCausalLM(source: gguf, tokenizer: tokenizer)
        if !adapters.isEmpty { try LoRAAdapterAttachment.attach(adapters, to: lm) }
        if let routing { return ResolvedModel(label: label ?? path, kind: .causal(try routing.attach(lm, tokenizer: tokenizer), tokenizer), routing: routing) }
        return ResolvedModel(label: label ?? path, kind: .causal(lm, tokenizer))
    }
}
