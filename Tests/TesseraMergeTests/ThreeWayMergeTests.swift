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
