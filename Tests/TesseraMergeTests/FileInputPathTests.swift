import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

/// The paths a merge of large file inputs takes and small in-memory tests do not: inputs of a million elements or
/// more read concurrently from files, results handed over as floats by `float32Sink`, and parallel kernels split
/// into more chunks than cores (the large tensor's length is a multiple of no chunk size).
@Suite struct FileInputPathTests {
    static let large = 1 << 20 + 37  // above the concurrent-read threshold, and not a multiple of any chunk size

    static func values(seed: UInt64, count: Int) -> [Float] {
        var rng = TestRNG(state: seed)
        return (0..<count).map { _ in rng.normal() }
    }

    /// Three files with a large tensor and a small one each.
    static func writeInputs(in dir: URL, poison: (file: Int, index: Int)? = nil) throws -> [String] {
        try (0..<3).map { i in
            var big = values(seed: UInt64(10 + i), count: large)
            if let poison, poison.file == i { big[poison.index] = .nan }
            let path = dir.appendingPathComponent("in\(i).safetensors").path
            try SafetensorsWriter.write(tensors: [("big", try RawTensor(floats: big, shape: [large], dtype: .f32)),
                                                  ("small", try RawTensor(floats: values(seed: UInt64(20 + i), count: 6), shape: [2, 3], dtype: .f32))],
                                        metadata: [], to: path)
            return path
        }
    }

    static func plan(_ paths: [String], weights: [Double]) throws -> MergePlan {
        try MergePlan(method: "linear", base: nil,
                      models: zip(paths, weights).map { MergeInputModel(name: $0.0, source: try StreamingSafetensorsSource(path: $0.0),
                                                                         parameters: ["weight": .number($0.1)]) },
                      parameters: [:]).distributingModelDefaults()
    }

    static func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-fileinput-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func concurrentReadsAndFloatSinkGiveTheWeightedAverageBitForBit() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let paths = try Self.writeInputs(in: dir)
        let weights: [Double] = [0.5, 0.3, 0.2]
        var floats: [String: [Float]] = [:], raw: [String: RawTensor] = [:]
        try MergeDriver.run(try Self.plan(paths, weights: weights), float32Sink: { name, values, shape in
            #expect(shape == (name == "big" ? [Self.large] : [2, 3]))
            floats[name] = values
        }) { raw[$0] = $1 }
        #expect(raw.isEmpty)  // every F32 result went to the float sink
        for (name, seeds, count) in [("big", 10, Self.large), ("small", 20, 6)] {
            let inputs = (0..<3).map { Self.values(seed: UInt64(seeds + $0), count: count) }
            // The element-by-element definition, in the same order of operations, each term added with one fused
            // multiply-add as torch's addcmul_ (mergekit's linear) adds it.
            let w = weights.map(Float.init)
            let expected = (0..<count).map { j in
                (w[0] * inputs[0][j]).addingProduct(inputs[1][j], w[1]).addingProduct(inputs[2][j], w[2]) / (w[0] + w[1] + w[2])
            }
            #expect(floats[name] == expected, "tensor \(name)")
        }
    }

    @Test func nonFiniteResultIsReportedBeforeTheFloatSinkSeesIt() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let paths = try Self.writeInputs(in: dir, poison: (file: 2, index: 777_777))
        var emitted: [String] = []
        let error = #expect(throws: TesseraError.self) {
            try MergeDriver.run(try Self.plan(paths, weights: [1, 1, 1]), float32Sink: { name, _, _ in emitted.append(name) }) { name, _ in
                emitted.append(name)
            }
        }
        #expect(error?.message.contains("'big'") == true)
        #expect(error?.message.contains("index 777777") == true)
        #expect(!emitted.contains("big"))
    }

    @Test func truncatedInputFailsTheConcurrentReadWithItsPath() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let paths = try Self.writeInputs(in: dir)
        let plan = try Self.plan(paths, weights: [1, 1, 1])  // headers parsed while the files are whole
        let handle = try #require(FileHandle(forWritingAtPath: paths[1]))
        try handle.truncate(atOffset: 4096)
        try handle.close()
        let error = #expect(throws: TesseraError.self) { try MergeDriver.run(plan, float32Sink: { _, _, _ in }) { _, _ in } }
        #expect(error?.message.contains(paths[1]) == true)
    }

    @Test func mappedAndDecodedInputsMixUnderAFloat32Plan() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = Self.values(seed: 1, count: Self.large), b = Self.values(seed: 2, count: Self.large)
        let pa = dir.appendingPathComponent("a.safetensors").path, pb = dir.appendingPathComponent("b.safetensors").path
        try SafetensorsWriter.write(tensors: [("w", try RawTensor(floats: a, shape: [Self.large], dtype: .f32))], to: pa)
        try SafetensorsWriter.write(tensors: [("w", try RawTensor(floats: b, shape: [Self.large], dtype: .bf16))], to: pb)
        // a is mapped, b (bf16) is decoded into an array; dtype float32 lets the two dtypes meet.
        var plan = try Self.plan([pa, pb], weights: [1, 3])
        plan.dtype = .f32
        var result: [Float] = []
        try MergeDriver.run(plan, float32Sink: { _, values, _ in result = values }) { _, _ in }
        let expected = (0..<Self.large).map { j in (1 * a[j] + 3 * HalfFloat.bf16ToFloat(HalfFloat.floatToBF16(b[j]))) / 4 }
        #expect(result == expected)
    }
}
