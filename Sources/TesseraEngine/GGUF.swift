import Foundation
import TesseraCore

/// A GGUF metadata value (GGUF v2/v3 value types).
public indirect enum GGUFValue: Sendable, Equatable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array([GGUFValue])

    public var intValue: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return Int(exactly: v)
        case let .int64(v): return Int(v)
        default: return nil
        }
    }

    public var doubleValue: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return intValue.map(Double.init)
        }
    }

    public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
    public var arrayValue: [GGUFValue]? { if case let .array(a) = self { return a }; return nil }
    public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }

    /// Text form for `TensorSource.metadata`; long arrays (vocabularies) are summarised.
    public var description: String {
        switch self {
        case let .string(s): return s
        case let .bool(b): return b ? "true" : "false"
        case let .float32(v): return "\(v)"
        case let .float64(v): return "\(v)"
        case let .array(a):
            if a.count > 16 { return "[\(a.count) values]" }
            return "[" + a.map(\.description).joined(separator: ", ") + "]"
        default: return intValue.map(String.init) ?? "?"
        }
    }
}

/// GGML tensor element types as numbered in the GGUF format (ggml.h `enum ggml_type`).
public struct GGMLType: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let f32 = GGMLType(rawValue: 0), f16 = GGMLType(rawValue: 1)
    public static let q4_0 = GGMLType(rawValue: 2), q4_1 = GGMLType(rawValue: 3)
    public static let q5_0 = GGMLType(rawValue: 6), q5_1 = GGMLType(rawValue: 7)
    public static let q8_0 = GGMLType(rawValue: 8), q8_1 = GGMLType(rawValue: 9)
    public static let q2_K = GGMLType(rawValue: 10), q3_K = GGMLType(rawValue: 11)
    public static let q4_K = GGMLType(rawValue: 12), q5_K = GGMLType(rawValue: 13)
    public static let q6_K = GGMLType(rawValue: 14), q8_K = GGMLType(rawValue: 15)
    public static let bf16 = GGMLType(rawValue: 30)

    private static let names: [UInt32: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
        11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
        19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
        27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
    ]
    public var description: String { Self.names[rawValue] ?? "type \(rawValue)" }

    /// (elements per block, bytes per block) for the types this reader can dequantise.
    var supportedBlock: (elements: Int, bytes: Int)? {
        switch rawValue {
        case 0: return (1, 4)
        case 1, 30: return (1, 2)
        case 2: return (32, 18)     // f16 d, 16 bytes of nibbles
        case 3: return (32, 20)     // f16 d, f16 m, 16 bytes of nibbles
        case 6: return (32, 22)     // f16 d, 4 bytes of high bits, 16 bytes of nibbles
        case 8: return (32, 34)     // f16 d, 32 int8
        case 12: return (256, 144)  // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        case 14: return (256, 210)  // 128 bytes low nibbles, 64 bytes high 2-bits, 16 int8 scales, f16 d
        default: return nil
        }
    }

    public var isSupported: Bool { supportedBlock != nil }
}

/// One tensor's entry in a GGUF file. `shape` is row-major (PyTorch order): GGUF stores dimensions innermost first,
/// so this is the reverse of the file's `ne` list.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    public let shape: [Int]
    public let type: GGMLType
    /// Offset of the data from the start of the file.
    public let fileOffset: Int
    public let elementCount: Int
}

/// A GGUF (v2/v3) file, memory-mapped: metadata, tensor infos, and tensors dequantised to float32 on request.
///
/// `final class @unchecked Sendable`: every stored property is immutable after `init` (the mapped `Data` is only read).
public final class GGUFFile: TensorSource, @unchecked Sendable {
    public let path: String
    public let version: UInt32
    /// Metadata in file order.
    public let metadataEntries: [(key: String, value: GGUFValue)]
    public let tensorInfos: [GGUFTensorInfo]
    public let alignment: Int
    private let data: Data
    private let keyIndex: [String: Int]
    private let tensorIndex: [String: Int]

    public init(path: String) throws {
        self.path = path
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw TesseraError(.io, "\(path): cannot read the file", hint: "check that it exists and is readable", underlying: error)
        }
        var r = GGUFByteReader(data: data, path: path)
        let magic = try r.u32()
        guard magic == 0x4655_4747 else {  // "GGUF" little-endian
            throw TesseraError(.invalidCheckpoint, "\(path): not a GGUF file (bad magic)", hint: "pass a .gguf file")
        }
        version = try r.u32()
        guard version == 2 || version == 3 else {
            throw TesseraError(.unsupported, "\(path): GGUF version \(version) is not supported",
                               hint: "only GGUF v2 and v3 are read; re-convert with a recent llama.cpp")
        }
        let tensorCount = try r.count(limit: 1 << 24, what: "tensor count")
        let kvCount = try r.count(limit: 1 << 24, what: "metadata count")
        var entries: [(key: String, value: GGUFValue)] = []
        entries.reserveCapacity(kvCount)
        var keys: [String: Int] = [:]
        for _ in 0..<kvCount {
            let key = try r.string()
            let type = try r.u32()
            let value = try r.value(type: type)
            keys[key] = entries.count
            entries.append((key, value))
        }
        metadataEntries = entries
        keyIndex = keys
        if let a = keys["general.alignment"].flatMap({ entries[$0].value.intValue }) {
            guard a > 0, a & (a - 1) == 0 else {
                throw TesseraError(.invalidCheckpoint, "\(path): general.alignment \(a) is not a power of two")
            }
            alignment = a
        } else {
            alignment = 32
        }
        var raw: [(String, [Int], GGMLType, Int)] = []
        raw.reserveCapacity(tensorCount)
        for _ in 0..<tensorCount {
            let name = try r.string()
            let nDims = Int(try r.u32())
            guard nDims <= 8 else { throw TesseraError(.invalidCheckpoint, "\(path): tensor '\(name)' has \(nDims) dimensions") }
            var ne: [Int] = []
            for _ in 0..<nDims { ne.append(try r.count(limit: 1 << 40, what: "dimension of '\(name)'")) }
            let type = GGMLType(rawValue: try r.u32())
            let offset = try r.count(limit: Int.max, what: "offset of '\(name)'")
            raw.append((name, ne.reversed(), type, offset))
        }
        let dataStart = (r.offset + alignment - 1) / alignment * alignment
        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for (name, shape, type, offset) in raw {
            guard let n = elementCount(shape) else {
                throw TesseraError(.invalidCheckpoint, "\(path): tensor '\(name)' has an impossible shape \(shape)")
            }
            let info = GGUFTensorInfo(name: name, shape: shape, type: type, fileOffset: dataStart + offset, elementCount: n)
            if let block = type.supportedBlock {
                guard n % block.elements == 0 else {
                    throw TesseraError(.invalidCheckpoint, "\(path): tensor '\(name)' of \(n) elements is not a whole number of \(type) blocks")
                }
                let end = info.fileOffset + n / block.elements * block.bytes
                guard end <= data.count else {
                    throw TesseraError(.invalidCheckpoint, "\(path): tensor '\(name)' extends past the end of the file",
                                       hint: "the file is truncated; download it again")
                }
            }
            index[name] = infos.count
            infos.append(info)
        }
        tensorInfos = infos
        tensorIndex = index
    }

    /// A metadata value by key.
    public subscript(key: String) -> GGUFValue? { keyIndex[key].map { metadataEntries[$0].value } }

    public func info(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensorInfos[$0] } }

    /// Throws a clear error if the tensor is absent or stored in a type this reader cannot dequantise.
    /// Model loaders call this for every weight before computing anything.
    public func requireSupported(_ name: String) throws {
        guard let i = info(name) else {
            throw TesseraError(.notFound, "\(path): no tensor named '\(name)'", hint: "`tessera ls` lists the tensors")
        }
        guard i.type.isSupported else {
            throw TesseraError(.unsupported, "\(path): tensor '\(name)' is stored as \(i.type), which the engine cannot dequantise",
                               hint: "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K; re-quantise the GGUF with one of them")
        }
    }

    /// The tensor dequantised to float32, row-major in `info(name).shape`.
    public func dequantized(_ name: String) throws -> [Float] {
        try requireSupported(name)
        let i = info(name)!
        var out = [Float](repeating: 0, count: i.elementCount)
        data.withUnsafeBytes { (file: UnsafeRawBufferPointer) in
            out.withUnsafeMutableBufferPointer { dst in
                GGMLDequantize.run(type: i.type, src: file.baseAddress! + i.fileOffset, dst: dst.baseAddress!, count: i.elementCount)
            }
        }
        return out
    }

    /// Calls `body` with the tensor's bytes exactly as stored (its GGML blocks), for kernels that compute on the
    /// encoded form. The bytes are valid only during the call.
    public func withEncodedBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try requireSupported(name)
        let i = info(name)!
        let block = i.type.supportedBlock!
        let count = i.elementCount / block.elements * block.bytes
        return try data.withUnsafeBytes { file in
            try body(UnsafeRawBufferPointer(rebasing: file[i.fileOffset..<(i.fileOffset + count)]))
        }
    }

    // MARK: TensorSource

    public var sourceName: String { path }
    public var tensorNames: [String] { tensorInfos.map(\.name) }
    /// Tensors are served dequantised, so every supported tensor reports F32.
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { info(name).map { (DType.f32, $0.shape) } }
    public func rawTensor(_ name: String) throws -> RawTensor {
        let values = try dequantized(name)
        return try RawTensor(floats: values, shape: info(name)!.shape, dtype: .f32)
    }
    public func floats(_ name: String) throws -> [Float] { try dequantized(name) }
    public var metadata: [(String, String)] { metadataEntries.map { ($0.key, $0.value.description) } }
}

/// Sequential little-endian reader over the mapped file with bounds checks.
private struct GGUFByteReader {
    let data: Data
    let path: String
    var offset = 0

    mutating func bytes(_ n: Int) throws -> Data {
        guard n >= 0, offset + n <= data.count else {
            throw TesseraError(.invalidCheckpoint, "\(path): GGUF header ends early at byte \(offset)", hint: "the file is truncated or not GGUF")
        }
        let start = data.startIndex + offset
        offset += n
        return data[start..<(start + n)]
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let b = try bytes(MemoryLayout<T>.size)
        return b.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    mutating func u32() throws -> UInt32 { try load(UInt32.self) }

    mutating func count(limit: Int, what: String) throws -> Int {
        let v = try load(UInt64.self)
        guard v <= UInt64(limit) else { throw TesseraError(.invalidCheckpoint, "\(path): implausible \(what) \(v)") }
        return Int(v)
    }

    mutating func string() throws -> String {
        let n = try count(limit: 1 << 30, what: "string length")
        return String(decoding: try bytes(n), as: UTF8.self)
    }

    mutating func value(type: UInt32) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try load(UInt8.self))
        case 1: return .int8(try load(Int8.self))
        case 2: return .uint16(try load(UInt16.self))
        case 3: return .int16(try load(Int16.self))
        case 4: return .uint32(try load(UInt32.self))
        case 5: return .int32(try load(Int32.self))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self)))
        case 7: return .bool(try load(UInt8.self) != 0)
        case 8: return .string(try string())
        case 9:
            let elementType = try u32()
            let n = try count(limit: 1 << 28, what: "array length")
            var a: [GGUFValue] = []
            a.reserveCapacity(n)
            for _ in 0..<n { a.append(try value(type: elementType)) }
            return .array(a)
        case 10: return .uint64(try load(UInt64.self))
        case 11: return .int64(try load(Int64.self))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self)))
        default:
            throw TesseraError(.invalidCheckpoint, "\(path): unknown GGUF metadata value type \(type) at byte \(offset)")
        }
    }
}
