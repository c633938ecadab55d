import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraStore
import TesseraTestSupport

/// A merge of fine-tunes stored as deltas against their base decodes each model's tensor against the base's values
/// it has just read (`DeltaBaseSharing`) rather than decoding the base's object again: the results are those of the
/// same merge through sources that cannot share, for a tensor large enough to be read concurrently and a small one.
@Suite struct SharedDeltaBaseTests {
    /// The stored checkpoint seen through `TensorSource` and `Float32Reading` only: every read decodes its own bases.
    final class Unshared: TensorSource, Float32Reading {
        let inner: StoredCheckpoint
        init(_ inner: StoredCheckpoint) { self.inner = inner }
        var sourceName: String { inner.sourceName }
        var tensorNames: [String] { inner.tensorNames }
        var metadata: [(String, String)] { inner.metadata }
        var allowsConcurrentReads: Bool { true }
        func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { inner.tensorInfo(name) }
        func rawTensor(_ name: String) throws -> RawTensor { try inner.rawTensor(name) }
        func readFloat32(_ name: String) throws -> [Float]? { try inner.readFloat32(name) }
    }

    static func store(_ tensors: [(String, [Float])], previous: Manifest?, store: ObjectStore) throws -> Manifest {
        var c = TestCheckpoint()
        c.entries = tensors.map { .init(name: $0.0, dtype: "F32", shape: [$0.1.count], bytes: TestCheckpoint.f32Bytes($0.1)) }
        var bases: [String: Manifest.Stored] = [:]
        for t in previous?.tensors ?? [] { bases[t.name] = t.stored }
        let cleaner = CheckpointCleaner(store: store, fileName: "m.safetensors", deltaBases: bases)
        try c.encode().withUnsafeBytes { try cleaner.consume($0) }
        return try Manifest.parse(String(decoding: try cleaner.finish(), as: UTF8.self))
    }

    @Test(arguments: ["ties", "task_arithmetic"])
    func sharingTheBaseGivesTheSameMerge(method: String) throws {
        let (objects, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let large = (1 << 20) + 5, small = 3000
        func values(_ n: Int, seed: UInt64, noise: Float) -> [Float] {
            var s = seed | 1
            return (0..<n).map { i in
                s ^= s << 13; s ^= s >> 7; s ^= s << 17
                return Float(i % 977) * 0.001 - 0.4 + noise * (Float(s % 2001) / 1000 - 1)
            }
        }
        let base = try Self.store([("big", values(large, seed: 1, noise: 0)), ("small", values(small, seed: 2, noise: 0))], previous: nil, store: objects)
        let ft1 = try Self.store([("big", values(large, seed: 3, noise: 1e-3)), ("small", values(small, seed: 4, noise: 1e-3))], previous: base, store: objects)
        let ft2 = try Self.store([("big", values(large, seed: 5, noise: 1e-3)), ("small", values(small, seed: 6, noise: 1e-3))], previous: base, store: objects)
        // The fine-tunes are stored against the base's objects, which is what sharing needs.
        let sources = try [base, ft1, ft2].enumerated().map { try StoredCheckpoint(manifest: $0.element, store: objects, name: "v\($0.offset)") }
        for name in ["big", "small"] {
            let baseObject = try #require(sources[0].storedObject(name)?.id)
            #expect(sources[1].storedObject(name)?.bases.contains(baseObject) == true, "\(name)")
            #expect(sources[2].storedObject(name)?.bases.contains(baseObject) == true, "\(name)")
        }
        func merge(_ wrap: (StoredCheckpoint) -> TensorSource) throws -> [String: [Float]] {
            let trim: [String: ParameterSetting] = method == "ties" ? ["density": .number(0.5)] : [:]
            let plan = MergePlan(method: method, base: MergeInputModel(name: "base", source: wrap(sources[0])),
                                 models: [MergeInputModel(name: "a", source: wrap(sources[1]), parameters: trim.merging(["weight": .number(1)]) { $1 }),
                                          MergeInputModel(name: "b", source: wrap(sources[2]), parameters: trim.merging(["weight": .number(0.7)]) { $1 })])
            var out: [String: [Float]] = [:]
            _ = try MergeDriver.run(plan, float32Sink: { name, values, _ in out[name] = values }) { name, tensor in out[name] = try tensor.floats() }
            return out
        }
        let shared = try merge { $0 }
        let unshared = try merge { Unshared($0) }
        #expect(shared.keys.sorted() == ["big", "small"])
        for name in ["big", "small"] {
            let x = try #require(shared[name]), y = try #require(unshared[name])
            // Compared to a Bool: a failed comparison of two million-element arrays would be diffed for the report.
            let identical = x.count == y.count && x.elementsEqual(y) { $0.bitPattern == $1.bitPattern }
            #expect(identical, "\(method) \(name): the merge differs when the base is shared")
        }
    }
}
