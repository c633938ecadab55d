import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraGit
import TesseraStore

/// A model as `tessera eval` names it, loaded for the tasks that need it: `REV:path` of a tracked checkpoint (weights
/// straight from the object store, config and tokenizer from the same revision's folder), `REV` alone (the one
/// checkpoint tracked in that revision), a Hugging Face model folder, a safetensors file with config.json beside it,
/// or a GGUF file.
struct ResolvedModel {
    var label: String
    var kind: Kind
    enum Kind {
        case causal(any CausalLanguageModel, any TextTokenizer)
        case embedder(SentenceEmbedder)
    }

    var models: EvalModels {
        switch kind {
        case let .causal(lm, tok): return EvalModels(languageModel: lm, tokenizer: tok)
        case let .embedder(e): return EvalModels(embedder: e)
        }
    }

    var requirement: ModelRequirement {
        if case .causal = kind { return .causalLanguageModel }
        return .sentenceEmbedder
    }

    static let sideFiles = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                            "sentence_bert_config.json"]

    static func resolve(_ spec: String, resolver: CheckpointResolver) throws -> ResolvedModel {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: spec, isDirectory: &isDirectory) {
            if isDirectory.boolValue { return try fromFolder(weights: try resolver.source(spec + "/model.safetensors"), folder: spec, label: spec) }
            if spec.hasSuffix(".gguf") || (try? GGUFFile(path: spec)) != nil { return try fromGGUF(spec) }
            return try fromFolder(weights: try resolver.source(spec), folder: (spec as NSString).deletingLastPathComponent, label: spec)
        }
        guard let context = resolver.context else {
            throw TesseraError(.notFound, "\(spec): no such file, and this is not a git repository", hint: "name a model folder, a file, or REV:path inside a repository")
        }
        var target = spec
        if !spec.contains(":") {
            // A revision alone: its one tracked checkpoint.
            guard let commit = context.repository.resolveCommit(spec) else {
                throw TesseraError(.notFound, "\(spec) is neither a file nor a revision", hint: "name REV:path, a model folder or a file")
            }
            let found = try context.repository.manifests(inCommits: [commit]).filter { $0.manifest.format == .safetensors }
            guard found.count == 1 else {
                throw TesseraError(.usage, "\(spec) holds \(found.count) tracked checkpoints", hint: "name one: \(spec):PATH (\(found.map(\.path).prefix(4).joined(separator: ", ")))")
            }
            target = "\(spec):\(found[0].path)"
        }
        let colon = target.firstIndex(of: ":")!
        let rev = String(target[..<colon]), path = String(target[target.index(after: colon)...])
        let weights = try resolver.source(target)
        // Side files from the same revision, else from the worktree's folder.
        let folder = (path as NSString).deletingLastPathComponent
        let tmp = NSTemporaryDirectory() + "tessera-eval-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        for name in sideFiles {
            let inRepo = folder.isEmpty ? name : folder + "/" + name
            if let bytes = try? context.repository.blob("\(rev):\(inRepo)") {
                try Data(bytes).write(to: URL(fileURLWithPath: tmp + "/" + name))
            } else if let w = context.repository.workdir, FileManager.default.fileExists(atPath: w + "/" + inRepo) {
                try FileManager.default.copyItem(atPath: w + "/" + inRepo, toPath: tmp + "/" + name)
            }
        }
        return try fromFolder(weights: weights, folder: tmp, label: spec)
    }

    static func fromFolder(weights: TensorSource, folder: String, label: String) throws -> ResolvedModel {
        let configPath = folder + "/config.json"
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw TesseraError(.notFound, "\(label): no config.json beside the weights", hint: "commit the model's config.json in the same folder as the checkpoint")
        }
        let config = try JSONParser.parse(Array(data))
        if config["model_type"]?.stringValue == "bert" {
            let model = try BERTModel(config: BERTConfig(configJSON: configPath), weights: weights)
            return ResolvedModel(label: label, kind: .embedder(SentenceEmbedder(model: model, tokenizer: try WordPieceTokenizer.load(directory: folder))))
        }
        guard FileManager.default.fileExists(atPath: folder + "/tokenizer.json") else {
            throw TesseraError(.notFound, "\(label): no tokenizer.json beside the weights", hint: "commit the model's tokenizer.json with it (`tessera import` writes one)")
        }
        let tokenizer = try BPETokenizer(tokenizerJSONPath: folder + "/tokenizer.json")
        let lm = try loadCausalLM(source: weights, config: config, tokenizer: tokenizer)
        return ResolvedModel(label: label, kind: .causal(lm, tokenizer))
    }

    static func fromGGUF(_ path: String) throws -> ResolvedModel {
        let gguf = try GGUFFile(path: path)
        let json = try GGUFImport.huggingFaceTokenizerJSON(from: gguf)
        let tokens = gguf["tokenizer.ggml.tokens"]?.arrayValue?.compactMap(\.stringValue) ?? []
        func token(_ key: String) -> String? { gguf[key]?.intValue.flatMap { $0 < tokens.count ? tokens[$0] : nil } }
        let tokenizer = try BPETokenizer(tokenizerJSON: Array(json.serialized().utf8), bosToken: token("tokenizer.ggml.bos_token_id"),
                                         eosToken: token("tokenizer.ggml.eos_token_id"), source: path)
        let lm = try loadCausalLM(source: gguf, tokenizer: tokenizer)
        return ResolvedModel(label: path, kind: .causal(lm, tokenizer))
    }
}
