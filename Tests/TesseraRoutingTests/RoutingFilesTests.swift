import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraRouting
import TesseraTestSupport

/// library.json and router.json as written and as users (or attackers) may hand them: round trips, and every damaged
/// or hostile file refused with one line (a `TesseraError`), never a crash.
@Suite struct RoutingFilesTests {
    @Test func libraryIndexRoundTrips() throws {
        let index = ExpertLibraryIndex(base: "models/smollm2", experts: [
            .init(name: "sst2", tasks: ["sst2"], sha256: String(repeating: "a", count: 64), source: "HEAD~1:adapters/sst2"),
            .init(name: "qa.v2", tasks: ["arc-easy", "arc-challenge"], sha256: String(repeating: "b", count: 64), source: nil),
        ])
        let bytes = index.encoded()
        #expect(try ExpertLibraryIndex(bytes: bytes, name: "library.json") == index)
        #expect(String(decoding: bytes, as: UTF8.self).hasSuffix("}\n"))
    }

    @Test(arguments: [
        ("", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        (#"{"format": "something-else", "version": 1}"#, "not a Tessera expert library"),
        (#"{"format": "tessera-expert-library", "version": 7, "experts": []}"#, "version 7"),
        (#"{"format": "tessera-expert-library", "version": 1, "experts": [{"name": "x"}]}"#, "no name or sha256"),
        (#"{"format": "tessera-expert-library", "version": 1, "experts": [{"name": "../../etc", "sha256": "a"}]}"#, "not a valid expert name"),
        (#"{"format": "tessera-expert-library", "version": 1, "experts": [{"name": ".git", "sha256": "a"}]}"#, "not a valid expert name"),
        (#"{"format": "tessera-expert-library", "version": 1, "experts": [{"name": "a", "sha256": "1"}, {"name": "a", "sha256": "2"}]}"#, "listed twice"),
        (#"{"format": "tessera-expert-library", "version": 1, "experts": [{"name": "a", "sha"#, "not a JSON object"),
    ])
    func damagedLibraryIndexesAreRefused(_ text: String, _ mentions: String) {
        do {
            _ = try ExpertLibraryIndex(bytes: Array(text.utf8), name: "library.json")
            Issue.record("accepted: \(text)")
        } catch let e as TesseraError {
            #expect(e.description.contains(mentions), "\(e.description)")
            #expect(!e.description.contains("\n"))
        } catch {
            Issue.record("not a TesseraError: \(error)")
        }
    }

    @Test func routerConfigRoundTrips() throws {
        let config = RouterConfig(method: "glider", mixing: .mergeBefore, topK: 2, temperature: 0.5, alpha: 2, library: "experts", base: "smollm2",
                                  experts: [.init(name: "a", sha256: "1", tasks: ["t"]), .init(name: "b", sha256: "2", tasks: [])],
                                  descriptions: ["Sentiment \"quoted\"\nof reviews", "Questions"], embedder: "minilm")
        #expect(try RouterConfig(bytes: config.encoded(), name: "router.json") == config)
        let arrow = RouterConfig(method: "arrow", mixing: .mergeAfter, topK: 0, library: "lib", base: nil, experts: [.init(name: "a", sha256: "1", tasks: [])])
        #expect(try RouterConfig(bytes: arrow.encoded(), name: "router.json") == arrow)
    }

    @Test(arguments: [
        (#"{"format": "tessera-router", "version": 1, "method": "arrow", "mixing": "merge-after", "library": "l", "experts": []}"#, "lists no experts"),
        (#"{"format": "tessera-router", "version": 1, "method": "arrow", "mixing": "sideways", "library": "l", "experts": [{"name": "a", "sha256": "1"}]}"#, "merge-after or merge-before"),
        (#"{"format": "tessera-router", "version": 1, "method": "arrow", "mixing": "merge-after", "top_k": -3, "library": "l", "experts": [{"name": "a", "sha256": "1"}]}"#, "top_k"),
        (#"{"format": "tessera-router", "version": 1, "method": "glider", "mixing": "merge-after", "library": "l", "experts": [{"name": "a", "sha256": "1"}], "descriptions": ["x", "y"]}"#, "2 descriptions for 1 experts"),
        (#"{"format": "tessera-router", "version": 2}"#, "version 2"),
        (#"{"format": "tessera-router", "version": 1, "mixing": "merge-after"}"#, "no method or library"),
    ])
    func damagedRouterConfigsAreRefused(_ text: String, _ mentions: String) {
        do {
            _ = try RouterConfig(bytes: Array(text.utf8), name: "router.json")
            Issue.record("accepted: \(text)")
        } catch let e as TesseraError {
            #expect(e.description.contains(mentions), "\(e.description)")
        } catch {
            Issue.record("not a TesseraError: \(error)")
        }
    }

    @Test func anUnknownMethodIsOneLine() throws {
        let config = RouterConfig(method: "telepathy", mixing: .mergeAfter, topK: 2, library: "l", base: nil, experts: [.init(name: "a", sha256: "1", tasks: [])])
        #expect(throws: TesseraError.self) { try RouterRegistry.make(config, weights: nil) }
        let arrow = RouterConfig(method: "arrow", mixing: .mergeAfter, topK: 2, library: "l", base: nil, experts: [.init(name: "a", sha256: "1", tasks: [])])
        // Arrow without its vectors.
        #expect(throws: TesseraError.self) { try RouterRegistry.make(arrow, weights: nil) }
    }

    @Test func routerVectorsOfTheWrongShapeOrValuesAreRefused() throws {
        func source(_ tensors: [(String, [Int], [Float])]) throws -> TensorSource { try MemorySource("router.safetensors", floats: tensors) }
        // One row per expert of the library: a [3, 4] matrix for a library of 2 is another library's router.
        #expect(throws: TesseraError.self) {
            try RouterVectors.read(kind: "arrow_prototype", experts: 2, from: try source([("m.arrow_prototype", [3, 4], [Float](repeating: 1, count: 12))]))
        }
        #expect(throws: TesseraError.self) {
            try RouterVectors.read(kind: "arrow_prototype", experts: 2, from: try source([("m.arrow_prototype", [8], [Float](repeating: 1, count: 8))]))
        }
        #expect(throws: TesseraError.self) {
            try RouterVectors.read(kind: "arrow_prototype", experts: 1, from: try source([("m.arrow_prototype", [1, 2], [1, .nan])]))
        }
        let ok = try RouterVectors.read(kind: "arrow_prototype", experts: 2, from: try source([("m.arrow_prototype", [2, 2], [1, 0, 0, 1])]))
        #expect(ok.row("m", expert: 1) == [0, 1])
    }

    @Test func topKSoftmaxBreaksTiesTowardsTheLowerIndexAndSurvivesNaN() {
        var logits: [Float] = [1, 3, 3, 0]
        logits.withUnsafeMutableBufferPointer { TopKSoftmax.apply($0.baseAddress!, count: 4, k: 1) }
        #expect(logits == [0, 1, 0, 0])
        var bad: [Float] = [.nan, .nan]
        bad.withUnsafeMutableBufferPointer { TopKSoftmax.apply($0.baseAddress!, count: 2, k: 1) }
        #expect(bad.allSatisfy { $0.isFinite })
        var many = (0..<100).map { Float($0 % 7) }
        many.withUnsafeMutableBufferPointer { TopKSoftmax.apply($0.baseAddress!, count: 100, k: 3) }
        #expect(many.filter { $0 > 0 }.count == 3 && abs(many.reduce(0, +) - 1) < 1e-5)
        #expect(many[6] > 0 && many[13] > 0 && many[20] > 0)
    }
}
