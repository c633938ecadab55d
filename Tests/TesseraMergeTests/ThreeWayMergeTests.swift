import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraStore
import TesseraTestSupport

/// The three-way merge compares tensors through `ManifestDiff`: names byte for byte, values by raw hash.
@Suite struct ThreeWayMergeTests {
    static func manifest(_ tensors: [(String, [Float])], store: ObjectStore) throws -> Manifest {
        var c = TestCheckpoint()
        c.entries = tensors.map { .init(name: $0.0, dtype: "F32", shape: [$0.1.count], bytes: TestCheckpoint.f32Bytes($0.1)) }
        let cleaner = CheckpointCleaner(store: store, fileName: "m.safetensors")
        try c.encode().withUnsafeBytes { try cleaner.consume($0) }
        return try Manifest.parse(String(decoding: try cleaner.finish(), as: UTF8.self))
    }

    static func bf16Manifest(_ tensors: [(String, [Float])], store: ObjectStore) throws -> Manifest {
        var c = TestCheckpoint()
        c.entries = tensors.map { t in
            // bfloat16: the high half of each float32 (the test's values are exact in bfloat16).
            let bytes = t.1.flatMap { v -> [UInt8] in let b = v.bitPattern >> 16; return [UInt8(b & 0xFF), UInt8(b >> 8)] }
            return .init(name: t.0, dtype: "BF16", shape: [t.1.count], bytes: bytes)
        }
        let cleaner = CheckpointCleaner(store: store, fileName: "m.safetensors")
        try c.encode().withUnsafeBytes { try cleaner.consume($0) }
        return try Manifest.parse(String(decoding: try cleaner.finish(), as: UTF8.self))
    }

    /// A git merge writes into the same checkpoint: a 16-bit tensor stays 16-bit even under a method whose result
    /// mergekit promotes to float32 (ramplus_tl), and tensors merged largest first are listed in name order.
    @Test func mergedTensorsKeepTheirDTypeAndNameOrder() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try Self.bf16Manifest([("a", [1, 2]), ("b", [1, 2, 3, 4]), ("c", [1])], store: store)
        let ours = try Self.bf16Manifest([("a", [1.5, 2]), ("b", [1, 2.5, 3, 4]), ("c", [2])], store: store)
        let theirs = try Self.bf16Manifest([("a", [1, 3]), ("b", [1, 2, 3.5, 4]), ("c", [3])], store: store)
        let rules = MergeRules(rules: [.init(method: "ramplus_tl")])
        let outcome = try ThreeWayMerge(store: store, path: "m.safetensors").run(base: base, ours: ours, theirs: theirs, rules: rules)
        #expect(outcome.conflicts.isEmpty, "\(outcome.report)")
        #expect(outcome.manifest.tensors.map(\.dtype) == [.bf16, .bf16, .bf16])
        #expect(outcome.merged.map(\.0) == ["a", "b", "c"])
        let linear = try ThreeWayMerge(store: store, path: "m.safetensors")
            .run(base: base, ours: ours, theirs: theirs, rules: MergeRules(rules: [.init(method: "task_arithmetic")]))
        let merged = try StoredCheckpoint(manifest: linear.manifest, store: store, name: "merged")
        #expect(try merged.rawTensor("b").floats() == [1, 2.5, 3.5, 4])
        #expect(linear.merged.map(\.0) == ["a", "b", "c"])
    }

    /// Two names equal to Swift but not in bytes are two tensors: each side's change to its own is taken, with no
    /// conflict, and neither replaces the other.
    @Test func canonicallyEquivalentNamesAreMergedAsTwoTensors() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        let base = try Self.manifest([(composed, [1, 1]), (decomposed, [2, 2])], store: store)
        let ours = try Self.manifest([(composed, [10, 10]), (decomposed, [2, 2])], store: store)
        let theirs = try Self.manifest([(composed, [1, 1]), (decomposed, [20, 20])], store: store)
        let outcome = try ThreeWayMerge(store: store, path: "m.safetensors").run(base: base, ours: ours, theirs: theirs, rules: MergeRules())
        #expect(outcome.conflicts.isEmpty, "\(outcome.report)")
        #expect(outcome.manifest.tensors.map { Array($0.name.utf8) } == [Array(composed.utf8), Array(decomposed.utf8)])
        let merged = try StoredCheckpoint(manifest: outcome.manifest, store: store, name: "merged")
        #expect(try merged.rawTensor(composed).floats() == [10, 10])
        #expect(try merged.rawTensor(decomposed).floats() == [20, 20])
    }

    /// A tensor removed on one side and unchanged on the other is removed; one added on both sides with the same
    /// bytes is kept once; one removed on one side and changed on the other is a conflict.
    @Test func removalsAndIdenticalAdditions() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try Self.manifest([("a", [1]), ("b", [2]), ("c", [3])], store: store)
        let ours = try Self.manifest([("b", [2]), ("c", [3]), ("n", [9])], store: store)          // a removed, n added
        let theirs = try Self.manifest([("a", [1]), ("b", [2]), ("n", [9])], store: store)        // c removed, n added
        let outcome = try ThreeWayMerge(store: store, path: "m.safetensors").run(base: base, ours: ours, theirs: theirs, rules: MergeRules())
        #expect(outcome.conflicts.isEmpty && outcome.manifest.tensors.map(\.name) == ["b", "n"])
        let changed = try Self.manifest([("a", [5]), ("b", [2]), ("c", [3])], store: store)
        let conflict = try ThreeWayMerge(store: store, path: "m.safetensors").run(base: base, ours: ours, theirs: changed, rules: MergeRules())
        #expect(conflict.conflicts == ["a"] && conflict.report == ["a: removed on our side, changed on theirs"])
    }
}
