import Foundation
import TesseraCore
import TesseraIO

/// A GGUF metadata value (GGUF v2/v3 value types).
public enum GGUFValue: Sendable, Equatable, CustomStringConvertible {
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

    /// The GGUF name of the value's type, for messages.
    public var typeName: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .uint16: return "uint16"
        case .int16: return "int16"
        case .uint32: return "uint32"
        case .int32: return "int32"
        case .uint64: return "uint64"
        case .int64: return "int64"
        case .float32: return "float32"
        case .float64: return "float64"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        }
    }
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
        27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
    ]
    public var description: String { Self.names[rawValue] ?? "type \(rawValue)" }

    /// (elements per block, bytes per block) of every type a GGUF file may hold (ggml's type traits), so that the
    /// layout of tensors the engine cannot dequantise is checked too. Removed types (4, 5, 31-33, 36-38) have none.
    var block: (elements: Int, bytes: Int)? {
        switch rawValue {
        case 0: return (1, 4)
        case 1, 30: return (1, 2)
        case 2: return (32, 18)     // f16 d, 16 bytes of nibbles
        case 3: return (32, 20)     // f16 d, f16 m, 16 bytes of nibbles
        case 6: return (32, 22)     // f16 d, 4 bytes of high bits, 16 bytes of nibbles
        case 7: return (32, 24)
        case 8: return (32, 34)     // f16 d, 32 int8
        case 9: return (32, 36)
        case 10: return (256, 84)
        case 11: return (256, 110)
        case 12: return (256, 144)  // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        case 13: return (256, 176)
        case 14: return (256, 210)  // 128 bytes low nibbles, 64 bytes high 2-bits, 16 int8 scales, f16 d
        case 15: return (256, 292)
        case 16: return (256, 66)
        case 17: return (256, 74)
        case 18: return (256, 98)
        case 19: return (256, 50)
        case 20: return (32, 18)
        case 21: return (256, 110)
        case 22: return (256, 82)
        case 23: return (256, 136)
        case 24: return (1, 1)
        case 25: return (1, 2)
        case 26: return (1, 4)
        case 27, 28: return (1, 8)
        case 29: return (256, 56)
        case 34: return (256, 54)
        case 35: return (256, 66)
        case 39: return (32, 17)
        default: return nil
        }
    }

    /// The block layout, for the types this reader can dequantise.
    var supportedBlock: (elements: Int, bytes: Int)? {
        switch rawValue {
        case 0, 1, 30, 2, 3, 6, 8, 12, 14: return block
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
    /// Bytes of the stored data (whole blocks of `type`).
    public let byteCount: Int
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

    /// Limits beyond llama.cpp's own (which allows 2^30-element arrays): a metadata value costs memory per element,
    /// so the total is bounded well above any real vocabulary (a few hundred thousand tokens and merges).
    static let maxMetadataValues = 1 << 24
    /// ggml's GGML_MAX_DIMS and GGML_MAX_NAME (names must be shorter).
    static let maxDimensions = 4
    static let maxNameBytes = 64

    public init(path: String) throws {
        self.path = path
        data = try Self.mapRegularFile(path)
        var r = GGUFByteReader(data: data, path: path)
        func invalid(_ what: String, hint: String = "the file is corrupt or not a GGUF file llama.cpp would load") -> TesseraError {
            TesseraError(.invalidCheckpoint, "\(path): \(what)", hint: hint)
        }
        let magic = try r.u32()
        guard magic == 0x4655_4747 else {  // "GGUF" little-endian
            throw TesseraError(.invalidCheckpoint, "\(path): not a GGUF file (bad magic)", hint: "pass a .gguf file")
        }
        version = try r.u32()
        guard version == 2 || version == 3 else {
            throw TesseraError(.unsupported, "\(path): GGUF version \(version) is not supported",
                               hint: "only GGUF v2 and v3 are read; re-convert with a recent llama.cpp")
        }
        // Each tensor info takes at least 24 bytes (name length, dimension count, type, offset) and each metadata
        // entry at least 13 (key length, type, one byte of value): counts beyond what the file can hold are lies,
        // refused before anything is reserved for them.
        let tensorCount = try r.count(what: "tensor count", minimumBytesEach: 24)
        let kvCount = try r.count(what: "metadata count", minimumBytesEach: 13)
        var entries: [(key: String, value: GGUFValue)] = []
        entries.reserveCapacity(kvCount)
        var keys: [String: Int] = [:]
        var valueBudget = Self.maxMetadataValues
        for i in 0..<kvCount {
            let key = try r.string(what: "key of metadata entry \(i)")
            guard !key.isEmpty else { throw invalid("metadata entry \(i) has an empty key") }
            guard keys[key] == nil else { throw invalid("metadata key '\(key)' appears twice") }
            let type = try r.u32()
            let value = try r.value(type: type, key: key, budget: &valueBudget)
            keys[key] = entries.count
            entries.append((key, value))
        }
        metadataEntries = entries
        keyIndex = keys
        if let index = keys["general.alignment"] {
            // llama.cpp requires a uint32, non-zero power of two.
            guard case let .uint32(a) = entries[index].value else {
                throw invalid("general.alignment must be a uint32, not \(entries[index].value.typeName)")
            }
            guard a > 0, a & (a - 1) == 0 else { throw invalid("general.alignment \(a) is not a power of two") }
            alignment = Int(a)
        } else {
            alignment = 32
        }

        var raw: [(name: String, shape: [Int], type: GGMLType, offset: UInt64, elements: Int, bytes: Int)] = []
        raw.reserveCapacity(tensorCount)
        var seen = Set<String>()
        for i in 0..<tensorCount {
            let name = try r.string(what: "name of tensor \(i)")
            guard name.utf8.count < Self.maxNameBytes else {
                throw invalid("tensor \(i)'s name is \(name.utf8.count) bytes long (ggml's limit is \(Self.maxNameBytes - 1))")
            }
            guard seen.insert(name).inserted else { throw invalid("tensor '\(name)' appears twice") }
            let nDims = try r.u32()
            guard nDims <= Self.maxDimensions else {
                throw invalid("tensor '\(name)' has \(nDims) dimensions (at most \(Self.maxDimensions))")
            }
            var ne: [Int] = []
            for _ in 0..<Int(nDims) {
                let d = try r.load(UInt64.self)
                guard let dim = Int(exactly: d), dim >= 0 else { throw invalid("tensor '\(name)' has a negative dimension \(Int64(bitPattern: d))") }
                ne.append(dim)
            }
            let type = GGMLType(rawValue: try r.u32())
            guard let block = type.block else {
                throw invalid("tensor '\(name)' has an unknown ggml type \(type.rawValue)")
            }
            guard let n = elementCount(ne) else {
                throw invalid("tensor '\(name)' has an impossible shape \(Array(ne.reversed())) (the element count overflows)")
            }
            guard (ne.first ?? 1) % block.elements == 0 else {
                throw invalid("tensor '\(name)' has rows of \(ne.first ?? 1) elements, not a whole number of \(type) blocks of \(block.elements)")
            }
            let (bytes, overflow) = (n / block.elements).multipliedReportingOverflow(by: block.bytes)
            guard !overflow else { throw invalid("tensor '\(name)' of shape \(Array(ne.reversed())) has a size in bytes that overflows") }
            let offset = try r.load(UInt64.self)
            raw.append((name, ne.reversed(), type, offset, n, bytes))
        }

        // The data section starts at the next multiple of the alignment. As in llama.cpp, every tensor must start
        // exactly where the previous one ends, padded to the alignment: that rules out overlapping, out-of-order
        // and misaligned data, and the whole section must lie within the file.
        let dataStart = try Self.padded(r.offset, to: alignment, path: path)
        var expected = 0
        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for t in raw {
            guard t.offset == UInt64(expected) else {
                let why = t.offset % UInt64(alignment) != 0 ? "is not aligned to \(alignment) bytes"
                    : t.offset < UInt64(expected) ? "overlaps the tensor before it" : "leaves a gap after the tensor before it"
                throw invalid("tensor '\(t.name)' has data offset \(t.offset), expected \(expected): its data \(why)")
            }
            let (fileOffset, o1) = dataStart.addingReportingOverflow(expected)
            let (end, o2) = fileOffset.addingReportingOverflow(t.bytes)
            guard !o1, !o2, end <= data.count else {
                throw TesseraError(.invalidCheckpoint, "\(path): tensor '\(t.name)' extends past the end of the file",
                                   hint: "the file is truncated; download it again")
            }
            index[t.name] = infos.count
            infos.append(GGUFTensorInfo(name: t.name, shape: t.shape, type: t.type, fileOffset: fileOffset,
                                        elementCount: t.elements, byteCount: t.bytes))
            expected = try Self.padded(expected + t.bytes, to: alignment, path: path)
        }
        tensorInfos = infos
        tensorIndex = index
    }

    /// `value` rounded up to a multiple of `alignment` (a power of two), overflow-checked.
    private static func padded(_ value: Int, to alignment: Int, path: String) throws -> Int {
        let (sum, overflow) = value.addingReportingOverflow(alignment - 1)
        guard !overflow else { throw TesseraError(.invalidCheckpoint, "\(path): tensor data offsets overflow") }
        return sum & ~(alignment - 1)
    }

    /// Maps the file after checking that it is a regular file (a FIFO would block the read forever), with one line
    /// naming the problem when it cannot be read.
    private static func mapRegularFile(_ path: String) throws -> Data {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let reason = errno == ENOENT ? "no such file" : errno == EACCES ? "permission denied" : String(cString: strerror(errno))
            throw TesseraError(.io, "\(path): cannot read the GGUF file (\(reason))", hint: "check the path and that the file is readable")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            let kind = (st.st_mode & S_IFMT) == S_IFDIR ? "a directory" : "not a regular file"
            throw TesseraError(.io, "\(path): cannot read the GGUF file (it is \(kind))", hint: "pass a .gguf file")
        }
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            let reason = access(path, R_OK) != 0 ? "permission denied" : "the read failed"
            throw TesseraError(.io, "\(path): cannot read the GGUF file (\(reason))", hint: "check that the file is readable")
        }
    }

    /// A metadata value by key.
    public subscript(key: String) -> GGUFValue? { keyIndex[key].map { metadataEntries[$0].value } }

    public func info(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensorInfos[$0] } }

    /// Throws a clear error if the tensor is absent or stored in a type this reader cannot dequantise.
    /// Model loaders call this for every weight before computing anything.
    public func requireSupported(_ name: String) throws { _ = try supportedInfo(name) }

    private func supportedInfo(_ name: String) throws -> GGUFTensorInfo {
        guard let i = info(name) else {
            throw TesseraError(.notFound, "\(path): no tensor named '\(name)'", hint: "`tessera ls` lists the tensors")
        }
        guard i.type.isSupported else {
            throw TesseraError(.unsupported, "\(path): tensor '\(name)' is stored as \(i.type), which the engine cannot dequantise",
                               hint: "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K; re-quantise the GGUF with one of them")
        }
        return i
    }

    /// The tensor dequantised to float32, row-major in `info(name).shape`.
    public func dequantized(_ name: String) throws -> [Float] {
        let i = try supportedInfo(name)
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
        let i = try supportedInfo(name)
        return try data.withUnsafeBytes { file in
            try body(UnsafeRawBufferPointer(rebasing: file[i.fileOffset..<(i.fileOffset + i.byteCount)]))
        }
    }

    // MARK: TensorSource

    public var sourceName: String { path }
    public var tensorNames: [String] { tensorInfos.map(\.name) }
    /// Tensors are served dequantised, so every supported tensor reports F32.
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { info(name).map { (DType.f32, $0.shape) } }
    public func rawTensor(_ name: String) throws -> RawTensor {
        let i = try supportedInfo(name)
        return try RawTensor(floats: try dequantized(name), shape: i.shape, dtype: .f32)
    }
    public func floats(_ name: String) throws -> [Float] { try dequantized(name) }
    public var metadata: [(String, String)] { metadataEntries.map { ($0.key, $0.value.description) } }
}

/// Sequential little-endian reader over the mapped file with bounds checks: every length and count is checked
/// against the bytes left before anything is allocated for it.
private struct GGUFByteReader {
    let data: Data
    let path: String
    var offset = 0

    var remaining: Int { data.count - offset }

    func truncated(_ what: String) -> TesseraError {
        TesseraError(.invalidCheckpoint, "\(path): GGUF header ends early at byte \(offset) (reading \(what))",
                     hint: "the file is truncated or not GGUF")
    }

    mutating func bytes(_ n: Int, what: String = "a value") throws -> Data {
        guard n >= 0, n <= remaining else { throw truncated(what) }
        let start = data.startIndex + offset
        offset += n
        return data[start..<(start + n)]
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let b = try bytes(MemoryLayout<T>.size)
        return b.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    mutating func u32() throws -> UInt32 { try load(UInt32.self) }

    /// A count of items that each take at least `minimumBytesEach` bytes of what is left of the file.
    mutating func count(what: String, minimumBytesEach: Int) throws -> Int {
        let v = try load(UInt64.self)
        guard v <= UInt64(remaining / max(1, minimumBytesEach)) else {
            throw TesseraError(.invalidCheckpoint, "\(path): \(what) \(v) is more than the \(remaining) bytes left can hold",
                               hint: "the file is corrupt or truncated")
        }
        return Int(v)
    }

    mutating func string(what: String) throws -> String {
        let n = try load(UInt64.self)
        guard n <= UInt64(remaining) else {
            throw TesseraError(.invalidCheckpoint, "\(path): \(what) is a string of \(n) bytes, more than the \(remaining) bytes left",
                               hint: "the file is corrupt or truncated")
        }
        return String(decoding: try bytes(Int(n), what: what), as: UTF8.self)
    }

    /// Encoded size of one scalar of a metadata value type (strings: their 8-byte length), nil for unknown types.
    static func minimumSize(_ type: UInt32) -> Int? {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        default: return nil
        }
    }

    /// One metadata value. Arrays hold scalars or strings only: llama.cpp refuses arrays of arrays, and so nesting
    /// (and recursion) never happens here.
    mutating func value(type: UInt32, key: String, budget: inout Int) throws -> GGUFValue {
        guard type == 9 else { return try scalar(type: type, key: key) }
        let elementType = try u32()
        guard elementType != 9 else {
            throw TesseraError(.invalidCheckpoint, "\(path): metadata '\(key)' is an array of arrays, which GGUF readers do not accept",
                               hint: "the file is corrupt or was not written by a GGUF writer llama.cpp can read")
        }
        guard let size = Self.minimumSize(elementType) else {
            throw TesseraError(.invalidCheckpoint, "\(path): metadata '\(key)' is an array of unknown value type \(elementType)",
                               hint: "the file is corrupt or not GGUF")
        }
        let n = try count(what: "length of metadata array '\(key)'", minimumBytesEach: size)
        guard n <= budget else {
            throw TesseraError(.invalidCheckpoint, "\(path): metadata arrays hold more than \(GGUFFile.maxMetadataValues) values in all (at '\(key)')",
                               hint: "no model's metadata is that large; the file is not a model Tessera can read")
        }
        budget -= n
        var a: [GGUFValue] = []
        a.reserveCapacity(n)
        for _ in 0..<n { a.append(try scalar(type: elementType, key: key)) }
        return .array(a)
    }

    mutating func scalar(type: UInt32, key: String) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try load(UInt8.self))
        case 1: return .int8(try load(Int8.self))
        case 2: return .uint16(try load(UInt16.self))
        case 3: return .int16(try load(Int16.self))
        case 4: return .uint32(try load(UInt32.self))
        case 5: return .int32(try load(Int32.self))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self)))
        case 7: return .bool(try load(UInt8.self) != 0)
        case 8: return .string(try string(what: "metadata '\(key)'"))
        case 10: return .uint64(try load(UInt64.self))
        case 11: return .int64(try load(Int64.self))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self)))
        default:
            throw TesseraError(.invalidCheckpoint, "\(path): metadata '\(key)' has unknown value type \(type) at byte \(offset)",
                               hint: "the file is corrupt or not GGUF")
        }
    }
}
