import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraMath
@testable import TesseraMerge
import TesseraTestSupport

/// The merge dtype as mergekit 0.1.5 uses it: the dtype the merge computes in, op by op. Expected values are
/// mergekit's own outputs (Tests/Fixtures/mergekit-dtype, written by scripts/make_mergekit_dtype_fixtures.py, which
/// runs mergekit's methods on inputs stored in float32, bfloat16 and float16).
@Suite struct MergeDTypeTests {
    static let dir = PackagePaths.fixtures + "/mergekit-dtype"
    static let dtypes: [(name: String, dtype: DType)] = [("float32", .f32), ("bfloat16", .bf16), ("float16", .f16)]
    static let shapes = ["matrix", "vector", "cube"]

    struct Case {
        var name: String
        var method: String
        var models: [String]
        var base: String?
        var parameters: [String: ParameterSetting]
        var modelParameters: [String: [Double]]
    }

    static let boolParameters: Set = ["normalize", "rescale", "nuslerp_flatten", "nuslerp_row_wise", "normalize_weights"]

    static func cases() throws -> [Case] {
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/cases.json"))
        let root = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let list = try #require(root["cases"] as? [[String: Any]])
        return try list.map { c in
            var parameters: [String: ParameterSetting] = [:]
            for (k, v) in c["parameters"] as? [String: Any] ?? [:] {
                if Self.boolParameters.contains(k), let b = v as? Bool { parameters[k] = .bool(b) }
                else if let d = v as? Double { parameters[k] = .number(d) }
            }
            return Case(name: try #require(c["case"] as? String), method: try #require(c["method"] as? String),
                        models: try #require(c["models"] as? [String]), base: c["base"] as? String,
                        parameters: parameters, modelParameters: c["model_parameters"] as? [String: [Double]] ?? [:])
        }
    }

    /// Runs one case on one shape the way the driver would hand it to the method.
    static func merge(_ c: Case, shape: String, dtype: DType, inputs: SafetensorsFile) throws -> [Float] {
        let type = try MergeRegistry.method(named: c.method)
        let name = "\(shape).weight"
        let isBase = c.models.map { $0 == c.base }
        var nonBase = 0
        var modelParameters: [MergeParameters] = []
        for (i, _) in c.models.enumerated() {
            var settings: [String: ParameterSetting] = [:]
            if !isBase[i] || c.method == "linear" {
                for (k, values) in c.modelParameters { settings[k] = .number(values[nonBase]) }
            }
            if !isBase[i] { nonBase += 1 }
            modelParameters.append(try MergeParameters.resolve(settings, definitions: type.modelParameters, tensor: name,
                                                               layerPosition: 0, method: c.method, scope: "model"))
        }
        let parameters = try MergeParameters.resolve(c.parameters, definitions: type.globalParameters, tensor: name,
                                                     layerPosition: 0, method: c.method, scope: "global")
        var input = TensorMergeInput(name: name, shape: try #require(inputs.info("\(shape).base")).shape,
                                     base: c.base.map { try? inputs.floats("\(shape).\($0)") } ?? nil,
                                     models: try c.models.map { try inputs.floats("\(shape).\($0)") }, isBaseModel: isBase,
                                     modelParameters: modelParameters, parameters: parameters)
        input.computeDType = dtype
        var method = type.init()
        try method.prepare(MergePreparation(tensorNames: [name], loadInput: { _ in input }))
        return try method.merge(&input)
    }

    static func bits(_ x: [Float], _ dtype: DType) -> [UInt32] {
        switch dtype {
        case .bf16: return x.map { UInt32(HalfFloat.floatToBF16($0)) }
        case .f16: return x.map { UInt32(HalfFloat.floatToF16($0)) }
        default: return x.map(\.bitPattern)
        }
    }

    /// Elements that differ from mergekit's, per case, for the methods and dtypes where mergekit's whole-tensor float32
    /// reductions (norm, dot, sum; accumulated here in double) leave an ulp of difference in the result. Everything
    /// else must be bit-exact. Entries may only shrink.
    static let knownDifferences: [String: Int] = [:]

    @Test(arguments: ["float32", "bfloat16", "float16"])
    func everyCaseMatchesMergekit(dtypeName: String) throws {
        let dtype = try #require(Self.dtypes.first { $0.name == dtypeName }).dtype
        let inputs = try SafetensorsFile(path: Self.dir + "/inputs.\(dtypeName).safetensors")
        let expected = try SafetensorsFile(path: Self.dir + "/expected.\(dtypeName).safetensors")
        var report: [String] = []
        for c in try Self.cases() {
            var differing = 0, total = 0
            for shape in Self.shapes {
                let got = try Self.merge(c, shape: shape, dtype: dtype, inputs: inputs)
                let want = try expected.floats("\(c.name)|\(shape)")
                #expect(got.count == want.count, "\(c.name) \(shape)")
                let g = Self.bits(got, dtype), w = Self.bits(want, dtype)
                differing += zip(g, w).filter { $0 != $1 }.count
                total += want.count
            }
            let allowed = Self.knownDifferences["\(c.name).\(dtypeName)"] ?? 0
            if differing > 0 { report.append("\(c.name).\(dtypeName): \(differing)/\(total)") }
            #expect(differing <= allowed, "\(c.name) in \(dtypeName): \(differing) of \(total) elements differ from mergekit's")
        }
        print("MergeDTypeTests \(dtypeName): " + (report.isEmpty ? "all bit-exact" : report.joined(separator: ", ")))
    }
}
