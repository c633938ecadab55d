import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraRepository
import TesseraStore
import TesseraTestSupport

/// A merge of file inputs hashes every tensor it reads for its provenance, on the hasher's threads, while it merges,
/// reading the tensor's range of the file again in mapped windows while a task-vector method writes its differences
/// into the arrays it read: the provenance names the file's bytes, and the merge is the one of sources that hash
/// nothing.
@Suite struct HashedInputMergeTests {
    /// Base and two fine-tunes: one tensor above the size read side by side (2^20 elements), one above the hasher's
    /// window (8 MiB, ending 32 bytes into a block), two small ones.
    static func checkpoints(in s: Sandbox) throws -> [(String, TestCheckpoint)] {
        try (0..<3).map { k in
            var c = TestCheckpoint()
            c.add("big", shape: [1024, 1030], seed: 1 + UInt64(k))
            c.add("huge", shape: [2100, 1030], seed: 31 + UInt64(k))
            c.add("small.a", shape: [64, 48], seed: 11 + UInt64(k))
            c.add("small.b", shape: [300], seed: 21 + UInt64(k))
            let path = s.path("m\(k).safetensors")
            try c.write(to: path)
            return (path, c)
        }
    }

    static func plan(_ sources: [TensorSource]) -> MergePlan {
        MergePlan(method: "ties", base: MergeInputModel(name: "base", source: sources[0]),
                  models: [MergeInputModel(name: "a", source: sources[1], parameters: ["weight": .number(0.7), "density": .number(0.4)]),
                           MergeInputModel(name: "b", source: sources[2], parameters: ["weight": .number(0.5), "density": .number(0.6)])])
    }

    @Test func provenanceHashesNameTheFilesBytesAndTheMergeIsUnchanged() throws {
        let s = try Sandbox()
        let files = try Self.checkpoints(in: s)
        let plain = try files.map { path, c in
            try MemorySource(path, floats: c.entries.map { e in (e.name, e.shape, e.bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }) })
        }
        var expected: [String: RawTensor] = [:]
        try MergeDriver.run(Self.plan(plain)) { expected[$0] = $1 }
        // Several times: how far the hasher is behind the merge differs from run to run.
        for _ in 0..<4 {
            let resolver = CheckpointResolver(directory: s.path("."))
            let sources = try files.map { try resolver.source($0.0) }
            var got: [String: RawTensor] = [:]
            try MergeDriver.run(Self.plan(sources)) { got[$0] = $1 }
            for (name, e) in expected {
                #expect(got[name]?.bytes == e.bytes, "tensor \(name)")
            }
            for (k, source) in sources.enumerated() {
                for entry in files[k].1.entries {
                    #expect(resolver.tensorHash(source, entry.name) == SHA256Hasher.hex(entry.bytes), "m\(k): \(entry.name)")
                }
            }
            resolver.finish()
        }
    }
}
