import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

/// Merges whose 16-bit output overflows fail naming the tensor, the value and the dtype, and nothing appears under
/// the output's name.
@Suite struct HalfPrecisionOverflowTests {
    static func plan(_ a: MemorySource, _ b: MemorySource, dtype: DType? = nil) -> MergePlan {
        MergePlan(method: "linear", base: nil,
                  models: [a, b].map { MergeInputModel(name: $0.sourceName, source: $0, parameters: ["weight": .number(1)]) },
                  parameters: ["normalize": .bool(false)], dtype: dtype)
    }

    @Test("F16 inputs whose sum exceeds 65504 are an error, not a tensor of infinities")
    func float16Overflow() throws {
        let a = try MemorySource("a", floats: [("fine", [2], [1, 2]), ("layer.w", [3], [1, 40000, 2])], dtype: .f16)
        let b = try MemorySource("b", floats: [("fine", [2], [1, 2]), ("layer.w", [3], [1, 40000, 2])], dtype: .f16)
        var emitted: [String] = []
        let e = #expect(throws: TesseraError.self) {
            try MergeDriver.run(Self.plan(a, b)) { name, _ in emitted.append(name) }
        }
        #expect(e?.message.contains("'layer.w'") == true)
        #expect(e?.message.contains("80000") == true)
        #expect(e?.message.contains("index 1") == true)
        #expect(e?.message.contains("F16") == true)
        #expect(e?.hint?.contains("float32") == true && e?.hint?.contains("bfloat16") == true)
        #expect(emitted == ["fine"])
        // Just below the rounding boundary is fine: 65504 is float16's largest value.
        let c = try MemorySource("c", floats: [("x", [1], [32752])], dtype: .f16)
        let out = try runMerge(Self.plan(c, c))
        #expect(try out["x"]?.floats() == [65504])
    }

    @Test("BF16 output overflow (finite in float32, infinite in bfloat16) is an error too")
    func bfloat16Overflow() throws {
        // 1.7014e38 (a bfloat16 value) times 1.997 is 3.3977e38: finite in float32, past bfloat16's largest value.
        let a = try MemorySource("a", floats: [("x", [2], [1, 1.7014118e38])], dtype: .bf16)
        let plan = MergePlan(method: "linear", base: nil, models: [MergeInputModel(name: "a", source: a, parameters: ["weight": .number(1.997)])],
                             parameters: ["normalize": .bool(false)])
        let e = #expect(throws: TesseraError.self) { try runMerge(plan) }
        #expect(e?.message.contains("'x'") == true && e?.message.contains("BF16") == true)
        #expect(e?.hint?.contains("float32") == true)
    }

    @Test("the output file is never written: mergeToFile and the streaming writer leave the folder empty")
    func nothingIsWritten() throws {
        let directory = NSTemporaryDirectory() + "tessera-overflow-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let a = try MemorySource("a", floats: [("fine", [2], [1, 2]), ("w", [1], [48000])], dtype: .f16)
        #expect(throws: TesseraError.self) { try MergeDriver.mergeToFile(Self.plan(a, a), path: directory + "/merged.safetensors") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
        do {
            let writer = try SafetensorsStreamWriter(path: directory + "/streamed.safetensors")
            #expect(throws: TesseraError.self) {
                try MergeDriver.run(Self.plan(a, a)) { name, tensor in try writer.append(name, tensor) }
            }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
        // With float32 output the same merge succeeds.
        let out = try runMerge(Self.plan(a, a, dtype: .f32))
        #expect(try out["w"]?.floats() == [96000])
    }
}

/// YAML aliases and nesting in merge configs (`MergeConfig.parse`) and in `.tessera/merge.yml` (`MergeRules.load`
/// runs the same `YAMLDocument.compose` before Yams builds its values).
@Suite struct HostileYAMLTests {
    /// The classic "billion laughs": each level lists the previous one ten times.
    static func laughs(levels: Int, width: Int = 10) -> String {
        var lines = ["merge_method: linear", "models:", "  - model: a.safetensors", "parameters:", "  l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        for i in 1...levels {
            lines.append("  l\(i): &l\(i) [" + Array(repeating: "*l\(i - 1)", count: width).joined(separator: ", ") + "]")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Filter lists whose values alias the previous level twice: a list that `MergeConfig.parse` walks in full.
    static func filterLaughs(levels: Int) -> String {
        var lines = ["merge_method: linear", "models:", "  - model: a.safetensors", "parameters:", "  f0: &f0 [{filter: x, value: 1}]"]
        for i in 1...levels {
            lines.append("  f\(i): &f\(i) [{filter: x, value: *f\(i - 1)}, {filter: y, value: *f\(i - 1)}]")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    func expectRefused(_ yaml: String, _ words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try MergeConfig.parse(yaml: yaml, file: "bomb.yml")
            Issue.record("accepted a hostile config", sourceLocation: sourceLocation)
        } catch let e as TesseraError {
            #expect(e.code == .invalidParameter, "\(e)", sourceLocation: sourceLocation)
            #expect(e.message.hasPrefix("bomb.yml: "), sourceLocation: sourceLocation)
            for w in words { #expect(e.message.contains(w), "'\(w)' not in \(e.message)", sourceLocation: sourceLocation) }
            #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
        } catch {
            Issue.record("not a TesseraError: \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("alias bombs are refused after a bounded walk (10^30 and 2^40 expanded nodes from under 3 KB)")
    func billionLaughs() throws {
        let classic = Self.laughs(levels: 30)
        #expect(classic.utf8.count < 3000)
        expectRefused(classic, ["aliases expand"])
        expectRefused(Self.filterLaughs(levels: 40), ["aliases expand"])
        // The same check guards .tessera/merge.yml.
        #expect(throws: TesseraError.self) { _ = try YAMLDocument.compose("rules:\n" + Self.laughs(levels: 30), file: ".tessera/merge.yml") }
    }

    @Test("small anchors and aliases keep working")
    func ordinaryAliases() throws {
        let yaml = """
        merge_method: ties
        base_model: base.safetensors
        parameters: &shared {density: 0.5, weight: 0.5}
        models:
          - model: a.safetensors
            parameters: *shared
          - model: b.safetensors
            parameters: *shared
        """
        let config = try MergeConfig.parse(yaml: yaml, file: "ok.yml")
        #expect(config.models.count == 2)
        #expect(config.models.allSatisfy { $0.parameters["density"] == .value(.number(0.5)) })
        // A filter list an order of magnitude larger than the text, within the limit.
        let nested = Self.filterLaughs(levels: 8)
        _ = try MergeConfig.parse(yaml: nested, file: "nested.yml")
    }

    @Test("deep nesting is refused before Yams recurses into it")
    func deepNesting() throws {
        let flow = "merge_method: linear\nparameters: {weight: " + String(repeating: "[", count: 100_000) + "1" + String(repeating: "]", count: 100_000) + "}\n"
        expectRefused(flow, ["nests about", "levels deep"])
        expectRefused("merge_method: linear\nx: " + String(repeating: "- ", count: 50_000) + "1\n", ["levels deep"])
        var block = "merge_method: linear\n"
        for depth in 0..<2_000 { block += String(repeating: " ", count: depth) + "k\(depth):\n" }
        expectRefused(block, ["levels deep"])
        // Dashes and colons inside scalars, quotes and comments are not nesting.
        let harmless = "merge_method: linear\nname: \"" + String(repeating: "[: - ", count: 2_000) + "\"\n# " + String(repeating: "- ", count: 2_000) + "\nmodels:\n  - model: a-b:c.safetensors\n"
        #expect(try MergeConfig.parse(yaml: harmless, file: "ok.yml").models.count == 1)
    }

    @Test func invalidYAMLIsOneLine() throws {
        expectRefused("merge_method: [linear\nmodels: {\n", ["invalid YAML"])
    }
}
