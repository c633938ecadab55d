import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

/// Every bad input is a TesseraError that names the tensor (or the parameter), never a NaN in the output.
@Suite struct BadInputTests {
    static func source(_ name: String, _ tensors: [(String, [Int], [Float])], dtype: DType = .f32) throws -> MemorySource {
        try MemorySource(name, floats: tensors, dtype: dtype)
    }
    static let w: [Float] = [1, 2, 3, 4]

    static func plan(_ method: String, base: MemorySource? = nil, models: [MemorySource], weights: [Double]? = nil,
                     model extra: [String: ParameterSetting] = [:], global: [String: ParameterSetting] = [:]) -> MergePlan {
        MergePlan(method: method, base: base.map { MergeInputModel(name: $0.sourceName, source: $0) },
                  models: models.enumerated().map { i, m in
                      var p = extra
                      p["weight"] = .number(weights?[i] ?? 1)
                      return MergeInputModel(name: m.sourceName, source: m, parameters: p)
                  },
                  parameters: global)
    }

    static func error(_ plan: MergePlan) -> TesseraError? {
        #expect(throws: TesseraError.self) { try runMerge(plan) }
    }

    @Test func shapeMismatchNamesTheTensor() throws {
        let a = try Self.source("a", [("x", [4], Self.w)])
        let b = try Self.source("b", [("x", [2, 2], Self.w)])
        let e = Self.error(Self.plan("linear", models: [a, b]))
        #expect(e?.code == .shapeMismatch)
        #expect(e?.message.contains("'x'") == true)
    }

    /// Inputs of different float dtypes without `dtype:` are promoted as mergekit (torch) promotes them: float32 with
    /// bfloat16 merges and is written in float32, and so do bfloat16 with float16; a non-float input is an error.
    @Test func mixedDTypesArePromoted() throws {
        let v: [Float] = [1.005, -2.01, 3, 0.1]
        let a = try Self.source("a", [("x", [4], v)])
        let b = try Self.source("b", [("x", [4], v)], dtype: .bf16)
        let c = try Self.source("c", [("x", [4], v)], dtype: .f16)
        let rb = v.map { HalfFloat.bf16ToFloat(HalfFloat.floatToBF16($0)) }, rc = v.map { HalfFloat.f16ToFloat(HalfFloat.floatToF16($0)) }
        for (models, second) in [([a, b], rb), ([b, c], rc)] {
            let first = models[0] === a ? v : rb
            let out = try runMerge(Self.plan("linear", models: models))["x"]!
            #expect(out.dtype == .f32)
            #expect(try out.floats() == zip(first, second).map { ($0 * 1).addingProduct($1, 1) / 2 })
        }
        let i = MemorySource("i", [("x", RawTensor(dtype: .i8, shape: [4], bytes: [1, 2, 3, 4]))])
        let e = Self.error(Self.plan("linear", models: [a, i]))
        #expect(e?.message.contains("'x'") == true)
        // With an explicit merge dtype the inputs are converted, as mergekit does.
        var plan = Self.plan("linear", models: [a, b])
        plan.dtype = .f32
        #expect(try runMerge(plan)["x"]!.floats() == zip(v, rb).map { ($0 * 1).addingProduct($1, 1) / 2 })
    }

    @Test func missingTensorIsNamed() throws {
        let a = try Self.source("a", [("x", [4], Self.w), ("y", [4], Self.w)])
        let b = try Self.source("b", [("x", [4], Self.w)])
        let e = Self.error(Self.plan("linear", models: [a, b]))
        #expect(e?.code == .notFound)
        #expect(e?.message.contains("'y'") == true)
        let e2 = Self.error(Self.plan("linear", models: [b, a]))
        #expect(e2?.message.contains("'y'") == true)
    }

    @Test func zeroWeightSumUnderNormalisation() throws {
        let a = try Self.source("a", [("x", [4], Self.w)])
        let b = try Self.source("b", [("x", [4], Self.w.map { $0 + 1 })])
        let e = Self.error(Self.plan("linear", models: [a, b], weights: [1, -1]))
        #expect(e?.code == .invalidParameter)
        #expect(e?.message.contains("'x'") == true)
        let base = try Self.source("base", [("x", [4], [0, 0, 0, 0])])
        let e2 = Self.error(Self.plan("task_arithmetic", base: base, models: [a, b], weights: [1, -1], global: ["normalize": .bool(true)]))
        #expect(e2?.message.contains("'x'") == true)
        // Without normalisation a zero sum is fine: the weighted sum a − b.
        let ok = try runMerge(Self.plan("linear", models: [a, b], weights: [1, -1], global: ["normalize": .bool(false)]))
        #expect(try ok["x"]!.floats() == [-1, -1, -1, -1])
    }

    @Test(arguments: [0.0, -0.1, 1.5, Double.nan])
    func densityOutsideUnitInterval(density: Double) throws {
        let base = try Self.source("base", [("x", [4], [0, 0, 0, 0])])
        let a = try Self.source("a", [("x", [4], Self.w)])
        for method in ["ties", "dare_ties", "dare_linear", "breadcrumbs"] {
            let e = Self.error(Self.plan(method, base: base, models: [a], model: ["density": .number(density)]))
            #expect(e?.code == .invalidParameter)
            #expect(e?.message.contains("density") == true && e?.message.contains("'x'") == true, "\(method): \(String(describing: e))")
        }
    }

    @Test(arguments: [Float(-1e-3), Float.nan])
    func badFisherEntries(value: Float) throws {
        let a = try Self.source("a", [("x", [4], Self.w)])
        let b = try Self.source("b", [("x", [4], Self.w)])
        let fa = try Self.source("fa", [("x", [4], [1, 1, 1, 1])])
        let fb = try Self.source("fb", [("x", [4], [1, value, 1, 1])])
        let plan = MergePlan(method: "fisher", models: [
            MergeInputModel(name: "a", source: a, fisher: fa), MergeInputModel(name: "b", source: b, fisher: fb),
        ])
        let e = Self.error(plan)
        #expect(e?.code == .invalidParameter)
        #expect(e?.message.contains("'x'") == true)
    }

    /// A tensor no model's Fisher covers (GPT-2's mask buffers) is taken as it is when every model holds the same
    /// values, named when they differ; one covered by some Fishers only is still an error.
    @Test func tensorsNoFisherCoversMergeOnlyWhenEqual() throws {
        let mask: [Float] = [1, 0, 1, 1]
        let a = try Self.source("a", [("x", [4], Self.w), ("mask", [4], mask)])
        let b = try Self.source("b", [("x", [4], Self.w.map { $0 * 3 }), ("mask", [4], mask)])
        let fa = try Self.source("fa", [("x", [4], [1, 1, 1, 1])])
        let fb = try Self.source("fb", [("x", [4], [1, 1, 1, 1])])
        let plan = MergePlan(method: "fisher", models: [
            MergeInputModel(name: "a", source: a, fisher: fa), MergeInputModel(name: "b", source: b, fisher: fb),
        ])
        let out = try runMerge(plan)
        #expect(try out["mask"]?.floats() == mask)
        #expect(try out["x"]?.floats() == Self.w.map { $0 * 2 })
        let c = try Self.source("c", [("x", [4], Self.w), ("mask", [4], [0, 0, 1, 1])])
        let differs = Self.error(MergePlan(method: "fisher", models: [
            MergeInputModel(name: "a", source: a, fisher: fa), MergeInputModel(name: "c", source: c, fisher: fb),
        ]))
        #expect(differs?.message.contains("'mask'") == true && differs?.message.contains("differ") == true, "\(String(describing: differs))")
        let fc = try Self.source("fc", [("x", [4], [1, 1, 1, 1]), ("mask", [4], [1, 1, 1, 1])])
        let partly = Self.error(MergePlan(method: "fisher", models: [
            MergeInputModel(name: "a", source: a, fisher: fa), MergeInputModel(name: "b", source: b, fisher: fc),
        ]))
        #expect(partly?.message.contains("no Fisher in 'fa'") == true, "\(String(describing: partly))")
    }

    @Test func fisherNeedsAFisherPerModel() throws {
        let a = try Self.source("a", [("x", [4], Self.w)])
        let e = Self.error(MergePlan(method: "fisher", models: [MergeInputModel(name: "a", source: a)]))
        #expect(e?.message.contains("Fisher") == true)
    }

    @Test func unknownMethodAndParameters() throws {
        let a = try Self.source("a", [("x", [4], Self.w)])
        let base = try Self.source("base", [("x", [4], [0, 0, 0, 0])])
        let e1 = Self.error(Self.plan("della_magic", models: [a]))
        #expect(e1?.message.contains("della_magic") == true)
        let e2 = Self.error(Self.plan("ties", base: base, models: [a], global: ["lambada": .number(1)]))
        #expect(e2?.message.contains("lambada") == true)
        let e3 = Self.error(Self.plan("ties", base: base, models: [a], model: ["densty": .number(0.5)]))
        #expect(e3?.message.contains("densty") == true)
        let e4 = Self.error(Self.plan("ties", base: base, models: [a], global: ["ties_variant": .string("fancy")]))
        #expect(e4?.message.contains("fancy") == true)
        let e5 = Self.error(Self.plan("ties", models: [a]))
        #expect(e5?.message.contains("base") == true)
    }

    @Test func nonFiniteOutputIsAnErrorNamingTheTensor() throws {
        let a = try Self.source("a", [("ok", [2], [1, 2]), ("bad", [4], [1, .nan, 3, 4])])
        let b = try Self.source("b", [("ok", [2], [1, 2]), ("bad", [4], Self.w)])
        var emitted: [String] = []
        let e = #expect(throws: TesseraError.self) {
            try MergeDriver.run(Self.plan("linear", models: [a, b])) { name, _ in emitted.append(name) }
        }
        #expect(e?.message.contains("'bad'") == true)
        #expect(emitted == ["ok"])
        // Overflow to infinity is caught the same way.
        let big = try Self.source("big", [("x", [1], [3e38])])
        let e2 = Self.error(Self.plan("linear", models: [big, big], global: ["normalize": .bool(false)]))
        #expect(e2?.message.contains("'x'") == true)
    }
}
