import TesseraCore
import TesseraIO

/// The character classes the byte-level BPE split patterns are written in: `\p{L}`, `\p{N}`, `\s` and the rest.
///
/// `\s` is Oniguruma's Unicode whitespace (U+0009-U+000D, U+0085 and the Zs, Zl, Zp categories), which is exactly
/// the Unicode White_Space property; `\p{L}` and `\p{N}` are the general-category groups L* and N* (Rust's
/// `char::is_numeric`, used by the Digits pre-tokenizer, is the same N* group).
enum ScalarClass: UInt8 {
    case letter = 0
    case number = 1
    case whitespace = 2
    case other = 3

    /// ASCII classes by table: the pre-tokenizer classifies every scalar of the text, and most text is ASCII.
    private static let ascii: [ScalarClass] = (0..<128).map { classifySlow(Unicode.Scalar(UInt8($0))) }

    @inline(__always)
    static func of(_ scalar: Unicode.Scalar) -> ScalarClass {
        scalar.value < 128 ? ascii[Int(scalar.value)] : classifySlow(scalar)
    }

    static func classifySlow(_ scalar: Unicode.Scalar) -> ScalarClass {
        let properties = scalar.properties
        if properties.isWhitespace { return .whitespace }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }
}

/// One of the regular expressions Hugging Face byte-level tokenizers split text with, implemented as a hand-written
/// scanner (Foundation's regex engine is far too slow for this, and these patterns need only one character of
/// look-ahead plus a bounded backtrack over a whitespace run). Unknown patterns are rejected when loading.
public enum SplitPattern: Sendable, Equatable {
    /// GPT-2 (also ByteLevel's `use_regex`): `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// Llama 3 (`maxDigits` 3) and Qwen 2 (`maxDigits` 1):
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3(maxDigits: Int)

    public static let gpt2Regex =
        #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    public static let llama3Regex =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    public static let qwen2Regex =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The scanner for a regex written in a tokenizer.json, or nil if it is not one this file implements.
    public init?(regex: String) {
        switch regex {
        case Self.gpt2Regex: self = .gpt2
        case Self.llama3Regex: self = .llama3(maxDigits: 3)
        case Self.qwen2Regex: self = .llama3(maxDigits: 1)
        default: return nil
        }
    }

    /// The end of the match that starts at `i` (the regex is tried at every position of `lo..<hi`, which is how
    /// `find_iter` proceeds: these patterns match at every position, so there are no gaps).
    @inline(__always)
    func matchEnd(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<ScalarClass>,
                  at i: Int, end hi: Int) -> Int {
        switch self {
        case .gpt2: return Self.gpt2Match(s, cls, i, hi)
        case let .llama3(maxDigits): return Self.llama3Match(s, cls, i, hi, maxDigits)
        }
    }

    /// Length of `'s|'t|'re|'ve|'m|'ll|'d` at `i` (0 if none); `caseInsensitive` for the `(?i:...)` form, where
    /// Unicode case folding also lets LATIN SMALL LETTER LONG S (U+017F) match `s`.
    @inline(__always)
    static func contraction(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ hi: Int,
                            caseInsensitive: Bool) -> Int {
        guard s[i] == "'", i + 1 < hi else { return 0 }
        func folded(_ k: Int) -> UInt32 {
            let v = s[k].value
            guard caseInsensitive else { return v }
            if v >= 65 && v <= 90 { return v + 32 }
            if v == 0x17F { return 115 }  // ſ folds to s
            return v
        }
        let a = folded(i + 1)
        switch a {
        case 115, 116, 109, 100: return 2  // s t m d
        case 114, 118:  // r v: 're 've
            return i + 2 < hi && folded(i + 2) == 101 ? 3 : 0
        case 108:  // l: 'll
            return i + 2 < hi && folded(i + 2) == 108 ? 3 : 0
        default: return 0
        }
    }

    /// End of a whitespace run starting at `i` as `\s+(?!\S)|\s+` matches it: the whole run if it reaches the end
    /// of the piece, otherwise all but its last character (which then belongs to the next word), but at least one.
    @inline(__always)
    static func whitespaceEnd(_ cls: UnsafeBufferPointer<ScalarClass>, _ i: Int, _ hi: Int) -> Int {
        var e = i + 1
        while e < hi && cls[e] == .whitespace { e += 1 }
        if e == hi { return e }
        return e - i >= 2 ? e - 1 : e
    }

    static func gpt2Match(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<ScalarClass>,
                          _ i: Int, _ hi: Int) -> Int {
        let c = contraction(s, i, hi, caseInsensitive: false)
        if c > 0 { return i + c }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional ASCII space, then a run of one class.
        let j = s[i] == " " && i + 1 < hi ? i + 1 : i
        let k = cls[j]
        if k != .whitespace {
            var e = j + 1
            while e < hi && cls[e] == k { e += 1 }
            return e
        }
        return whitespaceEnd(cls, i, hi)
    }

    @inline(__always)
    static func isNewline(_ scalar: Unicode.Scalar) -> Bool { scalar == "\n" || scalar == "\r" }

    static func llama3Match(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<ScalarClass>,
                            _ i: Int, _ hi: Int, _ maxDigits: Int) -> Int {
        let c = contraction(s, i, hi, caseInsensitive: true)
        if c > 0 { return i + c }
        let k = cls[i]
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if k == .letter || (k != .number && !isNewline(s[i]) && i + 1 < hi && cls[i + 1] == .letter) {
            var e = i + 1
            while e < hi && cls[e] == .letter { e += 1 }
            return e
        }
        // `\p{N}{1,N}`
        if k == .number {
            var e = i + 1
            while e < hi && e - i < maxDigits && cls[e] == .number { e += 1 }
            return e
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let j = s[i] == " " && i + 1 < hi ? i + 1 : i
        if cls[j] == .other {
            var e = j + 1
            while e < hi && cls[e] == .other { e += 1 }
            while e < hi && isNewline(s[e]) { e += 1 }
            return e
        }
        // Here s[i] is whitespace. `\s*[\r\n]+`: the run up to and including its last line break.
        var runEnd = i
        var lastBreak = -1
        while runEnd < hi && cls[runEnd] == .whitespace {
            if isNewline(s[runEnd]) { lastBreak = runEnd }
            runEnd += 1
        }
        if lastBreak >= 0 { return lastBreak + 1 }
        return whitespaceEnd(cls, i, hi)
    }
}

/// One step of a Hugging Face pre-tokenizer pipeline (`pre_tokenizer` in tokenizer.json; a `Sequence` is a list of
/// steps, each applied to every piece the previous steps produced).
public enum PreTokenizerStep: Sendable, Equatable {
    /// `Split` with behavior `Isolated`: every match and every gap between matches becomes a piece.
    case split(SplitPattern)
    /// `Digits`: numbers (`\p{N}`) isolated, one per piece, or in contiguous runs.
    case digits(individual: Bool)
    /// `ByteLevel`: optionally prefix a space to each piece that lacks one, optionally split with the GPT-2 pattern.
    /// (The mapping of bytes to characters is part of every byte-level tokenizer and done by BPETokenizer.)
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
}

/// Splits text into the pieces BPE merges within (Hugging Face `pre_tokenizers` semantics for the steps above).
public struct PreTokenizer: Sendable, Equatable {
    public var steps: [PreTokenizerStep]

    public init(steps: [PreTokenizerStep]) { self.steps = steps }

    /// GPT-2 / SmolLM2 tokenizer.json: `ByteLevel(add_prefix_space: false, use_regex: true)`.
    public static let gpt2 = PreTokenizer(steps: [.byteLevel(addPrefixSpace: false, useRegex: true)])

    /// Reads a tokenizer.json `pre_tokenizer` object (null means no splitting).
    public init(json: JSONValue?) throws {
        guard let json, json != .null else { self.steps = []; return }
        var steps: [PreTokenizerStep] = []
        try Self.appendSteps(json, to: &steps)
        self.steps = steps
    }

    private static func appendSteps(_ json: JSONValue, to steps: inout [PreTokenizerStep]) throws {
        let type = json["type"]?.stringValue ?? "?"
        switch type {
        case "Sequence":
            for item in json["pretokenizers"]?.arrayValue ?? [] { try appendSteps(item, to: &steps) }
        case "ByteLevel":
            steps.append(.byteLevel(addPrefixSpace: json["add_prefix_space"]?.boolValue ?? true,
                                    useRegex: json["use_regex"]?.boolValue ?? true))
        case "Digits":
            steps.append(.digits(individual: json["individual_digits"]?.boolValue ?? false))
        case "Split":
            let behavior = json["behavior"]?.stringValue ?? "?"
            guard behavior == "Isolated", json["invert"]?.boolValue != true else {
                throw TesseraError(.unsupported, "tokenizer.json Split pre-tokenizer with behavior \(behavior)"
                                   + (json["invert"]?.boolValue == true ? " and invert" : "") + " is not supported",
                                   hint: "only behavior Isolated without invert is implemented")
            }
            guard let regex = json["pattern"]?["Regex"]?.stringValue else {
                throw TesseraError(.unsupported, "tokenizer.json Split pre-tokenizer without a Regex pattern is not supported",
                                   hint: "only the GPT-2, Llama 3 and Qwen 2 split regexes are implemented")
            }
            guard let pattern = SplitPattern(regex: regex) else {
                throw TesseraError(.unsupported, "tokenizer.json Split regex \(regex) is not one Tessera implements",
                                   hint: "only the GPT-2, Llama 3 and Qwen 2 split regexes are implemented")
            }
            steps.append(.split(pattern))
        default:
            throw TesseraError(.unsupported, "tokenizer.json pre-tokenizer \(type) is not supported",
                               hint: "supported: ByteLevel, Split (GPT-2, Llama 3, Qwen 2 regexes), Digits, Sequence of these")
        }
    }

    /// True if some step inserts characters (ByteLevel's `add_prefix_space`): `split` may then rewrite its buffers.
    var insertsCharacters: Bool {
        steps.contains { if case .byteLevel(true, _) = $0 { return true }; return false }
    }

    /// The pieces of `text[range]`, appended to `pieces` as ranges of `text`. If a step must insert a prefix
    /// space (see `insertsCharacters`), `text` and `classes` are rewritten with the space inserted, which moves
    /// everything after `range.lowerBound`: callers then pass a buffer holding just this range.
    func split(_ text: inout [Unicode.Scalar], _ classes: inout [ScalarClass], _ range: Range<Int>,
               into pieces: inout [Range<Int>]) {
        var current: [Range<Int>] = [range]
        var next: [Range<Int>] = []
        for step in steps {
            next.removeAll(keepingCapacity: true)
            switch step {
            case let .split(pattern):
                for piece in current { Self.regexSplit(text, classes, piece, pattern, into: &next) }
            case let .digits(individual):
                for piece in current { Self.digitSplit(classes, piece, individual: individual, into: &next) }
            case let .byteLevel(addPrefixSpace, useRegex):
                if addPrefixSpace { Self.insertPrefixSpaces(&text, &classes, &current) }
                if useRegex {
                    for piece in current { Self.regexSplit(text, classes, piece, .gpt2, into: &next) }
                } else {
                    next.append(contentsOf: current)
                }
            }
            swap(&current, &next)
        }
        pieces.append(contentsOf: current.filter { !$0.isEmpty })
    }

    static func regexSplit(_ text: [Unicode.Scalar], _ classes: [ScalarClass], _ range: Range<Int>,
                           _ pattern: SplitPattern, into out: inout [Range<Int>]) {
        text.withUnsafeBufferPointer { s in
            classes.withUnsafeBufferPointer { cls in
                var i = range.lowerBound
                while i < range.upperBound {
                    let e = pattern.matchEnd(s, cls, at: i, end: range.upperBound)
                    out.append(i..<e)
                    i = e
                }
            }
        }
    }

    static func digitSplit(_ classes: [ScalarClass], _ range: Range<Int>, individual: Bool,
                           into out: inout [Range<Int>]) {
        var start = range.lowerBound
        var i = range.lowerBound
        while i < range.upperBound {
            if classes[i] == .number {
                if start < i { out.append(start..<i) }
                var e = i + 1
                if !individual { while e < range.upperBound && classes[e] == .number { e += 1 } }
                out.append(i..<e)
                i = e
                start = e
            } else {
                i += 1
            }
        }
        if start < range.upperBound { out.append(start..<range.upperBound) }
    }

    /// ByteLevel's `add_prefix_space`: every piece that does not start with a space gets one.
    static func insertPrefixSpaces(_ text: inout [Unicode.Scalar], _ classes: inout [ScalarClass],
                                   _ pieces: inout [Range<Int>]) {
        guard pieces.contains(where: { $0.isEmpty || text[$0.lowerBound] != " " }) else { return }
        // Rebuild the buffer: pieces already emitted before `pieces` keep their (earlier) ranges unchanged.
        let first = pieces.map(\.lowerBound).min() ?? text.count
        var newText = Array(text[..<first])
        var newClasses = Array(classes[..<first])
        var newPieces: [Range<Int>] = []
        var cursor = first
        for piece in pieces.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            newText.append(contentsOf: text[cursor..<piece.lowerBound])
            newClasses.append(contentsOf: classes[cursor..<piece.lowerBound])
            let start = newText.count
            if piece.isEmpty || text[piece.lowerBound] != " " {
                newText.append(" ")
                newClasses.append(.whitespace)
            }
            newText.append(contentsOf: text[piece])
            newClasses.append(contentsOf: classes[piece])
            newPieces.append(start..<newText.count)
            cursor = piece.upperBound
        }
        newText.append(contentsOf: text[cursor...])
        newClasses.append(contentsOf: classes[cursor...])
        text = newText
        classes = newClasses
        pieces = newPieces
    }
}
