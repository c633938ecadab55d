import TesseraCore
import TesseraIO

/// A tokenizer's vocabulary as a transformers fast tokenizer reads it from tokenizer.json: the model's vocabulary
/// (BPE, WordLevel and WordPiece: token → id; Unigram: pieces by position) and the added tokens. `ids` is
/// `get_vocab()`; `added` is `added_tokens_decoder` (sorted by id).
public struct TokenizerVocabulary: Sendable {
    /// Token → id, the model's tokens then the added tokens (an added token's id wins, as in the tokenizers library).
    public private(set) var ids: [String: Int]
    /// The added tokens by id, with their tokenizer.json entries.
    public private(set) var added: [(content: String, id: Int, entry: JSONValue)]
    /// The whole tokenizer.json.
    public private(set) var json: JSONValue

    /// At most this many tokens (real vocabularies have up to a few hundred thousand).
    public static let maxTokens = 1 << 24

    public var count: Int { ids.count }

    public init(tokenizerJSON bytes: [UInt8], name: String) throws {
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch {
            throw TesseraError(.invalidParameter, "\(name): tokenizer.json is not JSON (\(error))", hint: "give the model a valid tokenizer.json")
        }
        self.json = json
        ids = [:]
        added = []
        try read(name: name)
    }

    private mutating func read(name: String) throws {
        func bad(_ what: String) -> TesseraError {
            TesseraError(.invalidParameter, "\(name): tokenizer.json \(what)", hint: "give the model a tokenizer.json that transformers reads")
        }
        guard let model = json["model"] else { throw bad("has no model") }
        var ids: [String: Int] = [:]
        if let vocab = model["vocab"]?.objectValue {
            guard vocab.count <= Self.maxTokens else { throw bad("has more than \(Self.maxTokens) tokens") }
            for (token, id) in vocab {
                guard let i = id.intValue, i >= 0, i < Self.maxTokens else { throw bad("gives token '\(token)' an id that is not a token id") }
                ids[token] = i
            }
        } else if let pieces = model["vocab"]?.arrayValue {
            guard pieces.count <= Self.maxTokens else { throw bad("has more than \(Self.maxTokens) tokens") }
            for (i, p) in pieces.enumerated() {
                guard let t = p.arrayValue?.first?.stringValue else { throw bad("has a vocabulary entry that is not [piece, score]") }
                if ids[t] == nil { ids[t] = i }
            }
        } else {
            throw bad("has no vocabulary (model.vocab)")
        }
        var added: [(content: String, id: Int, entry: JSONValue)] = []
        for entry in json["added_tokens"]?.arrayValue ?? [] {
            guard let c = entry["content"]?.stringValue, let i = entry["id"]?.intValue, i >= 0, i < Self.maxTokens else {
                throw bad("has an added token without content or a token id")
            }
            ids[c] = i
            added.append((c, i, entry))
        }
        self.ids = ids
        self.added = added.sorted { $0.id < $1.id }
    }

    /// Whether `token` is one of the added tokens.
    public func isAdded(_ token: String) -> Bool { added.contains { $0.content == token } }

    /// The tokens in id order (ties, which a sane tokenizer has none of, in token order).
    public var tokensByID: [String] { ids.sorted { $0.value != $1.value ? $0.value < $1.value : $0.key < $1.key }.map(\.key) }

    /// mergekit's `get_stripped_tokenizer`: the tokens whose ids are `vocabSize` or more (past the embedding rows the
    /// model's config declares) removed, with the merges that use them. Only BPE tokenizers can be stripped.
    public func stripped(vocabSize: Int, name: String) throws -> TokenizerVocabulary {
        let unused = Set(ids.filter { $0.value >= vocabSize }.map(\.key))
        guard !unused.isEmpty else { return self }
        guard case let .object(top) = json, json["model"]?["type"]?.stringValue == "BPE" else {
            throw TesseraError(.unsupported, "\(name): its tokenizer has \(unused.count) tokens past its config's vocab_size \(vocabSize), and only a BPE tokenizer can have them removed",
                               hint: "mergekit refuses this too; set vocab_size to the tokenizer's size")
        }
        func keepMerge(_ m: JSONValue) -> Bool {
            let parts: [String]
            if let s = m.stringValue { parts = s.split(separator: " ", omittingEmptySubsequences: false).map(String.init) }
            else { parts = m.arrayValue?.compactMap(\.stringValue) ?? [] }
            return !parts.contains { unused.contains($0) }
        }
        var out = top
        for (k, (key, value)) in out.enumerated() {
            if key == "added_tokens", let list = value.arrayValue {
                out[k].1 = .array(list.filter { ($0["id"]?.intValue ?? 0) < vocabSize })
            } else if key == "model", case let .object(model) = value {
                out[k].1 = .object(model.map { mk, mv in
                    if mk == "vocab", let v = mv.objectValue { return (mk, .object(v.filter { !unused.contains($0.0) })) }
                    if mk == "merges", let list = mv.arrayValue { return (mk, .array(list.filter(keepMerge))) }
                    return (mk, mv)
                })
            }
        }
        var result = self
        result.json = .object(out)
        try result.read(name: name)
        return result
    }

    /// tokenizer.json with `tokens` appended to its added tokens (each entry's `id` set to its new id).
    func appending(_ tokens: [(id: Int, entry: JSONValue)]) -> JSONValue {
        guard !tokens.isEmpty, case let .object(top) = json else { return json }
        var out = top
        let entries: [JSONValue] = tokens.map { t in
            guard case let .object(pairs) = t.entry else { return t.entry }
            return .object(pairs.map { $0.0 == "id" ? ("id", .number(Double(t.id), text: String(t.id))) : $0 })
        }
        if let k = out.firstIndex(where: { $0.0 == "added_tokens" }) {
            out[k].1 = .array((out[k].1.arrayValue ?? []) + entries)
        } else {
            out.insert(("added_tokens", .array(entries)), at: 0)
        }
        return .object(out)
    }

    /// The tokenizer.json entry transformers' `add_tokens(token)` writes for a plain (not special) added token.
    static func plainAddedEntry(_ token: String) -> JSONValue {
        .object([("id", .number(0, text: "0")), ("content", .string(token)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                 ("rstrip", .bool(false)), ("normalized", .bool(true)), ("special", .bool(false))])
    }
}
