import TesseraCore
import TesseraMath

/// Tensor bytes to float32 values and back, with the fast paths the streaming merge needs (a memcpy for F32, the
/// 16-bit conversions of TesseraMath over the cores) and the non-finite check every merged tensor passes before it
/// is emitted. Byte counts are checked here, in a checked target, before any buffer is handed to the kernels.
enum FloatCodec {
    static func decode(_ t: RawTensor, name: String) throws -> [Float] {
        let n = t.elementCount
        if n == 0 { return [] }
        switch t.dtype {
        case .f32:
            guard t.bytes.count == 4 * n else { return try t.floats(name: name) }
            return [Float](unsafeUninitializedCapacity: n) { dst, count in
                t.bytes.withUnsafeBytes { src in
                    UnsafeMutableRawBufferPointer(dst).copyMemory(from: src)
                }
                count = n
            }
        case .bf16, .f16:
            guard t.bytes.count == 2 * n else { return try t.floats(name: name) }
            let format: TesseraMath.FloatCodec.Half = t.dtype == .bf16 ? .bf16 : .f16
            return [Float](unsafeUninitializedCapacity: n) { dst, count in
                t.bytes.withUnsafeBytes { raw in
                    TesseraMath.FloatCodec.decode(raw.bindMemory(to: UInt16.self).baseAddress!, format, into: dst.baseAddress!, count: n)
                }
                count = n
            }
        default:
            return try t.floats(name: name)
        }
    }

    static func half(_ dtype: DType) -> TesseraMath.FloatCodec.Half? {
        switch dtype {
        case .f16: return .f16
        case .bf16: return .bf16
        default: return nil
        }
    }

    /// Rounds values in place to what `dtype` can hold (mergekit loads every input in the merge `dtype` before it
    /// computes, in float32, on those values).
    static func quantize(_ x: inout [Float], to dtype: DType) {
        guard let format = half(dtype) else { return }
        x.withUnsafeMutableBufferPointer { TesseraMath.FloatCodec.round($0, to: format) }
    }

    /// Index of the first NaN or infinity, if any.
    static func firstNonFinite(_ x: [Float]) -> Int? {
        x.withUnsafeBufferPointer { TesseraMath.FloatCodec.firstNonFinite($0) }
    }

    /// The largest finite value of a 16-bit output dtype (what a merge result must fit in), nil for other dtypes.
    static func largestFinite(_ dtype: DType) -> Float? {
        switch dtype {
        case .f16: return 65504
        case .bf16: return HalfFloat.bf16ToFloat(0x7F7F)
        default: return nil
        }
    }

    /// Index of the first finite value that `dtype` rounds to infinity (a float16 or bfloat16 overflow), if any.
    static func firstOverflow(_ x: [Float], dtype: DType) -> Int? {
        guard let format = half(dtype) else { return nil }
        return x.withUnsafeBufferPointer { TesseraMath.FloatCodec.firstOverflow($0, format) }
    }

    /// `encode` for a merge result, which must be finite in the output dtype: nil when some value is NaN or
    /// infinite, or (float16, bfloat16) rounds to infinity (find it with `firstNonFinite`, then `firstOverflow`).
    /// The check rides along with the conversion, so the result is read once, not twice.
    static func encodeFinite(_ x: [Float], shape: [Int], dtype: DType) throws -> RawTensor? {
        let n = x.count
        guard n > 0 else { return try encode(x, shape: shape, dtype: dtype) }
        if let format = half(dtype) {
            var finite = true
            let bytes = [UInt8](unsafeUninitializedCapacity: 2 * n) { dst, count in
                let out = UnsafeMutableRawPointer(dst.baseAddress!).bindMemory(to: UInt16.self, capacity: n)
                finite = x.withUnsafeBufferPointer { TesseraMath.FloatCodec.encode($0, format, into: out) }
                count = 2 * n
            }
            return finite ? RawTensor(dtype: dtype, shape: shape, bytes: bytes) : nil
        }
        guard dtype == .f32 else {
            return firstNonFinite(x) == nil ? try encode(x, shape: shape, dtype: dtype) : nil
        }
        var finite = true
        let bytes = [UInt8](unsafeUninitializedCapacity: 4 * n) { dst, count in
            finite = x.withUnsafeBufferPointer { TesseraMath.FloatCodec.encodeFloat32($0, into: UnsafeMutableRawPointer(dst.baseAddress!)) }
            count = 4 * n
        }
        return finite ? RawTensor(dtype: .f32, shape: shape, bytes: bytes) : nil
    }

    static func encode(_ x: [Float], shape: [Int], dtype: DType) throws -> RawTensor {
        let n = x.count
        if n == 0 { return try RawTensor(floats: [], shape: shape, dtype: dtype) }
        switch dtype {
        case .f32:
            let bytes = [UInt8](unsafeUninitializedCapacity: 4 * n) { dst, count in
                x.withUnsafeBytes { src in UnsafeMutableRawBufferPointer(dst).copyMemory(from: src) }
                count = 4 * n
            }
            return RawTensor(dtype: .f32, shape: shape, bytes: bytes)
        case .bf16, .f16:
            let format: TesseraMath.FloatCodec.Half = dtype == .bf16 ? .bf16 : .f16
            let bytes = [UInt8](unsafeUninitializedCapacity: 2 * n) { dst, count in
                let out = UnsafeMutableRawPointer(dst.baseAddress!).bindMemory(to: UInt16.self, capacity: n)
                x.withUnsafeBufferPointer { _ = TesseraMath.FloatCodec.encode($0, format, into: out) }
                count = 2 * n
            }
            return RawTensor(dtype: dtype, shape: shape, bytes: bytes)
        default:
            return try RawTensor(floats: x, shape: shape, dtype: dtype)
        }
    }
}
