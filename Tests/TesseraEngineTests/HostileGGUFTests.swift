import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraIO

/// A GGUF file written byte by byte, so that tests can put any lie in any field.
struct GGUFBytes {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func f32(_ v: Float) { u32(v.bitPattern) }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }

    /// Magic, version 3, tensor count, metadata count.
    static func header(tensors: UInt64, metadata: UInt64) -> GGUFBytes {
        var g = GGUFBytes()
        g.bytes += Array("GGUF".utf8)
        g.u32(3)
        g.u64(tensors)
        g.u64(metadata)
        return g
    }

    /// A tensor info: name, dimensions (GGUF order, innermost first), ggml type, data offset.
    mutating func tensor(_ name: String, dims: [UInt64], type: UInt32 = 0, offset: UInt64) {
        string(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type)
        u64(offset)
    }

    mutating func padTo(_ alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }

    func write(_ directory: String, _ name: String = "hostile.gguf") throws -> String {
        let path = directory + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }
}

@Suite final class HostileGGUFTests {
    let directory: String

    init() throws { directory = try EngineFixtures.temporaryDirectory("hostile-gguf") }
    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// Opening `g` fails with one invalid-checkpoint error whose message contains every word of `words`.
    func expectRefused(_ g: GGUFBytes, _ words: [String], code: TesseraError.Code = .invalidCheckpoint,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = try g.write(directory)
        do {
            let file = try GGUFFile(path: path)
            Issue.record("accepted a hostile GGUF with \(file.tensorInfos.count) tensors", sourceLocation: sourceLocation)
        } catch let e as TesseraError {
            #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
            #expect(e.message.hasPrefix(path), "\(e)", sourceLocation: sourceLocation)
            for w in words { #expect(e.message.contains(w), "'\(w)' not in: \(e.message)", sourceLocation: sourceLocation) }
            #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
        }
    }

    /// Two F32 tensors laid out as llama.cpp writes them: `a` [4] at 0, `b` [2, 3] at 32 (16 bytes padded to 32).
    func wellFormed(bOffset: UInt64 = 32, alignment: UInt32? = nil, aType: UInt32 = 0) -> GGUFBytes {
        var g = GGUFBytes.header(tensors: 2, metadata: alignment == nil ? 1 : 2)
        g.string("general.name"); g.u32(8); g.string("hostile")
        if let alignment { g.string("general.alignment"); g.u32(4); g.u32(alignment) }
        g.tensor("a", dims: [4], type: aType, offset: 0)
        g.tensor("b", dims: [3, 2], offset: bOffset)
        g.padTo(Int(alignment ?? 32))
        for v in 0..<4 { g.f32(Float(v)) }
        g.padTo(Int(alignment ?? 32))
        for v in 0..<6 { g.f32(Float(10 + v)) }
        return g
    }

    @Test func theHandWrittenLayoutIsRead() throws {
        let file = try GGUFFile(path: try wellFormed().write(directory))
        #expect(file["general.name"] == .string("hostile"))
        #expect(try file.floats("a") == [0, 1, 2, 3])
        #expect(file.info("b")?.shape == [2, 3])
        #expect(try file.floats("b") == [10, 11, 12, 13, 14, 15])
        let aligned = try GGUFFile(path: try wellFormed(bOffset: 16, alignment: 16).write(directory, "a16.gguf"))
        #expect(try aligned.floats("b") == [10, 11, 12, 13, 14, 15])
    }

    @Test("an offset of 2^63-1 is refused (it used to wrap dataStart + offset and crash)")
    func offsetNearIntMax() throws {
        try expectRefused(wellFormed(bOffset: UInt64(Int64.max)), ["'b'", "offset 9223372036854775807", "expected 32"])
        try expectRefused(wellFormed(bOffset: UInt64.max), ["'b'", "offset 18446744073709551615"])
    }

    @Test("a tensor of a type the engine cannot dequantise is checked against the file too")
    func unsupportedTypeExtentIsChecked() throws {
        var g = GGUFBytes.header(tensors: 1, metadata: 0)
        g.tensor("big", dims: [256, 1 << 20], type: 13, offset: 0)  // Q5_K: 176 MiB of data in a tiny file
        g.padTo(32)
        g.bytes += [UInt8](repeating: 0, count: 176)
        try expectRefused(g, ["'big'", "extends past the end"])
    }

    @Test("tensor data that overlap, leave gaps or are misaligned are refused, as llama.cpp refuses them")
    func overlapGapMisalignment() throws {
        try expectRefused(wellFormed(bOffset: 0), ["'b'", "overlaps"])
        try expectRefused(wellFormed(bOffset: 8), ["'b'", "not aligned to 32"])
        try expectRefused(wellFormed(bOffset: 64), ["'b'", "gap"])
        try expectRefused(wellFormed(bOffset: 16, alignment: 24), ["general.alignment 24 is not a power of two"])
        var g = GGUFBytes.header(tensors: 0, metadata: 1)
        g.string("general.alignment"); g.u32(10); g.u64(32)
        try expectRefused(g, ["general.alignment must be a uint32", "uint64"])
        var zero = GGUFBytes.header(tensors: 0, metadata: 1)
        zero.string("general.alignment"); zero.u32(4); zero.u32(0)
        try expectRefused(zero, ["general.alignment 0"])
    }

    @Test("100,000 nested arrays are refused at the first nesting, without recursion")
    func deeplyNestedArrays() throws {
        var g = GGUFBytes.header(tensors: 0, metadata: 1)
        g.string("evil.nested")
        g.u32(9)
        for _ in 0..<100_000 { g.u32(9); g.u64(1) }
        g.u32(0); g.u64(1); g.u8(1)
        try expectRefused(g, ["'evil.nested'", "array of arrays"])
    }

    @Test("array lengths, string lengths and counts larger than the file are refused before any allocation")
    func lyingLengths() throws {
        var array = GGUFBytes.header(tensors: 0, metadata: 1)
        array.string("evil.array"); array.u32(9); array.u32(4); array.u64(1 << 28)
        array.bytes += [UInt8](repeating: 0, count: 64)
        try expectRefused(array, ["'evil.array'", "268435456", "64 bytes left"])

        var strings = GGUFBytes.header(tensors: 0, metadata: 1)
        strings.string("evil.strings"); strings.u32(9); strings.u32(8); strings.u64(1 << 40)
        try expectRefused(strings, ["'evil.strings'"])

        var string = GGUFBytes.header(tensors: 0, metadata: 1)
        string.string("evil.string"); string.u32(8); string.u64(UInt64.max)
        try expectRefused(string, ["metadata 'evil.string'", "18446744073709551615 bytes"])

        try expectRefused(GGUFBytes.header(tensors: 1 << 40, metadata: 0), ["tensor count 1099511627776"])
        try expectRefused(GGUFBytes.header(tensors: 0, metadata: UInt64.max), ["metadata count"])

        var truncated = GGUFBytes.header(tensors: 0, metadata: 1)
        truncated.string("k"); truncated.u32(4)
        try expectRefused(truncated, ["ends early"])
    }

    @Test("keys, names, dimensions and types llama.cpp refuses")
    func malformedInfos() throws {
        var emptyKey = GGUFBytes.header(tensors: 0, metadata: 1)
        emptyKey.string(""); emptyKey.u32(4); emptyKey.u32(1)
        try expectRefused(emptyKey, ["empty key"])

        var duplicateKey = GGUFBytes.header(tensors: 0, metadata: 2)
        for v: UInt32 in [1, 2] { duplicateKey.string("general.x"); duplicateKey.u32(4); duplicateKey.u32(v) }
        try expectRefused(duplicateKey, ["'general.x' appears twice"])

        var unknownValue = GGUFBytes.header(tensors: 0, metadata: 1)
        unknownValue.string("general.x"); unknownValue.u32(13); unknownValue.u32(0)
        try expectRefused(unknownValue, ["'general.x'", "unknown value type 13"])

        func oneTensor(_ name: String = "t", dims: [UInt64], type: UInt32 = 0, dataBytes: Int = 64) -> GGUFBytes {
            var g = GGUFBytes.header(tensors: 1, metadata: 0)
            g.tensor(name, dims: dims, type: type, offset: 0)
            g.padTo(32)
            g.bytes += [UInt8](repeating: 0, count: dataBytes)
            return g
        }
        try expectRefused(oneTensor(dims: [1, 1, 1, 1, 1]), ["'t'", "5 dimensions"])
        try expectRefused(oneTensor(dims: [1 << 63]), ["'t'", "negative dimension"])
        try expectRefused(oneTensor(dims: [1 << 32, 1 << 32]), ["'t'", "overflows"])
        try expectRefused(oneTensor(dims: [1 << 62, 4]), ["'t'", "overflows"])
        try expectRefused(oneTensor(dims: [16], type: 4), ["'t'", "unknown ggml type 4"])
        try expectRefused(oneTensor(dims: [16], type: 1000), ["'t'", "unknown ggml type 1000"])
        try expectRefused(oneTensor(dims: [16, 2], type: 8), ["'t'", "rows of 16 elements", "Q8_0 blocks of 32"])
        try expectRefused(oneTensor(String(repeating: "n", count: 64), dims: [4]), ["64 bytes long"])

        var twice = GGUFBytes.header(tensors: 2, metadata: 0)
        twice.tensor("t", dims: [8], offset: 0)
        twice.tensor("t", dims: [8], offset: 32)
        twice.padTo(32)
        twice.bytes += [UInt8](repeating: 0, count: 64)
        try expectRefused(twice, ["'t' appears twice"])

        // Empty and scalar tensors are legal (zero bytes, one element).
        var legal = GGUFBytes.header(tensors: 2, metadata: 0)
        legal.tensor("empty", dims: [0, 7], offset: 0)
        legal.tensor("scalar", dims: [], offset: 0)
        legal.padTo(32)
        legal.f32(2.5)
        let file = try GGUFFile(path: try legal.write(directory, "legal.gguf"))
        #expect(try file.floats("empty").isEmpty)
        #expect(try file.floats("scalar") == [2.5])
    }

    @Test("a missing file, a directory and a FIFO give one line each, without hanging")
    func notAFile() throws {
        func message(_ path: String) -> String? {
            do { _ = try GGUFFile(path: path); return nil } catch let e as TesseraError { return e.description } catch { return "\(error)" }
        }
        let missing = message(directory + "/missing.gguf")
        #expect(missing?.contains("no such file") == true)
        #expect(missing?.contains("NSCocoaErrorDomain") == false)
        #expect(message(directory)?.contains("a directory") == true)
        let fifo = directory + "/pipe.gguf"
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(message(fifo)?.contains("not a regular file") == true)
    }

    @Test("the model loader (tessera eval x.gguf) reports the hostile offset instead of crashing")
    func loaderRefusesHostileOffset() throws {
        let path = try wellFormed(bOffset: UInt64(Int64.max)).write(directory, "eval.gguf")
        #expect(throws: TesseraError.self) { _ = try ModelLoader.load(path: path) }
    }
}
