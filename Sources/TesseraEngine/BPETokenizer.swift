import Foundation
import TesseraCore
import TesseraIO

/// A token matched in the raw text before pre-tokenization (tokenizer.json `added_tokens`, GGUF control and
/// user-defined tokens). Special ones are skipped by `decode(_:skipSpecialTokens: true)`.
public struct AddedToken: Sendable, Equatable {
    public var content: String
    public var id: Int
    public var special: Bool
    /// Also consume the whitespace to the left / right of the match.
    public var lstrip: Bool
    public var rstrip: Bool
    /// Only match when not inside a word.
    public var singleWord: Bool

    public init(content: String, id: Int, special: Bool, lstrip: Bool = false, rstrip: Bool = false,
                singleWord: Bool = false) {
        self.content = content
        self.id = id
        self.special = special
        self.lstrip = lstrip
        self.rstrip = rstrip
        self.singleWord = singleWord
    }
}

/// How a GGUF file's `tokenizer.ggml.pre` becomes a pre-tokenizer.
public enum GGUFPreTokenizerConvention: Sendable {
    /// As transformers converts a GGUF to a Hugging Face tokenizer (`GGUFGPTConverter`): `tokenizer.ggml.pre` is
    /// ignored and the GPT-2 ByteLevel split is used. This is what the reference tokenizer.json and golden values
    /// for SmolLM2 were made with, so it is the default.
    case huggingFace
    /// As llama.cpp reads `tokenizer.ggml.pre` (e.g. "smollm" isolates every `\p{N}` before the GPT-2 split, like
    /// the original SmolLM2 tokenizer.json's `Digits` step). Unknown names are an error.
    case llamaCpp
}

/// Byte-level BPE with Hugging Face `tokenizers` semantics (GPT-2, SmolLM2, Llama 3, Qwen 2 families): added tokens
/// are matched first in the raw text, the rest is pre-tokenized, each piece's UTF-8 bytes are mapped to GPT-2's
/// byte characters and merged by rank. Built from a tokenizer.json or from GGUF metadata.
///
/// A final class because `TextTokenizer` is class-bound; `@unchecked Sendable` because its only mutable state, the
/// word cache, is guarded by `cacheLock`. Everything else is immutable after init.
public final class BPETokenizer: TextTokenizer, @unchecked Sendable {
    /// Token string (in byte-level characters) → id, without the added tokens that are not in the model vocab.
    public let vocabulary: [String: Int]
    public let addedTokens: [AddedToken]
    public let preTokenizer: PreTokenizer
    /// Ids put before / after every encoded text when `addSpecialTokens` (the tokenizer.json post-processor, or
    /// GGUF `add_bos_token` / `add_eos_token`).
    public let prefixIDs: [Int]
    public let suffixIDs: [Int]
    public let bosTokenID: Int?
    public let eosTokenID: Int?
    public let stopTokenIDs: Set<Int>
    public let specialTokenIDs: Set<Int>
    public let vocabularySize: Int
    /// tokenizer.json `model.ignore_merges`: a piece that is itself a vocabulary entry is not merged (Llama 3).
    public let ignoreMerges: Bool

    private let tokenStrings: [String?]
    /// The bytes each id decodes to (ByteLevel decoder: characters mapped back to bytes).
    private let tokenBytes: [[UInt8]]
    /// Id of the one-character token for each byte, -1 if the vocabulary lacks it.
    private let byteIDs: [Int32]
    private let unknownID: Int32
    private let merges: [UInt64: Merge]
    /// Added tokens by first scalar, longest first (leftmost-longest matching).
    private let addedByFirstScalar: [UInt32: [(scalars: [Unicode.Scalar], index: Int)]]

    private let cacheLock = NSLock()
    private var cache: [[UInt8]: [Int32]] = [:]
    private static let cacheCapacity = 100_000
    static let maxTokenID = 1 << 24
    private static let cachedWordMaxBytes = 64

    struct Merge {
        var rank: Int32
        var newID: Int32
    }

    @inline(__always)
    static func pairKey(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }

    // MARK: Construction

    /// The general initializer the tokenizer.json and GGUF readers go through.
    /// - Parameters:
    ///   - vocabulary: (token, id) pairs of the BPE model, tokens in byte-level characters.
    ///   - merges: merge rules in rank order.
    ///   - stopTokens: contents of further tokens that end generation (besides `eosTokenID`).
    public init(vocabulary: [(String, Int)], merges: [(String, String)], addedTokens: [AddedToken],
                preTokenizer: PreTokenizer, ignoreMerges: Bool = false, unknownToken: String? = nil,
                prefixIDs: [Int] = [], suffixIDs: [Int] = [], bosTokenID: Int? = nil, eosTokenID: Int? = nil,
                extraStopTokenIDs: [Int] = [], source: String) throws {
        guard preTokenizer.steps.contains(where: { if case .byteLevel = $0 { return true }; return false }) else {
            throw TesseraError(.unsupported, "\(source): the pre-tokenizer has no ByteLevel step, so this is not a byte-level BPE tokenizer",
                               hint: "only byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen 2 families) is supported")
        }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(vocabulary.count)
        var maxID = -1
        for (token, id) in vocabulary {
            guard id >= 0 else { throw TesseraError(.invalidCheckpoint, "\(source): token \(token) has negative id \(id)") }
            vocab[token] = id
            maxID = max(maxID, id)
        }
        for token in addedTokens {
            guard token.id >= 0 else { throw TesseraError(.invalidCheckpoint, "\(source): added token \(token.content) has negative id \(token.id)") }
            maxID = max(maxID, token.id)
        }
        // Tables are indexed by id, so the largest id sizes them: bound it far above any real vocabulary.
        guard maxID < Self.maxTokenID else {
            throw TesseraError(.invalidCheckpoint, "\(source): token id \(maxID) is too large (at most \(Self.maxTokenID - 1))",
                               hint: "the tokenizer file is corrupt")
        }
        var strings = [String?](repeating: nil, count: maxID + 1)
        for (token, id) in vocab { strings[id] = token }
        // Added tokens take precedence for id → token, as in Hugging Face's decode.
        for token in addedTokens { strings[token.id] = token.content }

        var table: [UInt64: Merge] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let left = vocab[a], let right = vocab[b] else {
                throw TesseraError(.invalidCheckpoint, "\(source): merge \"\(a) \(b)\" (rank \(rank)) uses a token that is not in the vocabulary",
                                   hint: "the tokenizer file is corrupt or its vocabulary and merges do not belong together")
            }
            guard let merged = vocab[a + b] else {
                throw TesseraError(.invalidCheckpoint, "\(source): merge \"\(a) \(b)\" (rank \(rank)) makes \(a + b), which is not in the vocabulary",
                                   hint: "the tokenizer file is corrupt or its vocabulary and merges do not belong together")
            }
            // A repeated pair keeps its last rank, as Hugging Face's map construction does.
            table[Self.pairKey(Int32(left), Int32(right))] = Merge(rank: Int32(rank), newID: Int32(merged))
        }

        var byteIDs = [Int32](repeating: -1, count: 256)
        for byte in 0..<256 {
            if let id = vocab[String(Character(ByteLevel.byteToScalar[byte]))] { byteIDs[byte] = Int32(id) }
        }
        var addedIndex: [UInt32: [(scalars: [Unicode.Scalar], index: Int)]] = [:]
        for (index, token) in addedTokens.enumerated() {
            let scalars = Array(token.content.unicodeScalars)
            guard let first = scalars.first else { continue }
            addedIndex[first.value, default: []].append((scalars, index))
        }
        for key in addedIndex.keys { addedIndex[key]!.sort { $0.scalars.count > $1.scalars.count } }

        self.vocabulary = vocab
        self.addedTokens = addedTokens
        self.preTokenizer = preTokenizer
        self.ignoreMerges = ignoreMerges
        self.prefixIDs = prefixIDs
        self.suffixIDs = suffixIDs
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.tokenStrings = strings
        self.tokenBytes = strings.map { $0.map(ByteLevel.decodeToken) ?? [] }
        self.byteIDs = byteIDs
        self.unknownID = unknownToken.flatMap { vocab[$0] }.map(Int32.init) ?? -1
        self.merges = table
        self.addedByFirstScalar = addedIndex
        self.vocabularySize = maxID + 1
        self.specialTokenIDs = Set(addedTokens.filter(\.special).map(\.id))
        var stops = Set(extraStopTokenIDs)
        if let eosTokenID { stops.insert(eosTokenID) }
        // End-of-turn markers of the common chat formats end generation even when the file names another EOS.
        let endOfTurn: Set<String> = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>",
                                      "<end_of_turn>", "</s>"]
        for token in addedTokens where token.special && endOfTurn.contains(token.content) { stops.insert(token.id) }
        self.stopTokenIDs = stops
    }

    /// From the bytes of a Hugging Face tokenizer.json. `bosToken` / `eosToken` name tokens that tokenizer.json itself
    /// does not record (they live in tokenizer_config.json).
    public convenience init(tokenizerJSON bytes: [UInt8], bosToken: String? = nil, eosToken: String? = nil,
                            source: String = "tokenizer.json") throws {
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes)
        } catch {
            throw TesseraError(.invalidCheckpoint, "\(source) is not valid JSON", hint: "re-download the tokenizer",
                               underlying: error)
        }
        guard let model = json["model"] else {
            throw TesseraError(.invalidCheckpoint, "\(source) has no model section")
        }
        let type = model["type"]?.stringValue ?? (model["merges"] != nil ? "BPE" : "?")
        guard type == "BPE" else {
            throw TesseraError(.unsupported, "\(source) holds a \(type) model, not BPE",
                               hint: "WordPiece tokenizers are read by the WordPiece tokenizer")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let value = model[key]?.stringValue, !value.isEmpty {
                throw TesseraError(.unsupported, "\(source): BPE \(key) \"\(value)\" is not supported",
                                   hint: "only byte-level BPE without subword affixes is implemented")
            }
        }
        if let dropout = model["dropout"]?.doubleValue, dropout > 0 {
            throw TesseraError(.unsupported, "\(source): BPE dropout \(dropout) is not supported",
                               hint: "dropout is a training-time option; set it to null")
        }
        if let normalizer = json["normalizer"], normalizer != .null {
            throw TesseraError(.unsupported, "\(source): normalizer \(normalizer["type"]?.stringValue ?? "?") is not supported",
                               hint: "only byte-level BPE tokenizers without a normalizer are implemented")
        }
        if let decoder = json["decoder"], decoder != .null, decoder["type"]?.stringValue != "ByteLevel" {
            throw TesseraError(.unsupported, "\(source): decoder \(decoder["type"]?.stringValue ?? "?") is not supported",
                               hint: "only the ByteLevel decoder is implemented")
        }

        guard let vocabPairs = model["vocab"]?.objectValue else {
            throw TesseraError(.invalidCheckpoint, "\(source): model.vocab is missing or not an object")
        }
        var vocab: [(String, Int)] = []
        vocab.reserveCapacity(vocabPairs.count)
        for (token, value) in vocabPairs {
            guard let id = value.intValue else {
                throw TesseraError(.invalidCheckpoint, "\(source): vocabulary entry \(token) has no integer id")
            }
            vocab.append((token, id))
        }
        var merges: [(String, String)] = []
        for (rank, item) in (model["merges"]?.arrayValue ?? []).enumerated() {
            if let text = item.stringValue {
                let parts = text.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2, !parts[1].contains(" ") else {
                    throw TesseraError(.invalidCheckpoint, "\(source): merge \(rank) \"\(text)\" is not two tokens separated by one space")
                }
                merges.append((String(parts[0]), String(parts[1])))
            } else if let pair = item.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue {
                merges.append((a, b))
            } else {
                throw TesseraError(.invalidCheckpoint, "\(source): merge \(rank) is neither \"a b\" nor [\"a\", \"b\"]")
            }
        }

        var added: [AddedToken] = []
        for item in json["added_tokens"]?.arrayValue ?? [] {
            guard let content = item["content"]?.stringValue, let id = item["id"]?.intValue else {
                throw TesseraError(.invalidCheckpoint, "\(source): an added token lacks content or id")
            }
            added.append(AddedToken(content: content, id: id, special: item["special"]?.boolValue ?? false,
                                    lstrip: item["lstrip"]?.boolValue ?? false,
                                    rstrip: item["rstrip"]?.boolValue ?? false,
                                    singleWord: item["single_word"]?.boolValue ?? false))
        }
        func idOf(_ token: String) -> Int? {
            added.first(where: { $0.content == token })?.id ?? vocab.first(where: { $0.0 == token })?.1
        }

        // Post-processor: the ids every encoding starts / ends with.
        var prefix: [Int] = []
        var suffix: [Int] = []
        if let post = json["post_processor"], post != .null {
            switch post["type"]?.stringValue ?? "?" {
            case "ByteLevel":
                break  // only adjusts offsets
            case "TemplateProcessing":
                let specials = post["special_tokens"]
                var seenSequence = false
                for item in post["single"]?.arrayValue ?? [] {
                    if item["Sequence"] != nil {
                        seenSequence = true
                    } else if let name = item["SpecialToken"]?["id"]?.stringValue {
                        guard let ids = specials?[name]?["ids"]?.arrayValue?.compactMap(\.intValue) else {
                            throw TesseraError(.invalidCheckpoint, "\(source): post-processor token \(name) has no ids")
                        }
                        if seenSequence { suffix += ids } else { prefix += ids }
                    }
                }
            case "RobertaProcessing", "BertProcessing":
                guard let cls = post["cls"]?.arrayValue?.last?.intValue, let sep = post["sep"]?.arrayValue?.last?.intValue else {
                    throw TesseraError(.invalidCheckpoint, "\(source): post-processor lacks cls/sep ids")
                }
                prefix = [cls]
                suffix = [sep]
            case let other:
                throw TesseraError(.unsupported, "\(source): post-processor \(other) is not supported",
                                   hint: "supported: ByteLevel, TemplateProcessing, RobertaProcessing")
            }
        }

        try self.init(vocabulary: vocab, merges: merges, addedTokens: added,
                      preTokenizer: try PreTokenizer(json: json["pre_tokenizer"]),
                      ignoreMerges: model["ignore_merges"]?.boolValue ?? false,
                      unknownToken: model["unk_token"]?.stringValue, prefixIDs: prefix, suffixIDs: suffix,
                      bosTokenID: bosToken.flatMap(idOf), eosTokenID: eosToken.flatMap(idOf), source: source)
    }

    /// From a tokenizer.json file; BOS / EOS names come from a tokenizer_config.json next to it, if there is one.
    public convenience init(tokenizerJSONPath path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TesseraError(.notFound, "cannot read tokenizer file \(path)", hint: "check the path")
        }
        var bos: String?
        var eos: String?
        let config = (path as NSString).deletingLastPathComponent + "/tokenizer_config.json"
        if let configData = FileManager.default.contents(atPath: config),
           let configJSON = try? JSONParser.parse([UInt8](configData)) {
            func name(_ value: JSONValue?) -> String? { value?.stringValue ?? value?["content"]?.stringValue }
            bos = name(configJSON["bos_token"])
            eos = name(configJSON["eos_token"])
        }
        try self.init(tokenizerJSON: [UInt8](data), bosToken: bos, eosToken: eos, source: path)
    }

    /// From GPT-2's vocab.json and merges.txt (GPT-2 and GPT-Neo checkpoints without a tokenizer.json), set up as
    /// transformers' GPT-2 conversion sets them up: ByteLevel split without prefix space, ByteLevel decoder, no ids
    /// added around the text. `specialTokens` that are in the vocabulary become special added tokens. A first line
    /// starting with "#version" is skipped, as are empty lines.
    public convenience init(vocabJSONPath: String, mergesPath: String, specialTokens: [String] = ["<|endoftext|>"],
                            bosToken: String? = "<|endoftext|>", eosToken: String? = "<|endoftext|>") throws {
        guard let vocabData = FileManager.default.contents(atPath: vocabJSONPath) else {
            throw TesseraError(.notFound, "cannot read \(vocabJSONPath)", hint: "check the path")
        }
        guard let mergesData = FileManager.default.contents(atPath: mergesPath) else {
            throw TesseraError(.notFound, "cannot read \(mergesPath)", hint: "check the path")
        }
        let vocabJSON: JSONValue
        do {
            vocabJSON = try JSONParser.parse([UInt8](vocabData))
        } catch {
            throw TesseraError(.invalidCheckpoint, "\(vocabJSONPath) is not valid JSON", underlying: error)
        }
        guard let pairs = vocabJSON.objectValue else {
            throw TesseraError(.invalidCheckpoint, "\(vocabJSONPath) is not a JSON object of token ids")
        }
        var vocab: [(String, Int)] = []
        vocab.reserveCapacity(pairs.count)
        for (token, value) in pairs {
            guard let id = value.intValue else {
                throw TesseraError(.invalidCheckpoint, "\(vocabJSONPath): entry \(token) has no integer id")
            }
            vocab.append((token, id))
        }
        var merges: [(String, String)] = []
        let lines = String(decoding: mergesData, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        for (number, rawLine) in lines.enumerated() {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            if line.isEmpty || (number == 0 && line.hasPrefix("#version")) { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw TesseraError(.invalidCheckpoint, "\(mergesPath) line \(number + 1) is not two tokens separated by one space")
            }
            merges.append((String(parts[0]), String(parts[1])))
        }
        let ids = Dictionary(vocab, uniquingKeysWith: { _, last in last })
        let added = specialTokens.compactMap { token in ids[token].map { AddedToken(content: token, id: $0, special: true) } }
        try self.init(vocabulary: vocab, merges: merges, addedTokens: added,
                      preTokenizer: .gpt2, bosTokenID: bosToken.flatMap { ids[$0] },
                      eosTokenID: eosToken.flatMap { ids[$0] }, source: vocabJSONPath)
    }

    /// From GGUF metadata (`tokenizer.ggml.*`, model "gpt2").
    /// - Parameters:
    ///   - tokens: `tokenizer.ggml.tokens`, in id order.
    ///   - merges: `tokenizer.ggml.merges`, "a b" in rank order.
    ///   - tokenTypes: `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    ///     6 byte); control tokens become special added tokens, user-defined ones plain added tokens.
    ///   - preTokenizer: `tokenizer.ggml.pre`, interpreted by `convention`.
    public convenience init(tokens: [String], merges: [String], tokenTypes: [Int], preTokenizer: String,
                            bosID: Int? = nil, eosID: Int?, eotID: Int? = nil, addBOS: Bool = false,
                            addEOS: Bool = false, addSpacePrefix: Bool = false,
                            convention: GGUFPreTokenizerConvention = .huggingFace,
                            source: String = "GGUF tokenizer metadata") throws {
        guard tokenTypes.isEmpty || tokenTypes.count == tokens.count else {
            throw TesseraError(.invalidCheckpoint, "\(source): \(tokens.count) tokens but \(tokenTypes.count) token types")
        }
        var pairs: [(String, String)] = []
        pairs.reserveCapacity(merges.count)
        for (rank, text) in merges.enumerated() {
            let parts = text.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw TesseraError(.invalidCheckpoint, "\(source): merge \(rank) \"\(text)\" is not two tokens separated by a space")
            }
            pairs.append((String(parts[0]), String(parts[1])))
        }
        var added: [AddedToken] = []
        for (id, type) in tokenTypes.enumerated() where type == 3 || type == 4 {
            added.append(AddedToken(content: tokens[id], id: id, special: type == 3))
        }
        let steps: [PreTokenizerStep]
        switch convention {
        case .huggingFace:
            steps = [.byteLevel(addPrefixSpace: addSpacePrefix, useRegex: true)]
        case .llamaCpp:
            steps = try Self.llamaCppPreTokenizer(preTokenizer, source: source)
        }
        func check(_ id: Int?, _ name: String) throws {
            if let id, id < 0 || id >= tokens.count {
                throw TesseraError(.invalidCheckpoint, "\(source): \(name) id \(id) is outside the vocabulary of \(tokens.count)")
            }
        }
        try check(bosID, "BOS")
        try check(eosID, "EOS")
        try check(eotID, "EOT")
        try self.init(vocabulary: tokens.enumerated().map { ($1, $0) }, merges: pairs, addedTokens: added,
                      preTokenizer: PreTokenizer(steps: steps),
                      prefixIDs: addBOS ? bosID.map { [$0] } ?? [] : [],
                      suffixIDs: addEOS ? eosID.map { [$0] } ?? [] : [],
                      bosTokenID: bosID, eosTokenID: eosID, extraStopTokenIDs: eotID.map { [$0] } ?? [],
                      source: source)
    }

    /// llama.cpp's `tokenizer.ggml.pre` names for the split patterns implemented here.
    static func llamaCppPreTokenizer(_ name: String, source: String) throws -> [PreTokenizerStep] {
        let plain = PreTokenizerStep.byteLevel(addPrefixSpace: false, useRegex: false)
        switch name {
        case "default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion":
            return [.byteLevel(addPrefixSpace: false, useRegex: true)]
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva":
            return [.digits(individual: true), .byteLevel(addPrefixSpace: false, useRegex: true)]
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral":
            return [.split(.llama3(maxDigits: 3)), plain]
        case "qwen2", "deepseek-r1-qwen", "megrez":
            return [.split(.llama3(maxDigits: 1)), plain]
        default:
            throw TesseraError(.unsupported, "\(source): tokenizer.ggml.pre \"\(name)\" is not a pre-tokenizer Tessera implements",
                               hint: "use the huggingFace convention (GPT-2 split), or one of gpt2, smollm, starcoder, llama-bpe, qwen2")
        }
    }

    // MARK: Encoding

    public func encode(_ text: String) throws -> [Int] { encode(text, addSpecialTokens: true) }

    /// Token ids of `text`; `addSpecialTokens` adds the post-processor's (or GGUF's BOS/EOS) ids around them.
    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var scalars = Array(text.unicodeScalars)
        var classes = scalars.map(ScalarClass.of)
        var ids: [Int] = addSpecialTokens ? prefixIDs : []
        ids.reserveCapacity(scalars.count / 3 + 2)
        var pieces: [Range<Int>] = []
        var utf8: [UInt8] = []

        func encodeText(_ range: Range<Int>) {
            guard !range.isEmpty else { return }
            pieces.removeAll(keepingCapacity: true)
            if preTokenizer.insertsCharacters {
                // The pre-tokenizer may insert spaces: give it a buffer of its own.
                var localScalars = Array(scalars[range])
                var localClasses = Array(classes[range])
                preTokenizer.split(&localScalars, &localClasses, 0..<localScalars.count, into: &pieces)
                for piece in pieces { encodePiece(localScalars, piece, &utf8, into: &ids) }
            } else {
                preTokenizer.split(&scalars, &classes, range, into: &pieces)
                for piece in pieces { encodePiece(scalars, piece, &utf8, into: &ids) }
            }
        }

        var textStart = 0
        var i = 0
        let n = scalars.count
        while i < n {
            guard let candidates = addedByFirstScalar[scalars[i].value],
                  let match = candidates.first(where: { Self.matches($0.scalars, scalars, at: i) }) else {
                i += 1
                continue
            }
            let token = addedTokens[match.index]
            var start = i
            var stop = i + match.scalars.count
            if token.singleWord {
                let wordBefore = start > 0 && Self.isWordScalar(scalars[start - 1])
                let wordAfter = stop < n && Self.isWordScalar(scalars[stop])
                if wordBefore || wordAfter { i += 1; continue }
            }
            if token.lstrip { while start > textStart && classes[start - 1] == .whitespace { start -= 1 } }
            if token.rstrip { while stop < n && classes[stop] == .whitespace { stop += 1 } }
            encodeText(textStart..<start)
            ids.append(token.id)
            textStart = stop
            i = stop
        }
        encodeText(textStart..<n)
        if addSpecialTokens { ids += suffixIDs }
        return ids
    }

    @inline(__always)
    private static func matches(_ pattern: [Unicode.Scalar], _ text: [Unicode.Scalar], at i: Int) -> Bool {
        guard i + pattern.count <= text.count else { return false }
        for k in 0..<pattern.count where text[i + k] != pattern[k] { return false }
        return true
    }

    private static func isWordScalar(_ scalar: Unicode.Scalar) -> Bool {
        scalar == "_" || ScalarClass.of(scalar) == .letter || ScalarClass.of(scalar) == .number
    }

    /// UTF-8 bytes of one pre-token, then its BPE ids (through the word cache).
    private func encodePiece(_ scalars: [Unicode.Scalar], _ piece: Range<Int>, _ utf8: inout [UInt8],
                             into ids: inout [Int]) {
        utf8.removeAll(keepingCapacity: true)
        for k in piece { ByteLevel.appendUTF8(scalars[k], to: &utf8) }
        if utf8.count <= Self.cachedWordMaxBytes {
            cacheLock.lock()
            let cached = cache[utf8]
            cacheLock.unlock()
            if let cached {
                for id in cached { ids.append(Int(id)) }
                return
            }
        }
        let word = mergeWord(utf8)
        for id in word { ids.append(Int(id)) }
        if utf8.count <= Self.cachedWordMaxBytes {
            cacheLock.lock()
            if cache.count >= Self.cacheCapacity { cache.removeAll(keepingCapacity: true) }
            cache[utf8] = word
            cacheLock.unlock()
        }
    }

    /// BPE on one pre-token: start from one symbol per byte and repeatedly apply the lowest-ranked merge among
    /// adjacent pairs (leftmost first on ties), exactly as Hugging Face's `Word::merge_all` does with its heap.
    func mergeWord(_ bytes: [UInt8]) -> [Int32] {
        if ignoreMerges {
            let whole = String(String.UnicodeScalarView(bytes.map { ByteLevel.byteToScalar[Int($0)] }))
            if let id = vocabulary[whole] { return [Int32(id)] }
        }
        var symbols: [Int32] = []
        symbols.reserveCapacity(bytes.count)
        for byte in bytes {
            let id = byteIDs[Int(byte)]
            if id >= 0 {
                symbols.append(id)
            } else if unknownID >= 0 {
                symbols.append(unknownID)
            }  // else dropped, as Hugging Face does without an unknown token
        }
        let n = symbols.count
        if n < 2 { return symbols }
        if n == 2 {
            if let merge = merges[Self.pairKey(symbols[0], symbols[1])] { return [merge.newID] }
            return symbols
        }
        return symbols.withUnsafeMutableBufferPointer { ids in
            var next = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
                for k in 0..<n { buffer[k] = Int32(k + 1) }
                count = n
            }
            var prev = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
                for k in 0..<n { buffer[k] = Int32(k - 1) }
                count = n
            }
            var heap = MergeHeap()
            for k in 0..<(n - 1) {
                if let merge = merges[Self.pairKey(ids[k], ids[k + 1])] {
                    heap.push(rank: merge.rank, position: Int32(k), newID: merge.newID)
                }
            }
            while let top = heap.pop() {
                let p = Int(top.position)
                guard ids[p] >= 0 else { continue }  // merged into its left neighbour since
                let q = Int(next[p])
                guard q < n else { continue }
                // Stale if the pair at p has changed since the entry was pushed.
                guard let merge = merges[Self.pairKey(ids[p], ids[q])], merge.newID == top.newID else { continue }
                ids[p] = merge.newID
                ids[q] = -1
                let r = Int(next[q])
                next[p] = Int32(r)
                if r < n { prev[r] = Int32(p) }
                let l = Int(prev[p])
                if l >= 0, let left = merges[Self.pairKey(ids[l], ids[p])] {
                    heap.push(rank: left.rank, position: Int32(l), newID: left.newID)
                }
                if r < n, let right = merges[Self.pairKey(ids[p], ids[r])] {
                    heap.push(rank: right.rank, position: Int32(p), newID: right.newID)
                }
            }
            var result: [Int32] = []
            var k = 0
            while k < n {
                result.append(ids[k])
                k = Int(next[k])
            }
            return result
        }
    }

    // MARK: Decoding

    /// Text of `ids`, special tokens included (as transformers' `decode` does by default).
    public func decode(_ ids: [Int]) -> String { decode(ids, skipSpecialTokens: false) }

    public func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        String(decoding: decodeBytes(ids, skipSpecialTokens: skipSpecialTokens), as: UTF8.self)
    }

    /// The raw bytes of `ids`: a token can end inside a multi-byte character, so streaming output should
    /// accumulate bytes and only turn complete characters into text. Unknown ids are skipped.
    public func decodeBytes(_ ids: [Int], skipSpecialTokens: Bool = false) -> [UInt8] {
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && id < tokenBytes.count {
            if skipSpecialTokens && specialTokenIDs.contains(id) { continue }
            bytes += tokenBytes[id]
        }
        return bytes
    }

    /// The token string of `id` (byte-level characters for model tokens, the content for added tokens).
    public func tokenString(_ id: Int) -> String? { id >= 0 && id < tokenStrings.count ? tokenStrings[id] : nil }

    /// The id of a token string (added tokens first).
    public func tokenID(_ token: String) -> Int? {
        addedTokens.first(where: { $0.content == token })?.id ?? vocabulary[token]
    }
}

/// GPT-2's reversible map between bytes and printable characters, which byte-level BPE vocabularies are written in.
enum ByteLevel {
    /// Printable Latin-1 bytes stand for themselves; the other 68 bytes, in order, for U+0100, U+0101, ...
    static let byteToScalar: [Unicode.Scalar] = {
        var shifted: UInt32 = 0
        return (0..<256).map { (byte: Int) -> Unicode.Scalar in
            if (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte) {
                return Unicode.Scalar(UInt8(byte))
            }
            defer { shifted += 1 }
            return Unicode.Scalar(256 + shifted)!
        }
    }()

    static let scalarToByte: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (byte, scalar) in byteToScalar.enumerated() { map[scalar.value] = UInt8(byte) }
        return map
    }()

    /// The ByteLevel decoder on one token: its characters mapped back to bytes, or, if one of them is not a byte
    /// character (as in an added token like "<|im start|>" with a space), the token's own UTF-8.
    static func decodeToken(_ token: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for scalar in token.unicodeScalars {
            guard let byte = scalarToByte[scalar.value] else { return Array(token.utf8) }
            bytes.append(byte)
        }
        return bytes
    }

    @inline(__always)
    static func appendUTF8(_ scalar: Unicode.Scalar, to out: inout [UInt8]) {
        let v = scalar.value
        if v < 0x80 {
            out.append(UInt8(v))
        } else if v < 0x800 {
            out.append(UInt8(0xC0 | (v >> 6)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        } else if v < 0x10000 {
            out.append(UInt8(0xE0 | (v >> 12)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        } else {
            out.append(UInt8(0xF0 | (v >> 18)))
            out.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        }
    }
}

/// A binary min-heap of pending merges ordered by (rank, position), Hugging Face's merge queue order.
struct MergeHeap {
    struct Entry {
        var rank: Int32
        var position: Int32
        var newID: Int32
        @inline(__always)
        func precedes(_ other: Entry) -> Bool {
            rank != other.rank ? rank < other.rank : position < other.position
        }
    }

    private var entries: [Entry] = []

    mutating func push(rank: Int32, position: Int32, newID: Int32) {
        entries.append(Entry(rank: rank, position: position, newID: newID))
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].precedes(entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Entry? {
        guard let top = entries.first else { return nil }
        let last = entries.removeLast()
        if !entries.isEmpty {
            entries[0] = last
            var parent = 0
            let count = entries.count
            while true {
                let left = 2 * parent + 1
                guard left < count else { break }
                var best = left
                if left + 1 < count && entries[left + 1].precedes(entries[left]) { best = left + 1 }
                guard entries[best].precedes(entries[parent]) else { break }
                entries.swapAt(best, parent)
                parent = best
            }
        }
        return top
    }
}
