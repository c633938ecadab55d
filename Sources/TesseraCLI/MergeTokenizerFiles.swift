import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraRepository

/// The tokenizer files of a merge's output folder as a config's `tokenizer_source`, `tokenizer:` and
/// `chat_template` choose them, as mergekit 0.1.5 does. When the inputs share one tokenizer (and no `tokens:` or
/// `pad_to_multiple_of` is given) mergekit's permutation of the embedding rows is the identity: the chosen tokenizer's
/// files are copied and the weights merged as they are. Otherwise the output vocabulary and each input's row
/// permutation are built (`VocabularyMerge`), the inputs' vocabulary tensors are permuted as they are read, and the
/// output gets a tokenizer.json with mergekit's token ids and a config.json with the new vocab_size.
enum TokenizerFiles {
    /// Files that define the vocabulary: two inputs share a tokenizer when these are byte for byte the same.
    static let vocabularyFiles = ["tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json"]
    /// Files copied from the tokenizer's model (as mergekit copies them; config.json stays the reference's).
    static let tokenizerFiles = ["tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "added_tokens.json",
                                 "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json"]

    struct Result {
        /// Files to write (replacing the reference's of the same name).
        var files: [(name: String, bytes: [UInt8])] = []
        /// Whether the reference's tokenizer files are replaced as a set (another model's tokenizer).
        var replacesTokenizer = false
        /// The vocabulary merge when the inputs' vocabularies differ (or tokens are added, or rows padded).
        var vocabulary: VocabularyMerge?
    }

    static func files(of checkpoint: ResolvedCheckpoint) throws -> [String: [UInt8]] {
        guard checkpoint.isFolder, let folder = checkpoint.sideFiles else { return [:] }
        let present = Set(try folder.fileNames())
        var out: [String: [UInt8]] = [:]
        for name in tokenizerFiles where present.contains(name) { out[name] = try folder.read(name, limit: ResolvedModel.sideFileLimit) }
        return out
    }

    static func plan(config: MergeConfig, file: String, reference: String, checkpoint: (String) throws -> ResolvedCheckpoint) throws -> Result {
        guard config.tokenizerSource != nil || config.chatTemplate != nil else { return Result() }
        var byModel: [(String, [String: [UInt8]])] = []
        for ref in config.referencedModels { byModel.append((ref, try files(of: try checkpoint(ref)))) }
        var result = Result()
        if let source = config.tokenizerSource {
            // Whether every input that has a tokenizer has the same vocabulary files.
            let withTokenizer = byModel.filter { m in vocabularyFiles.contains { m.1[$0] != nil } }
            let differing = withTokenizer.first.flatMap { first in withTokenizer.first { m in vocabularyFiles.contains { m.1[$0] != first.1[$0] } } }
            let donor: String
            switch source {
            case "base":
                guard let b = config.baseModel else {
                    throw TesseraError(.invalidParameter, "\(file): tokenizer_source: base needs base_model", hint: "set base_model, or name the model whose tokenizer to use")
                }
                donor = b
            case "union": donor = reference // one shared vocabulary: its union is itself
            default: donor = source
            }
            // mergekit sizes the embeddings to the tokenizer's vocabulary (len(get_vocab())): padded embedding rows
            // are cut or added there, so that too goes through the vocabulary merge.
            let donorFiles = byModel.first { $0.0 == donor }?.1 ?? [:]
            var resizes = false
            if let tokens = donorFiles["tokenizer.json"].flatMap(vocabularySize),
               let rows = try embeddingRows(try checkpoint(reference)), rows != tokens {
                resizes = true
            }
            if differing != nil || resizes || !config.tokenizerTokens.isEmpty || config.padToMultipleOf != nil {
                result = try vocabularyMerge(config: config, file: file, source: source, byModel: byModel, checkpoint: checkpoint)
            } else if donor != reference {
                let files = byModel.first { $0.0 == donor }?.1 ?? [:]
                guard vocabularyFiles.contains(where: { files[$0] != nil }) else {
                    throw TesseraError(.notFound, "\(file): tokenizer_source '\(donor)' has no tokenizer files", hint: "name a model folder with tokenizer.json or tokenizer.model")
                }
                result.files = tokenizerFiles.compactMap { n in files[n].map { (n, $0) } }
                result.replacesTokenizer = true
            }
        }
        if let template = config.chatTemplate {
            let text: String?
            if template == "auto" {
                // The most common template among the inputs (the first seen on a tie), as mergekit picks it.
                var counts: [(String, Int)] = []
                for (_, files) in byModel {
                    guard let t = chatTemplate(in: files) else { continue }
                    if let k = counts.firstIndex(where: { $0.0 == t }) { counts[k].1 += 1 } else { counts.append((t, 1)) }
                }
                text = counts.max { $0.1 < $1.1 }?.0
            } else if template.count < 256, !template.contains("\n"), !template.contains("{") {
                guard let named = namedTemplates[template] else {
                    throw TesseraError(.unsupported, "\(file): chat_template '\(template)' names one of mergekit's bundled templates, which tessera does not ship",
                                       hint: "write the Jinja template itself in chat_template, use chatml, or use chat_template: auto")
                }
                text = named
            } else if template.count < 20 {
                throw TesseraError(.invalidParameter, "\(file): chat_template '\(template)' is not a template", hint: "write a Jinja chat template, or auto")
            } else {
                text = template
            }
            if let text {
                result.files.removeAll { $0.name == "chat_template.jinja" || $0.name == "chat_template.json" }
                result.files.append(("chat_template.jinja", Array(text.utf8)))
            }
        }
        return result
    }

    /// The rows of a checkpoint's token embeddings (the first vocabulary tensor it has), nil if it has none.
    static func embeddingRows(_ c: ResolvedCheckpoint) throws -> Int? {
        for name in c.source.tensorNames where VocabularyMerge.vocabularyTensors.contains(name) {
            if let shape = c.source.tensorInfo(name)?.shape, shape.count == 2 { return shape[0] }
        }
        return nil
    }

    /// The output vocabulary across different tokenizers: every input's tokenizer.json and config.json's vocab_size
    /// read, the merge built, and the output's tokenizer files: tokenizer.json written for the new vocabulary, the
    /// other files (tokenizer_config.json, special tokens, chat template) from the tokenizer's model.
    static func vocabularyMerge(config: MergeConfig, file: String, source: String, byModel: [(String, [String: [UInt8]])],
                                checkpoint: (String) throws -> ResolvedCheckpoint) throws -> Result {
        let inputs = config.inputModels
        guard let first = inputs.first else { throw TesseraError(.usage, "\(file): no models to merge", hint: "list the models") }
        let reference = try checkpoint(config.baseModel ?? first)
        let names = reference.source.tensorNames
        guard names.contains(where: { VocabularyMerge.vocabularyTensors.contains($0) }) else {
            throw TesseraError(.unsupported, "\(file): tokenizer_source: \(source) changes the vocabulary, but the models have none of the embedding tensors tessera remaps (\(VocabularyMerge.vocabularyTensors.sorted().joined(separator: ", ")))",
                               hint: "remapping embedding rows is supported for Llama/Mistral and GPT-2 checkpoints")
        }
        if let other = names.first(where: VocabularyMerge.isOtherVocabularyTensor) {
            throw TesseraError(.unsupported, "\(file): tokenizer_source: \(source) changes the vocabulary, and tessera does not remap the rows of '\(other)'",
                               hint: "remapping embedding rows is supported for Llama/Mistral and GPT-2 checkpoints")
        }
        let filesOf = Dictionary(byModel, uniquingKeysWith: { a, _ in a })
        func vocabulary(_ ref: String) throws -> TokenizerVocabulary? {
            let files = filesOf[ref] ?? [:]
            if let json = files["tokenizer.json"] { return try TokenizerVocabulary(tokenizerJSON: json, name: ref) }
            if vocabularyFiles.contains(where: { files[$0] != nil }) {
                throw TesseraError(.unsupported, "\(file): '\(ref)' has a tokenizer without tokenizer.json, which a merge across vocabularies needs",
                                   hint: "save the model's tokenizer with a fast tokenizer (tokenizer.json), as mergekit loads it")
            }
            return nil
        }
        func vocabSize(_ ref: String) throws -> Int? {
            guard let bytes = try? checkpoint(ref).sideFiles?.read("config.json", limit: 16 << 20), let json = try? JSONParser.parse(bytes) else { return nil }
            guard let size = json["vocab_size"]?.intValue else { return nil }
            guard size > 0, size <= TokenizerVocabulary.maxTokens else {
                throw TesseraError(.invalidParameter, "\(file): '\(ref)' declares vocab_size \(size) in its config.json",
                                   hint: "a vocab_size is the number of embedding rows, 1 to \(TokenizerVocabulary.maxTokens)")
            }
            return size
        }
        var list: [(name: String, vocabulary: TokenizerVocabulary?, vocabSize: Int?)] = []
        for ref in inputs { list.append((ref, try vocabulary(ref), try vocabSize(ref))) }
        let choice = VocabularyMerge.Source(source)
        var sourceVocabulary: TokenizerVocabulary?
        if case .model(let m) = choice {
            guard let v = try vocabulary(m) else {
                throw TesseraError(.notFound, "\(file): tokenizer_source '\(m)' has no tokenizer.json", hint: "name a model folder with a tokenizer.json")
            }
            sourceVocabulary = v
        }
        let merge = try VocabularyMerge(source: choice, baseModel: config.baseModel, inputs: list, sourceVocabulary: sourceVocabulary,
                                        tokens: config.tokenizerTokens, padToMultipleOf: config.padToMultipleOf, file: file)
        // The other tokenizer files come from the tokenizer's model: the source model, else the tokenizer base.
        let donor: String
        if case .model(let m) = choice { donor = m } else { donor = config.baseModel ?? first }
        let donorFiles = filesOf[donor] ?? [:]
        var result = Result()
        result.vocabulary = merge
        result.replacesTokenizer = true
        for name in ["tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json"] {
            guard var bytes = donorFiles[name] else { continue }
            // tokenizer.json holds the added tokens; an older tokenizer_config.json's copy would bring stripped ones back.
            if name == "tokenizer_config.json", case let .object(pairs)? = try? JSONParser.parse(bytes), pairs.contains(where: { $0.0 == "added_tokens_decoder" }) {
                bytes = Array((prettyJSON(.object(pairs.filter { $0.0 != "added_tokens_decoder" })) + "\n").utf8)
            }
            result.files.append((name, bytes))
        }
        result.files.append(("tokenizer.json", Array(merge.tokenizerJSON.serialized().utf8)))
        return result
    }

    /// Named chat templates. ChatML (`<|im_start|>ROLE\nCONTENT<|im_end|>\n` per message, then
    /// `<|im_start|>assistant\n` for a generation prompt) is written here as its format defines it; it renders every
    /// conversation as mergekit's bundled `chatml` does (checked by scripts/make_mergekit_config_fixtures.py).
    static let namedTemplates: [String: String] = [
        "chatml": "{% for message in messages %}{{ '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    ]

    /// The number of distinct tokens of a tokenizer.json (its model's vocabulary and its added tokens), as
    /// transformers' `len(get_vocab())` counts them; nil when the file is not a tokenizer it can read.
    static func vocabularySize(_ bytes: [UInt8]) -> Int? {
        guard let json = try? JSONParser.parse(bytes), let model = json["model"] else { return nil }
        var tokens = Set<String>()
        if let vocab = model["vocab"]?.objectValue {
            for (k, _) in vocab { tokens.insert(k) }
        } else if let pieces = model["vocab"]?.arrayValue {
            for p in pieces { if let t = p.arrayValue?.first?.stringValue { tokens.insert(t) } }
        } else {
            return nil
        }
        for t in json["added_tokens"]?.arrayValue ?? [] { if let c = t["content"]?.stringValue { tokens.insert(c) } }
        return tokens.count
    }

    /// A tokenizer's chat template: chat_template.jinja, else tokenizer_config.json's `chat_template` string.
    static func chatTemplate(in files: [String: [UInt8]]) -> String? {
        if let j = files["chat_template.jinja"] { return String(decoding: j, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
        guard let c = files["tokenizer_config.json"], let t = (try? JSONParser.parse(c))?["chat_template"]?.stringValue else { return nil }
        return t.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
