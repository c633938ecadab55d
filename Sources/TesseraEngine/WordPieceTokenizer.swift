import Foundation
import TesseraCore
import TesseraIO

/// BERT's WordPiece tokenizer, matching Hugging Face `tokenizers` (BertNormalizer → BertPreTokenizer → WordPiece →
/// `[CLS] … [SEP]` template) id for id.
///
/// Read from a `tokenizer.json` (model type WordPiece) or from a plain `vocab.txt` (one token per line, the id is
/// the line number). The steps, in the order the Rust library applies them:
///   1. special tokens written literally in the text (`[SEP]`, `[MASK]`, …) are split off first and kept whole;
///   2. normalizer: drop NUL, U+FFFD and control characters, map every whitespace to a space, put spaces around CJK
///      ideographs, strip accents (NFD, then drop non-spacing marks), lower-case;
///   3. pre-tokenizer: split on whitespace, and isolate every punctuation character as its own word;
///   4. WordPiece: greedy longest match from the left, continuation pieces prefixed with `##`; a word with a piece
///      that cannot be matched, or longer than `maxInputCharsPerWord` characters, becomes `[UNK]` as a whole;
///   5. truncation to `maxLength` ids including `[CLS]` and `[SEP]`.
///
/// Immutable after construction, so it is safe to share between threads.
public final class WordPieceTokenizer: TextTokenizer, @unchecked Sendable {
    public let vocabulary: [String: Int]
    /// Token text by id (for `decode`).
    public let tokens: [String]
    public let unknownID: Int
    public let classifierID: Int
    public let separatorID: Int
    public let paddingID: Int
    public let continuingSubwordPrefix: String
    public let maxInputCharsPerWord: Int
    /// Scalars in the longest vocabulary entry: no longer candidate can match, so the greedy search starts there
    /// (cost per word O(length · longest token), not cubic in the length when max_input_chars_per_word is large).
    private let longestTokenScalars: Int
    /// Maximum number of ids `encode` returns, `[CLS]` and `[SEP]` included.
    public let maxLength: Int
    public let lowercase: Bool
    public let stripAccents: Bool
    public let cleanText: Bool
    public let handleChineseChars: Bool
    /// Special tokens recognised literally in the input (longest first so that matching is greedy).
    private let specialTokens: [(text: [Unicode.Scalar], id: Int)]
    private let specialIDs: Set<Int>

    public var vocabularySize: Int { tokens.count }
    /// An encoder has no generation; `[SEP]` ends a sequence.
    public var stopTokenIDs: Set<Int> { [separatorID] }

    public init(
        vocabulary: [String: Int], unknownToken: String = "[UNK]", classifierToken: String = "[CLS]",
        separatorToken: String = "[SEP]", paddingToken: String = "[PAD]", specialTokens: [String] = [],
        continuingSubwordPrefix: String = "##", maxInputCharsPerWord: Int = 100, maxLength: Int = 512,
        lowercase: Bool = true, stripAccents: Bool? = nil, cleanText: Bool = true, handleChineseChars: Bool = true,
        source: String = "vocabulary"
    ) throws {
        self.vocabulary = vocabulary
        // The id table is sized by the largest id: bound it (a hostile file could name id 10^15).
        let largestID = vocabulary.values.max() ?? -1
        guard largestID < 1 << 24 else {
            throw TesseraError(.invalidParameter, "\(source): token id \(largestID) is too large (at most \((1 << 24) - 1))",
                               hint: "the vocabulary file is corrupt")
        }
        var tokens = [String](repeating: "", count: max(0, largestID + 1))
        for (text, id) in vocabulary {
            guard id >= 0 else { throw TesseraError(.invalidParameter, "\(source): token '\(text)' has negative id \(id)") }
            tokens[id] = text
        }
        self.tokens = tokens
        func id(_ token: String) throws -> Int {
            guard let i = vocabulary[token] else {
                throw TesseraError(.invalidParameter, "\(source): the vocabulary has no '\(token)' token",
                                   hint: "a BERT WordPiece vocabulary needs [UNK], [CLS], [SEP] and [PAD]")
            }
            return i
        }
        unknownID = try id(unknownToken)
        classifierID = try id(classifierToken)
        separatorID = try id(separatorToken)
        paddingID = try id(paddingToken)
        guard maxLength >= 2 else {
            throw TesseraError(.invalidParameter, "\(source): maximum length \(maxLength) leaves no room for [CLS] and [SEP]")
        }
        self.continuingSubwordPrefix = continuingSubwordPrefix
        self.maxInputCharsPerWord = maxInputCharsPerWord
        self.longestTokenScalars = vocabulary.keys.reduce(0) { max($0, $1.unicodeScalars.count) }
        self.maxLength = maxLength
        self.lowercase = lowercase
        self.stripAccents = stripAccents ?? lowercase  // BertNormalizer: strip_accents = None follows lowercase
        self.cleanText = cleanText
        self.handleChineseChars = handleChineseChars
        var specials = Set([unknownToken, classifierToken, separatorToken, paddingToken])
        specials.formUnion(specialTokens)
        var list: [(text: [Unicode.Scalar], id: Int)] = []
        for s in specials { if let i = vocabulary[s] { list.append((Array(s.unicodeScalars), i)) } }
        list.sort { $0.text.count != $1.text.count ? $0.text.count > $1.text.count : $0.id < $1.id }
        self.specialTokens = list
        self.specialIDs = Set(list.map(\.id))
    }

    /// Reads a Hugging Face `tokenizer.json` whose model is WordPiece (normalizer and special tokens from the file).
    public convenience init(tokenizerJSON path: String, maxLength: Int? = nil) throws {
        let bytes: Data
        do { bytes = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw TesseraError(.io, "\(path): cannot read the tokenizer", hint: "check the path", underlying: error)
        }
        let root: JSONValue
        do { root = try JSONParser.parse(bytes) } catch {
            throw TesseraError(.invalidParameter, "\(path): not valid JSON", hint: "is this a tokenizer.json?", underlying: error)
        }
        guard let model = root["model"], model["type"]?.stringValue == "WordPiece", let vocabPairs = model["vocab"]?.objectValue else {
            throw TesseraError(.unsupported, "\(path): the tokenizer model is not WordPiece (found '\(root["model"]?["type"]?.stringValue ?? "none")')",
                               hint: "WordPieceTokenizer reads BERT tokenizers; use the BPE tokenizer for byte-level BPE")
        }
        var vocabulary: [String: Int] = [:]
        vocabulary.reserveCapacity(vocabPairs.count)
        for (token, value) in vocabPairs {
            guard let i = value.intValue else { throw TesseraError(.invalidParameter, "\(path): vocabulary entry '\(token)' has no integer id") }
            vocabulary[token] = i
        }
        var specials: [String] = []
        for added in root["added_tokens"]?.arrayValue ?? [] {
            guard let content = added["content"]?.stringValue, let i = added["id"]?.intValue else { continue }
            vocabulary[content] = i
            if added["special"]?.boolValue == true { specials.append(content) }
        }
        let normalizer = root["normalizer"]
        if let n = normalizer, n != .null, n["type"]?.stringValue != "BertNormalizer" {
            throw TesseraError(.unsupported, "\(path): normalizer '\(n["type"]?.stringValue ?? "?")' is not supported",
                               hint: "WordPieceTokenizer implements BertNormalizer")
        }
        let truncation = root["truncation"]?["max_length"]?.intValue
        try self.init(
            vocabulary: vocabulary,
            unknownToken: model["unk_token"]?.stringValue ?? "[UNK]",
            specialTokens: specials,
            continuingSubwordPrefix: model["continuing_subword_prefix"]?.stringValue ?? "##",
            maxInputCharsPerWord: model["max_input_chars_per_word"]?.intValue ?? 100,
            maxLength: maxLength ?? truncation ?? 512,
            lowercase: normalizer?["lowercase"]?.boolValue ?? true,
            stripAccents: normalizer?["strip_accents"]?.boolValue,
            cleanText: normalizer?["clean_text"]?.boolValue ?? true,
            handleChineseChars: normalizer?["handle_chinese_chars"]?.boolValue ?? true,
            source: path
        )
    }

    /// Reads a `vocab.txt` (one token per line; the line number is the id), as BertTokenizer does.
    public convenience init(vocabTXT path: String, lowercase: Bool = true, maxLength: Int = 512) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw TesseraError(.io, "\(path): cannot read the vocabulary", hint: "check the path")
        }
        var vocabulary: [String: Int] = [:]
        // LF or CRLF line ends ("\r\n" is a single Character in Swift).
        var lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).map { String($0) }
        if lines.last == "" { lines.removeLast() }
        for (i, token) in lines.enumerated() where vocabulary[token] == nil { vocabulary[token] = i }
        try self.init(vocabulary: vocabulary, specialTokens: ["[MASK]"], maxLength: maxLength, lowercase: lowercase, source: path)
    }

    /// Loads a model directory: `tokenizer.json` if present, else `vocab.txt`. The maximum length is the
    /// sentence-transformers `max_seq_length` when the directory has one (all-MiniLM-L6-v2: 256), else
    /// `tokenizer_config.json`'s `model_max_length`, else 512; `maxLength` overrides it.
    public static func load(directory: String, maxLength: Int? = nil) throws -> WordPieceTokenizer {
        let fm = FileManager.default
        func jsonInt(_ file: String, _ key: String) -> Int? {
            guard let d = fm.contents(atPath: directory + "/" + file), let v = try? JSONParser.parse(d) else { return nil }
            return v[key]?.intValue
        }
        let limit = maxLength ?? jsonInt("sentence_bert_config.json", "max_seq_length")
            ?? jsonInt("tokenizer_config.json", "model_max_length").map { min($0, 512) } ?? 512
        if fm.fileExists(atPath: directory + "/tokenizer.json") {
            return try WordPieceTokenizer(tokenizerJSON: directory + "/tokenizer.json", maxLength: limit)
        }
        if fm.fileExists(atPath: directory + "/vocab.txt") {
            return try WordPieceTokenizer(vocabTXT: directory + "/vocab.txt", maxLength: limit)
        }
        throw TesseraError(.notFound, "\(directory): no tokenizer.json or vocab.txt",
                           hint: "point at the model directory that holds the BERT tokenizer files")
    }

    // MARK: - Encoding

    /// `[CLS] pieces… [SEP]`, truncated to `maxLength`.
    public func encode(_ text: String) throws -> [Int] { encode(text, addSpecialTokens: true) }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        let budget = addSpecialTokens ? maxLength - 2 : maxLength
        var content: [Int] = []
        for segment in splitOnSpecialTokens(Array(text.unicodeScalars)) where content.count < budget {
            switch segment {
            case let .special(id): content.append(id)
            case let .text(scalars):
                for word in preTokenize(normalize(scalars)) where content.count < budget { appendWordPieces(word, to: &content) }
            }
        }
        if content.count > budget { content.removeSubrange(budget...) }
        return addSpecialTokens ? [classifierID] + content + [separatorID] : content
    }

    /// The word pieces of a text, as strings (for inspection and tests).
    public func tokenize(_ text: String) -> [String] {
        encode(text, addSpecialTokens: false).map { tokens[$0] }
    }

    /// Joins pieces (`##` continues a word), skips special tokens, and applies the WordPiece decoder's clean-up of
    /// spaces before punctuation and contractions.
    public func decode(_ ids: [Int]) -> String {
        var out = ""
        for id in ids where id >= 0 && id < tokens.count && !specialIDs.contains(id) {
            let piece = tokens[id]
            if piece.hasPrefix(continuingSubwordPrefix) {
                out += piece.dropFirst(continuingSubwordPrefix.count)
            } else {
                if !out.isEmpty { out += " " }
                out += piece
            }
        }
        for (from, to) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")] {
            out = out.replacingOccurrences(of: from, with: to)
        }
        return out
    }

    private enum Segment { case text([Unicode.Scalar]), special(Int) }

    /// Splits off literal special tokens (they are not normalised), as the added-token pass of `tokenizers` does.
    private func splitOnSpecialTokens(_ scalars: [Unicode.Scalar]) -> [Segment] {
        var segments: [Segment] = []
        var start = 0, i = 0
        outer: while i < scalars.count {
            if scalars[i] == "[" {
                for special in specialTokens where i + special.text.count <= scalars.count {
                    if scalars[i..<(i + special.text.count)].elementsEqual(special.text) {
                        if start < i { segments.append(.text(Array(scalars[start..<i]))) }
                        segments.append(.special(special.id))
                        i += special.text.count
                        start = i
                        continue outer
                    }
                }
            }
            i += 1
        }
        if start < scalars.count { segments.append(.text(Array(scalars[start...]))) }
        return segments
    }

    /// BertNormalizer.
    func normalize(_ input: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(input.count + 8)
        for c in input {
            if cleanText {
                if c.value == 0 || c.value == 0xFFFD || WordPieceTokenizer.isControl(c) { continue }
                if WordPieceTokenizer.isWhitespace(c) { out.append(" "); continue }
            }
            if handleChineseChars && WordPieceTokenizer.isChineseCharacter(c) {
                out.append(" "); out.append(c); out.append(" ")
            } else {
                out.append(c)
            }
        }
        if stripAccents {
            // NFD, then drop the combining (non-spacing) marks the decomposition separated from their letters.
            var s = String.UnicodeScalarView()
            s.append(contentsOf: out)
            let decomposed = String(s).decomposedStringWithCanonicalMapping
            out = decomposed.unicodeScalars.filter { $0.properties.generalCategory != .nonspacingMark }
        }
        if lowercase {
            var lowered: [Unicode.Scalar] = []
            lowered.reserveCapacity(out.count)
            for c in out {
                if c.isASCII {
                    lowered.append(c.value >= 65 && c.value <= 90 ? Unicode.Scalar(c.value + 32)! : c)
                } else {
                    // Rust's char::to_lowercase, one character at a time (no context-dependent final sigma).
                    lowered.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
                }
            }
            out = lowered
        }
        return out
    }

    /// BertPreTokenizer: whitespace separates words and is dropped; each punctuation character is a word.
    func preTokenize(_ scalars: [Unicode.Scalar]) -> [ArraySlice<Unicode.Scalar>] {
        var words: [ArraySlice<Unicode.Scalar>] = []
        var start = 0
        for (i, c) in scalars.enumerated() {
            if c.properties.isWhitespace {
                if start < i { words.append(scalars[start..<i]) }
                start = i + 1
            } else if WordPieceTokenizer.isPunctuation(c) {
                if start < i { words.append(scalars[start..<i]) }
                words.append(scalars[i...i])
                start = i + 1
            }
        }
        if start < scalars.count { words.append(scalars[start...]) }
        return words
    }

    /// Greedy longest-match-first WordPiece over one word.
    private func appendWordPieces(_ word: ArraySlice<Unicode.Scalar>, to ids: inout [Int]) {
        let chars = Array(word)
        if chars.count > maxInputCharsPerWord { ids.append(unknownID); return }
        var pieces: [Int] = []
        var start = 0
        let prefixScalars = continuingSubwordPrefix.unicodeScalars.count
        while start < chars.count {
            var end = min(chars.count, start + max(1, longestTokenScalars - (start > 0 ? prefixScalars : 0)))
            var found: Int? = nil
            while start < end {
                var candidate = start > 0 ? continuingSubwordPrefix : ""
                candidate.unicodeScalars.append(contentsOf: chars[start..<end])
                if let id = vocabulary[candidate] { found = id; break }
                end -= 1
            }
            guard let id = found else { ids.append(unknownID); return }
            pieces.append(id)
            start = end
        }
        ids.append(contentsOf: pieces)
    }

    // MARK: - Character classes (as `tokenizers`' BertNormalizer / BertPreTokenizer define them)

    static func isWhitespace(_ c: Unicode.Scalar) -> Bool {
        c == "\t" || c == "\n" || c == "\r" || c.properties.isWhitespace
    }

    /// Unicode "Other" categories (Cc, Cf, Cn, Co, Cs), except tab, newline and carriage return.
    static func isControl(_ c: Unicode.Scalar) -> Bool {
        if c == "\t" || c == "\n" || c == "\r" { return false }
        switch c.properties.generalCategory {
        case .control, .format, .unassigned, .privateUse, .surrogate: return true
        default: return false
        }
    }

    /// ASCII punctuation (which includes symbols such as `$`, `+`, `^`) or any Unicode punctuation category.
    static func isPunctuation(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        if (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v) { return true }
        switch c.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation: return true
        default: return false
        }
    }

    /// The CJK Unified Ideograph blocks BERT pads with spaces.
    static func isChineseCharacter(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B820...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F: return true
        default: return false
        }
    }
}
