import TesseraCore

/// Tensor bytes to float32 values and back, with the fast paths the streaming merge needs (a memcpy for F32, two
/// cores for the 16-bit types) and the non-finite check every merged tensor passes before it is emitted.
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
            let isBF16 = t.dtype == .bf16
            return [Float](unsafeUninitializedCapacity: n) { dst, count in
                t.bytes.withUnsafeBytes { raw in
                    let src = SharedPointer(raw.bindMemory(to: UInt16.self).baseAddress!)
                    let out = SharedMutablePointer(dst.baseAddress!)
                    Parallel.forChunks(n) { _, r in
                        if isBF16 {
                            for i in r { out[i] = HalfFloat.bf16ToFloat(UInt16(littleEndian: src[i])) }
                        } else {
                            for i in r { out[i] = HalfFloat.f16ToFloat(UInt16(littleEndian: src[i])) }
                        }
                    }
                }
                count = n
            }
        default:
            return try t.floats(name: name)
        }
    }

    /// Rounds values in place to what `dtype` can hold (mergekit loads every input in the merge `dtype` before it
    /// computes, in float32, on those values).
    static func quantize(_ x: inout [Float], to dtype: DType) {
        switch dtype {
        case .bf16:
            x.withUnsafeMutableBufferPointer { p in
                Parallel.forChunks(p.count) { _, r in for i in r { p[i] = HalfFloat.bf16ToFloat(HalfFloat.floatToBF16(p[i])) } }
            }
        case .f16:
            x.withUnsafeMutableBufferPointer { p in
                Parallel.forChunks(p.count) { _, r in for i in r { p[i] = HalfFloat.f16ToFloat(HalfFloat.floatToF16(p[i])) } }
            }
        default: return
        }
    }

    /// Index of the first NaN or infinity, if any.
    static func firstNonFinite(_ x: [Float]) -> Int? {
        x.withUnsafeBufferPointer { p -> Int? in
            let ranges = Parallel.chunkRanges(p.count)
            var firsts = [Int](repeating: Int.max, count: ranges.count)
            firsts.withUnsafeMutableBufferPointer { f in
                let fp = SharedMutablePointer(f.baseAddress!)
                Parallel.forRanges(ranges) { c, r in
                    // Branch-free scan first (a NaN or inf has all exponent bits set), then locate.
                    var any: UInt32 = 0
                    for i in r { any |= ((p[i].bitPattern & 0x7F80_0000) == 0x7F80_0000) ? 1 : 0 }
                    if any != 0 { for i in r where !p[i].isFinite { fp[c] = i; break } }
                }
            }
            let m = firsts.min() ?? Int.max
            return m == Int.max ? nil : m
        }
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
        guard dtype == .f16 || dtype == .bf16 else { return nil }
        return x.firstIndex { $0.isFinite && !encodesFinite($0, dtype) }
    }

    @inline(__always)
    private static func encodesFinite(_ v: Float, _ dtype: DType) -> Bool {
        dtype == .f16 ? HalfFloat.floatToF16(v) & 0x7C00 != 0x7C00 : HalfFloat.floatToBF16(v) & 0x7F80 != 0x7F80
    }

    /// `encode` for a merge result, which must be finite in the output dtype: nil when some value is NaN or
    /// infinite, or (float16, bfloat16) rounds to infinity (find it with `firstNonFinite`, then `firstOverflow`).
    /// For f32 output the check rides along with the copy, so the result is read once, not twice; for 16-bit output
    /// the encoded values are checked as they are written.
    static func encodeFinite(_ x: [Float], shape: [Int], dtype: DType) throws -> RawTensor? {
        let n = x.count
        if n > 0, dtype == .f16 || dtype == .bf16 {
            let ranges = Parallel.chunkRanges(n)
            var flags = [UInt32](repeating: 0, count: ranges.count)
            let isBF16 = dtype == .bf16
            let bytes = [UInt8](unsafeUninitializedCapacity: 2 * n) { dst, count in
                let out = SharedMutablePointer(UnsafeMutableRawPointer(dst.baseAddress!).bindMemory(to: UInt16.self, capacity: n))
                x.withUnsafeBufferPointer { src in
                    flags.withUnsafeMutableBufferPointer { f in
                        let fp = SharedMutablePointer(f.baseAddress!)
                        Parallel.forRanges(ranges) { c, r in
                            // All exponent bits set: infinity or NaN in the 16-bit format.
                            var any: UInt16 = 0
                            if isBF16 {
                                for i in r { let h = HalfFloat.floatToBF16(src[i]); out[i] = h.littleEndian; any |= (h & 0x7F80) == 0x7F80 ? 1 : 0 }
                            } else {
                                for i in r { let h = HalfFloat.floatToF16(src[i]); out[i] = h.littleEndian; any |= (h & 0x7C00) == 0x7C00 ? 1 : 0 }
                            }
                            fp[c] = UInt32(any)
                        }
                    }
                }
                count = 2 * n
            }
            return flags.contains { $0 != 0 } ? nil : RawTensor(dtype: dtype, shape: shape, bytes: bytes)
        }
        guard dtype == .f32, n > 0 else {
            return firstNonFinite(x) == nil ? try encode(x, shape: shape, dtype: dtype) : nil
        }
        let ranges = Parallel.chunkRanges(n)
        var flags = [UInt32](repeating: 0, count: ranges.count)
        let bytes = [UInt8](unsafeUninitializedCapacity: 4 * n) { dst, count in
            let out = SharedMutableRawPointer(UnsafeMutableRawPointer(dst.baseAddress!))
            x.withUnsafeBufferPointer { src in
                flags.withUnsafeMutableBufferPointer { f in
                    let fp = SharedMutablePointer(f.baseAddress!)
                    Parallel.forRanges(ranges) { c, r in
                        // A NaN or infinity has all exponent bits set.
                        var any: UInt32 = 0
                        for i in r {
                            let bits = src[i].bitPattern
                            out.base.storeBytes(of: bits.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
                            any |= (bits & 0x7F80_0000) == 0x7F80_0000 ? 1 : 0
                        }
                        fp[c] = any
                    }
                }
            }
            count = 4 * n
        }
        return flags.contains { $0 != 0 } ? nil : RawTensor(dtype: .f32, shape: shape, bytes: bytes)
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
            let isBF16 = dtype == .bf16
            let bytes = [UInt8](unsafeUninitializedCapacity: 2 * n) { dst, count in
                let out = SharedMutablePointer(UnsafeMutableRawPointer(dst.baseAddress!).bindMemory(to: UInt16.self, capacity: n))
                x.withUnsafeBufferPointer { src in
                    Parallel.forChunks(n) { _, r in
                        if isBF16 {
                            for i in r { out[i] = HalfFloat.floatToBF16(src[i]).littleEndian }
                        } else {
                            for i in r { out[i] = HalfFloat.floatToF16(src[i]).littleEndian }
                        }
                    }
                }
                count = 2 * n
            }
            return RawTensor(dtype: dtype, shape: shape, bytes: bytes)
        default:
            return try RawTensor(floats: x, shape: shape, dtype: dtype)
        }
    }
}
