import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraStore
import TesseraIO
import TesseraTestSupport

/// `.tessera/merge.yml`, read as strictly as a mergekit config, and the three-way merge it drives.
@Suite struct MergeRulesTests {
    @Test func rulesParseWithDefaultsAndFirstMatchWins() throws {
        let rules = try MergeRules.parse(yaml: """
        rules:
          - tensors: "*.attn.[qk].weight"
            method: ties
            weights: [1, 0.5]
            parameters: {density: 0.5}
          - path: "models/*.safetensors"
            method: linear
        """)
        #expect(rules.rules.count == 2)
        #expect(rules.rule(path: "m.safetensors", tensor: "h.0.attn.q.weight")?.method == "ties")
        #expect(rules.rule(path: "m.safetensors", tensor: "h.0.attn.v.weight") == nil)  // [qk] is a character class
        #expect(rules.rule(path: "models/a.safetensors", tensor: "h.0.attn.v.weight")?.method == "linear")
        #expect(rules.rules[0].weights == [1, 0.5])
        #expect(rules.rules[0].parameters["density"] == .value(.number(0.5)))
    }

    @Test func typosAndWrongTypesAreErrorsNamingTheLine() throws {
        let cases: [(String, String)] = [
            ("rules:\n  - method: ties\n    densty: 0.5\n", "line 3"),               // unknown key
            ("rules:\n  - method: linear\n    weights: [1]\n", "two numbers"),         // one weight
            ("rules:\n  - method: linear\n    weights: [[1], 2]\n", "numbers"),        // a list where a number belongs
            ("rules:\n  - method: lineer\n", "lineer"),                              // unknown method
            ("rules:\n  - method: ties\n    parameters: {dens: 0.5}\n", "dens"),      // unknown parameter
            ("rule:\n  - method: ties\n", "unknown key 'rule'"),
            ("rules:\n  - path: x\n", "no method"),
        ]
        for (text, fragment) in cases {
            let e = try #require(throws: TesseraError.self, "\(text)") { try MergeRules.parse(yaml: text) }
            #expect(e.message.contains(fragment), "\(e.message) lacks \(fragment)")
        }
    }

    @Test func hostileScalarsAreValuesOrErrorsNotTraps() throws {
        // A base-60 integer of twelve parts overflowed inside Yams and trapped (found by fuzzing).
        let e = try #require(throws: TesseraError.self) {
            try MergeRules.parse(yaml: "rules:\n  - method: ties\n    parameters: {density: 1:0:0:0:0:0:0:0:0:0:0:0}\n")
        }
        #expect(e.message.contains("too large"))
        #expect(try YAMLScalar.resolve("1:30", what: "x") == .number(90))
        #expect(try YAMLScalar.resolve("0x1F", what: "x") == .number(31))
        #expect(try YAMLScalar.resolve("1e-5", what: "x") == .number(1e-5))
        #expect(try YAMLScalar.resolve("yes", what: "x") == .bool(true))
        #expect(try YAMLScalar.resolve("model-7b", what: "x") == .string("model-7b"))
        #expect(try YAMLScalar.resolve("~", what: "x") == nil)
        #expect(throws: TesseraError.self) { try MergeConfig.parse(yaml: "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 99999999999999999999}\n") }
    }

    @Test func gitConfigOverridesAreCheckedToo() throws {
        let r = try MergeRules.override(method: "ties", weights: "1, 2", parameters: "density=0.5,normalize=false")
        #expect(r.weights == [1, 2] && r.parameters["density"] == .value(.number(0.5)) && r.parameters["normalize"] == .value(.bool(false)))
        #expect(throws: TesseraError.self) { try MergeRules.override(method: "ties", weights: "1", parameters: nil) }
        #expect(throws: TesseraError.self) { try MergeRules.override(method: "ties", weights: nil, parameters: "densty=0.5") }
    }

    /// The three-way merge on manifests in a store: one-sided changes are taken, a two-sided change goes to the
    /// matching rule's method (checked against the average computed here), an unconfigured one is a conflict.
    @Test func threeWayMergeTakesOneSidedChangesAndMergesTwoSidedOnes() throws {
        let dir = NSTemporaryDirectory() + "tessera-3way-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ObjectStore(root: dir)
        func values(_ seed: Float) -> [Float] { (0..<256).map { Float($0) * 0.001 + seed } }
        func manifest(_ tensors: [(String, [Float])]) throws -> Manifest {
            let bytes = try SafetensorsWriter.encode(tensors: try tensors.map { ($0.0, try RawTensor(floats: $0.1, shape: [256], dtype: .f32)) })
            let c = CheckpointCleaner(store: store, fileName: "m.safetensors")
            try bytes.withUnsafeBytes { try c.consume($0) }
            return try Manifest.parse(String(decoding: try c.finish(), as: UTF8.self))
        }
        let base = try manifest([("a", values(0)), ("b", values(1)), ("c", values(2))])
        let ours = try manifest([("a", values(10)), ("b", values(1)), ("c", values(20))])     // a, c changed
        let theirs = try manifest([("a", values(30)), ("b", values(11)), ("c", values(40))])  // a, b, c changed
        let rules = MergeRules(rules: [MergeRules.Rule(method: "linear", tensors: "a")])
        let outcome = try ThreeWayMerge(store: store, path: "m.safetensors").run(base: base, ours: ours, theirs: theirs, rules: rules)
        #expect(outcome.conflicts == ["c"])
        #expect(outcome.merged.map(\.tensor) == ["a"])
        let merged = try StoredCheckpoint(manifest: outcome.manifest, store: store, name: "merged")
        let expectedA = zip(values(10), values(30)).map { ($0 + $1) / 2 }
        #expect(try merged.rawTensor("a").floats() == expectedA)
        #expect(try merged.rawTensor("b").floats() == values(11))   // theirs only
        #expect(try merged.rawTensor("c").floats() == values(20))   // conflict: ours kept
        #expect(merged.metadata.contains { $0.0 == "tessera.merge.tensors" })
    }
}
