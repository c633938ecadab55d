import Foundation
import TesseraIO

/// A tensor held in memory as raw bytes of its dtype, the unit that formats read and write.
public struct RawTensor: Sendable {
    public var dtype: DType
    public var shape: [Int]
    public var bytes: [UInt8]

    public init(dtype: DType, shape: [Int], bytes: [UInt8]) {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    public var elementCount: Int { TesseraCore.elementCount(shape) ?? 0 }

    /// Values as float32; F32/F16/BF16/F64 and the integer types convert, other types throw.
    public func floats(name: String = "tensor") throws -> [Float] {
        let n = elementCount
        var out = [Float](repeating: 0, count: n)
        try bytes.withUnsafeBytes { src in
            try out.withUnsafeMutableBufferPointer { dst in
                switch dtype {
                case .f32:
                    for k in 0..<n { dst[k] = Float(bitPattern: src.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self).littleEndian) }
                case .f16:
                    for k in 0..<n { dst[k] = HalfFloat.f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self).littleEndian) }
                case .bf16:
                    for k in 0..<n { dst[k] = HalfFloat.bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self).littleEndian) }
                case .f64:
                    for k in 0..<n { dst[k] = Float(Double(bitPattern: src.loadUnaligned(fromByteOffset: 8 * k, as: UInt64.self).littleEndian)) }
                case .i64:
                    for k in 0..<n { dst[k] = Float(Int64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * k, as: Int64.self))) }
                case .i32:
                    for k in 0..<n { dst[k] = Float(Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * k, as: Int32.self))) }
                case .i16:
                    for k in 0..<n { dst[k] = Float(Int16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: Int16.self))) }
                case .i8:
                    for k in 0..<n { dst[k] = Float(Int8(bitPattern: src[k])) }
                case .u8, .bool:
                    for k in 0..<n { dst[k] = Float(src[k]) }
                default:
                    throw TesseraError(.unsupported, "tensor '\(name)' has dtype \(dtype.rawValue), which cannot be read as numbers",
                                       hint: "convert it to F32, F16 or BF16")
                }
            }
        }
        return out
    }

    /// Encodes float32 values as `dtype` (F32, F16, BF16 or F64), rounding to nearest even.
    public init(floats: [Float], shape: [Int], dtype: DType) throws {
        let n = floats.count
        var bytes = [UInt8](repeating: 0, count: dtype.byteCount(elements: n) ?? 0)
        try bytes.withUnsafeMutableBytes { dst in
            switch dtype {
            case .f32: for k in 0..<n { dst.storeBytes(of: floats[k].bitPattern.littleEndian, toByteOffset: 4 * k, as: UInt32.self) }
            case .f16: for k in 0..<n { dst.storeBytes(of: HalfFloat.floatToF16(floats[k]).littleEndian, toByteOffset: 2 * k, as: UInt16.self) }
            case .bf16: for k in 0..<n { dst.storeBytes(of: HalfFloat.floatToBF16(floats[k]).littleEndian, toByteOffset: 2 * k, as: UInt16.self) }
            case .f64: for k in 0..<n { dst.storeBytes(of: Double(floats[k]).bitPattern.littleEndian, toByteOffset: 8 * k, as: UInt64.self) }
            default:
                throw TesseraError(.unsupported, "cannot write floating-point values as \(dtype.rawValue)", hint: "use F32, F16, BF16 or F64")
            }
        }
        self.init(dtype: dtype, shape: shape, bytes: bytes)
    }
}

/// A safetensors file opened for reading whole tensors (memory-mapped).
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let layout: SafetensorsLayout
    private let data: Data
    private let index: [ExactName: Int]

    public init(path: String) throws {
        self.path = path
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw TesseraError(.io, "\(path): cannot read the file", hint: "check that it exists and is readable", underlying: error)
        }
        let n = try SafetensorsLayout.headerLength(prefix: Array(data.prefix(8)), fileSize: data.count, file: path)
        layout = try SafetensorsLayout.parse(headerBytes: Array(data.prefix(8 + n)), fileSize: data.count, file: path)
        var index: [ExactName: Int] = [:]
        for (k, t) in layout.tensors.enumerated() { index[ExactName(t.name)] = k }
        self.index = index
    }

    /// Tensor names in file (data-offset) order.
    public var tensorNames: [String] { layout.tensors.map(\.name) }

    public func info(_ name: String) -> SafetensorsTensor? { index[ExactName(name)].map { layout.tensors[$0] } }

    public func tensor(_ name: String) throws -> RawTensor {
        guard let t = info(name) else {
            throw TesseraError(.notFound, "\(path): no tensor named '\(name)'", hint: "`tessera ls \(path)` lists the tensors")
        }
        let start = layout.dataStart + t.begin
        return RawTensor(dtype: t.dtype, shape: t.shape, bytes: Array(data[(data.startIndex + start)..<(data.startIndex + start + t.byteCount)]))
    }

    public func floats(_ name: String) throws -> [Float] { try tensor(name).floats(name: name) }
}

/// Writes safetensors files the way the reference library does: `__metadata__` first, tensors sorted by name,
/// header padded with spaces to a multiple of 8 bytes, data contiguous in header order.
public enum SafetensorsWriter {
    public static func encode(tensors: [(String, RawTensor)], metadata: [(String, String)] = []) throws -> [UInt8] {
        let sorted = tensors.sorted { $0.0 < $1.0 }
        for (name, t) in sorted {
            try SafetensorsLayout.validateName(name, file: "output")
            let expected = t.dtype.byteCount(elements: t.elementCount) ?? -1
            guard expected == t.bytes.count else {
                throw TesseraError(.shapeMismatch, "tensor '\(name)': \(t.bytes.count) bytes do not fit \(t.dtype.rawValue) \(t.shape)")
            }
        }
        var out = SafetensorsHeader.encode(SafetensorsHeader.contiguous(sorted.map { ($0.0, $0.1.dtype, $0.1.shape) }), metadata: metadata)!
        for (_, t) in sorted { out += t.bytes }
        return out
    }

    /// Writes atomically: a temporary file beside the target, then rename, so no reader sees half a file.
    public static func write(tensors: [(String, RawTensor)], metadata: [(String, String)] = [], to path: String) throws {
        let bytes = try encode(tensors: tensors, metadata: metadata)
        try AtomicFile.write(Data(bytes), to: path)
    }
}
