import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// GGUF reading and dequantisation against values the `gguf` Python package computed (scripts/make_engine_fixtures.py).
@Suite struct GGUFTests {
    let file: GGUFFile

    init() throws {
        file = try GGUFFile(path: EngineFixtures.fixtures + "/quant_types.gguf")
    }

    @Test func metadataOfEveryType() throws {
        #expect(file.version == 3)
        #expect(file["general.architecture"] == .string("test"))
        #expect(file["test.u8"] == .uint8(200))
        #expect(file["test.i8"] == .int8(-100))
        #expect(file["test.u16"] == .uint16(60000))
        #expect(file["test.i16"] == .int16(-30000))
        #expect(file["test.u32"] == .uint32(4_000_000_000))
        #expect(file["test.i32"] == .int32(-2_000_000_000))
        #expect(file["test.f32"] == .float32(0.25))
        #expect(file["test.u64"] == .uint64(10_000_000_000))
        #expect(file["test.i64"] == .int64(-10_000_000_000))
        #expect(file["test.f64"] == .float64(-1.5e-7))
        #expect(file["test.bool"] == .bool(true))
        #expect(file["test.string"] == .string("héllo wörld"))
        #expect(file["test.array_i32"] == .array([.int32(1), .int32(-2), .int32(3)]))
        #expect(file["test.array_str"] == .array([.string("a"), .string("bc"), .string("")]))
        #expect(file.metadata.contains { $0.0 == "test.string" && $0.1 == "héllo wörld" })
    }

    @Test(arguments: ["w_q4_0", "w_q4_1", "w_q5_0", "w_q8_0", "w_q4_k", "w_q6_k", "w_f32", "w_f16", "w_bf16"])
    func dequantisationMatchesGGUFPackage(name: String) throws {
        let expected = try SafetensorsFile(path: EngineFixtures.fixtures + "/quant_types_expected.safetensors")
        let reference = try expected.tensor(name)
        #expect(file.tensorInfo(name)?.shape == reference.shape)
        #expect(file.tensorInfo(name)?.dtype == .f32)
        let values = try file.floats(name)
        let want = try reference.floats()
        #expect(values.count == want.count)
        #expect(EngineFixtures.maxAbsDifference(values, want) == 0, "\(name) differs from gguf.quants.dequantize")
        // Served as an F32 RawTensor too.
        let raw = try file.rawTensor(name)
        #expect(raw.dtype == .f32 && raw.shape == reference.shape)
        #expect(try raw.floats() == values)
    }

    @Test func tensorTypesAreReported() throws {
        #expect(file.info("w_q4_k")?.type == .q4_K)
        #expect(file.info("w_q6_k")?.type == .q6_K)
        #expect(file.info("w_q4_k")?.shape == [3, 512])
        #expect(file.info("w_q5_1")?.type == .q5_1)
    }

    @Test func unsupportedQuantTypeNamesTensorAndType() throws {
        do {
            _ = try file.floats("w_q5_1")
            Issue.record("reading a Q5_1 tensor should fail")
        } catch let e as TesseraError {
            #expect(e.code == .unsupported)
            #expect(e.message.contains("w_q5_1") && e.message.contains("Q5_1"))
        }
    }

    /// GGUF v2 has v3's layout (v3 only adds big-endian files); v1 (32-bit counts) is refused. A truncated file is
    /// refused at open, naming the tensor that does not fit.
    @Test func versionsAndTruncation() throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: EngineFixtures.fixtures + "/quant_types.gguf")))
        let directory = try EngineFixtures.temporaryDirectory("gguf")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        bytes[4] = 2
        try Data(bytes).write(to: URL(fileURLWithPath: directory + "/v2.gguf"))
        let v2 = try GGUFFile(path: directory + "/v2.gguf")
        #expect(v2.version == 2 && v2["test.string"] == .string("héllo wörld"))
        #expect(try v2.floats("w_q6_k") == file.floats("w_q6_k"))
        bytes[4] = 1
        try Data(bytes).write(to: URL(fileURLWithPath: directory + "/v1.gguf"))
        #expect(throws: TesseraError.self) { _ = try GGUFFile(path: directory + "/v1.gguf") }
        bytes[4] = 3
        try Data(bytes.dropLast(100)).write(to: URL(fileURLWithPath: directory + "/cut.gguf"))
        do {
            _ = try GGUFFile(path: directory + "/cut.gguf")
            Issue.record("a truncated GGUF should be refused")
        } catch let e as TesseraError {
            #expect(e.message.contains("extends past the end"))
        }
    }

    @Test func notAGGUFFile() throws {
        #expect(throws: TesseraError.self) {
            _ = try GGUFFile(path: EngineFixtures.fixtures + "/tiny_gpt2/config.json")
        }
    }
}
