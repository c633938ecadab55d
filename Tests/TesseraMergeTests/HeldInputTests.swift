import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraTestSupport

/// Inputs whose arrays something else still holds after the merge reads them (a source that keeps them, or another
/// model slot reading the same source): a task-vector method's in-place difference must never change what the other
/// holder sees, and the results must be those of inputs nobody holds.
@Suite struct HeldInputTests {
    /// A source that keeps every array it hands out.
    final class HoldingSource: TensorSource, Float32Reading {
        let inner: MemorySource
        let holds: Bool
        private(set) var handedOut: [(String, [Float])] = []
        init(_ inner: MemorySource, holds: Bool) { self.inner = inner; self.holds = holds }
        var sourceName: String { inner.sourceName }
        var tensorNames: [String] { inner.tensorNames }
        func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { inner.tensorInfo(name) }
        func rawTensor(_ name: String) throws -> RawTensor { try inner.rawTensor(name) }
        var metadata: [(String, String)] { [] }
        func readFloat32(_ name: String) throws -> [Float]? {
            let values = try inner.rawTensor(name).floats()
            if holds { handedOut.append((name, values)) }
            return values
        }
    }

    static func values(_ n: Int, seed: UInt64) -> [Float] {
        var rng = TestRNG(state: seed)
        return (0..<n).map { _ in rng.normal() }
    }

    /// Tensors above the concurrent-read size (2^20 elements) and below it, so both load paths take part.
    static let shapes: [(String, [Int])] = [("big", [1024, 1100]), ("small", [64, 48])]

    static func plan(_ method: String, holds: Bool, sameModelTwice: Bool = false,
                     parameters: [String: ParameterSetting] = [:], modelParameters: [String: ParameterSetting] = [:]) throws
        -> (MergePlan, [HoldingSource]) {
        let make = { (name: String, seed: UInt64) in
            HoldingSource(try MemorySource(name, floats: shapes.map { ($0.0, $0.1, values($0.1.reduce(1, *), seed: seed &+ UInt64($0.1[0]))) }), holds: holds)
        }
        let base = try make("base", 1), a = try make("a", 2), b = try make("b", 3)
        var models = [MergeInputModel(name: "a", source: a, parameters: ["weight": .number(0.7)].merging(modelParameters) { $1 }),
                      MergeInputModel(name: "b", source: b, parameters: ["weight": .number(0.5)].merging(modelParameters) { $1 })]
        if sameModelTwice {
            models.append(MergeInputModel(name: "a again", source: a, parameters: ["weight": .number(0.25)].merging(modelParameters) { $1 }))
        }
        return (MergePlan(method: method, base: MergeInputModel(name: "base", source: base), models: models, parameters: parameters),
                [base, a, b])
    }

    @Test(arguments: [
        ("ties", ["density": ParameterSetting.number(0.4)]),
        ("task_arithmetic", [:]),
        ("dare_ties", ["density": .number(0.5)]),
        ("breadcrumbs_ties", ["density": .number(0.6), "gamma": .number(0.05)]),
    ] as [(String, [String: ParameterSetting])])
    func heldArraysGiveTheSameMergeAndStayUntouched(method: String, modelParameters: [String: ParameterSetting]) throws {
        for twice in [false, true] {
            let (plain, _) = try Self.plan(method, holds: false, sameModelTwice: twice, modelParameters: modelParameters)
            let (held, sources) = try Self.plan(method, holds: true, sameModelTwice: twice, modelParameters: modelParameters)
            let expected = try runMerge(plain), got = try runMerge(held)
            for (name, _) in Self.shapes {
                let e = try expected[name]!.floats(), g = try got[name]!.floats()
                // Counts, not the arrays: a failure message of two million floats would take minutes to print.
                #expect(e.count == g.count)
                let differing = zip(e, g).filter { $0.bitPattern != $1.bitPattern }.count
                #expect(differing == 0, "\(method), model listed twice: \(twice), tensor \(name)")
            }
            // Every array the sources handed out still holds the file's values.
            var checked = 0
            for source in sources {
                for (name, values) in source.handedOut {
                    let original = try source.inner.rawTensor(name).floats()
                    let changed = zip(values, original).filter { $0.bitPattern != $1.bitPattern }.count
                    #expect(values.count == original.count && changed == 0, "\(method): \(source.sourceName) '\(name)' was changed in place")
                    checked += 1
                }
            }
            #expect(checked >= 6)
        }
    }
}
