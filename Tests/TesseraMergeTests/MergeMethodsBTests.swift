import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// Edge cases of nuslerp, multislerp and karcher (their agreement with mergekit is in MergeDTypeTests and
/// MergekitMethodTests).
@Suite struct MergeMethodsBTests {
    static func input(_ method: String, base: [Float]?, models: [[Float]], shape: [Int]? = nil, weights: [Double]? = nil,
                      parameters: [String: ParameterSetting] = [:], isBase: [Bool]? = nil) throws -> TensorMergeInput {
        let type = try MergeRegistry.method(named: method)
        let modelParameters = try models.indices.map { i in
            try MergeParameters.resolve(weights.map { ["weight": .number($0[i])] } ?? [:], definitions: type.modelParameters,
                                        tensor: "t", layerPosition: 0, method: method, scope: "model")
        }
        let global = try MergeParameters.resolve(parameters, definitions: type.globalParameters, tensor: "t", layerPosition: 0,
                                                 method: method, scope: "global")
        return TensorMergeInput(name: "t", shape: shape ?? [models[0].count], base: base, models: models, isBaseModel: isBase,
                                modelParameters: modelParameters, parameters: global)
    }

    static func merge(_ method: String, base: [Float]? = nil, models: [[Float]], shape: [Int]? = nil, weights: [Double]? = nil,
                      parameters: [String: ParameterSetting] = [:], isBase: [Bool]? = nil) throws -> [Float] {
        var i = try input(method, base: base, models: models, shape: shape, weights: weights, parameters: parameters, isBase: isBase)
        return try MergeRegistry.method(named: method).init().merge(&i)
    }

    static func close(_ a: [Float], _ b: [Float], _ tolerance: Float = 1e-6) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { abs($0 - $1) <= tolerance * max(1, abs($1)) }
    }

    // MARK: nuslerp

    @Test func nuslerpNeedsExactlyTwoModels() throws {
        for count in [1, 3] {
            #expect(throws: TesseraError.self) { try Self.merge("nuslerp", models: Array(repeating: [1, 2], count: count)) }
        }
    }

    /// Perpendicular unit vectors: the great-circle point at t = w₁ / (w₀ + w₁); weights summing to ~0 give t = 0.5.
    @Test func nuslerpFollowsTheGreatCircle() throws {
        let out = try Self.merge("nuslerp", models: [[1, 0], [0, 1]], weights: [1, 2])
        let t = 2.0 / 3.0
        #expect(Self.close(out, [Float(cos(t * .pi / 2)), Float(sin(t * .pi / 2))]))
        let half = try Self.merge("nuslerp", models: [[1, 0], [0, 1]], weights: [1, -1])
        #expect(Self.close(half, [Float(0.5.squareRoot()), Float(0.5.squareRoot())]))
    }

    /// Colinear vectors are interpolated linearly (no division by sin θ = 0). [1, 2, 3] and [2, 4, 6] are not colinear
    /// to float32: their cos θ rounds below 1 and the spherical formula gives mergekit's (torch 2.13's) values.
    @Test func nuslerpColinearIsLinear() throws {
        #expect(try Self.merge("nuslerp", models: [[1, 0, 0, 0], [3, 0, 0, 0]], weights: [1, 1]) == [2, 0, 0, 0])
        let out = try Self.merge("nuslerp", models: [[1, 2, 3], [2, 4, 6]], weights: [1, 1])
        #expect(out == [1.5000001192092896, 3.000000238418579, 4.500000476837158])
    }

    /// With a base the task vectors are interpolated and added back; rows are separate spheres without flatten,
    /// columns with row_wise, and a 1-D tensor is one vector whatever the layout.
    @Test func nuslerpLayouts() throws {
        let base: [Float] = [1, 1, 1, 1]
        let withBase = try Self.merge("nuslerp", base: base, models: [[2, 1, 1, 1], [1, 2, 1, 1]], weights: [1, 1])
        let plain = try Self.merge("nuslerp", models: [[1, 0, 0, 0], [0, 1, 0, 0]], weights: [1, 1])
        #expect(Self.close(withBase, zip(plain, base).map { $0 + $1 }))
        // [[1, 0], [0, 1]] vs [[0, 1], [1, 0]]: each row is a perpendicular pair.
        let a: [Float] = [1, 0, 0, 1], b: [Float] = [0, 1, 1, 0]
        let rows = try Self.merge("nuslerp", models: [a, b], shape: [2, 2], weights: [1, 1], parameters: ["nuslerp_flatten": .bool(false)])
        let s = Float(0.5.squareRoot())
        #expect(Self.close(rows, [s, s, s, s]))
        // Columns of [[1, 1], [0, 0]] and [[1, -1], [0, 0]]: column 0 is colinear, column 1 antipodal... (1,0) vs (-1,0).
        let cols = try Self.merge("nuslerp", models: [[1, 1, 0, 0], [1, -1, 0, 0]], shape: [2, 2], weights: [1, 1],
                                  parameters: ["nuslerp_flatten": .bool(false), "nuslerp_row_wise": .bool(true)])
        #expect(cols[0] == 1 && cols[2] == 0)
        let oneD = try Self.merge("nuslerp", models: [[3, 0], [0, 4]], weights: [1, 3], parameters: ["nuslerp_flatten": .bool(false)])
        let flat = try Self.merge("nuslerp", models: [[3, 0], [0, 4]], weights: [1, 3])
        #expect(oneD == flat)
    }

    // MARK: multislerp

    @Test func multislerpOneModelIsReturnedAsItIs() throws {
        let out = try Self.merge("multislerp", base: [9, 9], models: [[1, 2]], weights: [0.3])
        #expect(out == [1, 2])
    }

    /// Antipodal pair with equal weights: the mean vanishes and mergekit falls back to w₀v₀ + w₁v₁; three points
    /// that cancel are an error.
    @Test func multislerpCancellingPoints() throws {
        let pair = try Self.merge("multislerp", models: [[1, 2], [-1, -2]], weights: [1, 1])
        #expect(pair == [0, 0])
        let s3 = Float(3).squareRoot() / 2
        #expect(throws: TesseraError.self) {
            try Self.merge("multislerp", models: [[1, 0], [-0.5, s3], [-0.5, -s3]], weights: [1, 1, 1])
        }
    }

    /// Equal-norm points: the result lies on their sphere, between them; unnormalised weights scale the norm.
    @Test func multislerpStaysOnTheSphere() throws {
        let out = try Self.merge("multislerp", models: [[2, 0, 0], [0, 2, 0], [0, 0, 2]], weights: [1, 1, 1])
        let norm = out.reduce(0) { $0 + $1 * $1 }.squareRoot()
        #expect(abs(norm - 2) < 1e-5)
        #expect(abs(out[0] - out[1]) < 1e-6 && abs(out[1] - out[2]) < 1e-6)
        let raw = try Self.merge("multislerp", models: [[2, 0], [0, 2]], weights: [1, 1], parameters: ["normalize_weights": .bool(false)])
        #expect(abs(raw.reduce(0) { $0 + $1 * $1 }.squareRoot() - 4) < 1e-4)
    }

    // MARK: karcher

    @Test func karcherOfIdenticalModelsIsTheModel() throws {
        let m: [Float] = [0.5, -1, 2, 0.25]
        let out = try Self.merge("karcher", models: [m, m, m])
        #expect(Self.close(out, m))
    }

    /// Zero tensors are left out of the mean but still count in the norm average; all zero gives zero.
    @Test func karcherZeroTensors() throws {
        #expect(try Self.merge("karcher", models: [[0, 0], [0, 0]]) == [0, 0])
        let out = try Self.merge("karcher", models: [[3, 4], [0, 0]])
        #expect(Self.close(out, [1.5, 2]))
    }

    /// Two perpendicular unit vectors: the Karcher mean is their bisector; max_iter 0 stops at the normalised average.
    @Test func karcherBisects() throws {
        let out = try Self.merge("karcher", models: [[1, 0], [0, 1]])
        let s = Float(0.5.squareRoot())
        #expect(Self.close(out, [s, s]))
        let start = try Self.merge("karcher", models: [[1, 0], [0, 1]], parameters: ["max_iter": .number(0)])
        #expect(Self.close(start, [s, s]))
        #expect(throws: TesseraError.self) { try Self.merge("karcher", models: [[1, 0], [0, 1]], parameters: ["max_iter": .number(-1)]) }
        #expect(throws: TesseraError.self) { try Self.merge("karcher", models: [[1, 0], [0, 1]], parameters: ["max_iter": .number(2.5)]) }
    }

    /// A base that is not listed joins the models, after them (mergekit appends it); listed, it counts once.
    @Test func karcherCountsTheBase() throws {
        let base: [Float] = [0, 2], a: [Float] = [2, 0], b: [Float] = [2, 0]
        let appended = try Self.merge("karcher", base: base, models: [a, b])
        let explicit = try Self.merge("karcher", models: [a, b, base])
        #expect(appended == explicit)
        let listed = try Self.merge("karcher", base: base, models: [a, base], isBase: [false, true])
        #expect(listed == (try Self.merge("karcher", models: [a, base])))
    }

    // MARK: configs

    /// mergekit's parameter names, through a config and the driver (base optional for all three).
    @Test func configsWithMergekitNames() throws {
        let a = try MemorySource("a", floats: [("t", [2, 2], [1, 0, 0, 1])]), b = try MemorySource("b", floats: [("t", [2, 2], [0, 1, 1, 0])])
        let sources: [String: TensorSource] = ["a": a, "b": b]
        for yaml in [
            "merge_method: nuslerp\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\nparameters:\n  nuslerp_flatten: false\n  nuslerp_row_wise: true\n",
            "merge_method: multislerp\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 2}\nparameters: {normalize_weights: true, eps: 1e-7}\n",
            "merge_method: karcher\nmodels:\n  - model: a\n  - model: b\nparameters: {max_iter: 20, tol: 1e-6}\n",
            "merge_method: multislerp\nbase_model: a\nmodels:\n  - model: b\n    parameters: {weight: 1}\n",
        ] {
            let plan = try MergeConfig.parse(yaml: yaml).plan { try #require(sources[$0]) }
            let out = try runMerge(plan)
            #expect(out["t"]?.shape == [2, 2], "\(yaml)")
        }
        #expect(throws: TesseraError.self) {
            try runMerge(try MergeConfig.parse(yaml: "merge_method: karcher\nmodels:\n  - model: a\nparameters: {weight: 1}\n").plan { try #require(sources[$0]) })
        }
    }
}
