import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraRepository

/// The tokenizer files of a merge's output folder as a config's `tokenizer_source`, `tokenizer:` and
/// `chat_template` choose them, as mergekit 0.1.5 does within what a weight merge of models sharing a vocabulary
/// needs. mergekit with a tokenizer source builds the output tokenizer and permutes every embedding row to it; when
/// the inputs share one tokenizer that permutation is the identity, so the files are copied and the weights are
/// merged as they are. When the inputs' tokenizers differ, the config is refused: remapping embedding rows to a
/// merged vocabulary is not done here, and merging them unmapped would be wrong.
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
            // Every input that has a tokenizer must have the same vocabulary files.
            let withTokenizer = byModel.filter { m in vocabularyFiles.contains { m.1[$0] != nil } }
            if let first = withTokenizer.first,
               let other = withTokenizer.first(where: { m in vocabularyFiles.contains { m.1[$0] != first.1[$0] } }) {
                throw TesseraError(.unsupported,
                                   "\(file): tokenizer_source: \(source) needs the inputs' tokenizers to be the same, but '\(first.0)' and '\(other.0)' differ",
                                   hint: "mergekit would build a merged vocabulary and remap the embedding rows; tessera merges models that share a tokenizer")
            }
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
            // would be cut or added there. Merging them unchanged would give another shape, so such configs are refused.
            let donorFiles = byModel.first { $0.0 == donor }?.1 ?? [:]
            if let tokens = donorFiles["tokenizer.json"].flatMap(vocabularySize),
               let config = try? checkpoint(reference).sideFiles?.read("config.json", limit: 16 << 20),
               let rows = (try? JSONParser.parse(config))?["vocab_size"]?.intValue, rows != tokens {
                throw TesseraError(.unsupported,
                                   "\(file): tokenizer_source: the tokenizer has \(tokens) tokens but the embeddings have \(rows) rows",
                                   hint: "mergekit would resize the embeddings to the vocabulary; tessera keeps them (remove tokenizer_source to copy the reference's tokenizer)")
            }
            if donor != reference {
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
                result.files.removeAll { $0.name == "chat_template.jinja" }
                result.files.append(("chat_template.jinja", Array(text.utf8)))
            }
        }
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
