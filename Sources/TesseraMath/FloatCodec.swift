import TesseraCore

/// Float32 values to and from their 16-bit and 32-bit encodings, over buffers whose lengths the caller checked, split
/// over the cores for large tensors; and the non-finite scans every merged tensor passes before it is written.
/// Values are little-endian in the encoded buffers.
public enum FloatCodec {
    /// The two 16-bit float formats.
    public enum Half: Sendable { case f16, bf16 }

    /// dst[i] = the float32 value of the little-endian 16-bit `src[i]` (exact: both formats fit in float32).
    public static func decode(_ src: UnsafePointer<UInt16>, _ format: Half, into dst: UnsafeMutablePointer<Float>, count n: Int) {
        let s = SharedPointer(src), out = SharedMutablePointer(dst)
        Parallel.forChunks(n) { _, r in
            switch format {
            case .bf16: for i in r { out[i] = HalfFloat.bf16ToFloat(UInt16(littleEndian: s[i])) }
            case .f16: for i in r { out[i] = HalfFloat.f16ToFloat(UInt16(littleEndian: s[i])) }
            }
        }
    }

    /// Rounds values in place to what `format` can hold (round to nearest even, as torch converts).
    public static func round(_ x: UnsafeMutableBufferPointer<Float>, to format: Half) {
        guard let base = x.baseAddress else { return }
        let p = SharedMutablePointer(base)
        Parallel.forChunks(x.count) { _, r in
            switch format {
            case .bf16: for i in r { p[i] = HalfFloat.bf16ToFloat(HalfFloat.floatToBF16(p[i])) }
            case .f16: for i in r { p[i] = HalfFloat.f16ToFloat(HalfFloat.floatToF16(p[i])) }
            }
        }
    }

    /// Index of the first NaN or infinity, if any.
    public static func firstNonFinite(_ x: UnsafeBufferPointer<Float>) -> Int? {
        guard let base = x.baseAddress else { return nil }
        let p = SharedPointer(base)
        let ranges = Parallel.chunkRanges(x.count)
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

    /// Index of the first finite value that `format` rounds to infinity (an overflow), if any.
    public static func firstOverflow(_ x: UnsafeBufferPointer<Float>, _ format: Half) -> Int? {
        x.firstIndex { $0.isFinite && !encodesFinite($0, format) }
    }

    @inline(__always)
    static func encodesFinite(_ v: Float, _ format: Half) -> Bool {
        format == .f16 ? HalfFloat.floatToF16(v) & 0x7C00 != 0x7C00 : HalfFloat.floatToBF16(v) & 0x7F80 != 0x7F80
    }

    /// Encodes `x` into `out` (little-endian) and returns whether every encoded value is finite (no NaN, no infinity,
    /// nothing rounded to infinity): the check rides along with the conversion, so the values are read once.
    @discardableResult
    public static func encode(_ x: UnsafeBufferPointer<Float>, _ format: Half, into out: UnsafeMutablePointer<UInt16>) -> Bool {
        guard let base = x.baseAddress else { return true }
        let src = SharedPointer(base), dst = SharedMutablePointer(out)
        let ranges = Parallel.chunkRanges(x.count)
        var flags = [UInt32](repeating: 0, count: ranges.count)
        flags.withUnsafeMutableBufferPointer { f in
            let fp = SharedMutablePointer(f.baseAddress!)
            Parallel.forRanges(ranges) { c, r in
                // All exponent bits set: infinity or NaN in the 16-bit format.
                var any: UInt16 = 0
                switch format {
                case .bf16:
                    for i in r { let h = HalfFloat.floatToBF16(src[i]); dst[i] = h.littleEndian; any |= (h & 0x7F80) == 0x7F80 ? 1 : 0 }
                case .f16:
                    for i in r { let h = HalfFloat.floatToF16(src[i]); dst[i] = h.littleEndian; any |= (h & 0x7C00) == 0x7C00 ? 1 : 0 }
                }
                fp[c] = UInt32(any)
            }
        }
        return !flags.contains { $0 != 0 }
    }

    /// Copies `x` as little-endian float32 bytes into `out` (4 · count bytes) and returns whether every value is
    /// finite, checked during the copy.
    @discardableResult
    public static func encodeFloat32(_ x: UnsafeBufferPointer<Float>, into out: UnsafeMutableRawPointer) -> Bool {
        guard let base = x.baseAddress else { return true }
        let src = SharedPointer(base), dst = SharedMutableRawPointer(out)
        let ranges = Parallel.chunkRanges(x.count)
        var flags = [UInt32](repeating: 0, count: ranges.count)
        flags.withUnsafeMutableBufferPointer { f in
            let fp = SharedMutablePointer(f.baseAddress!)
            Parallel.forRanges(ranges) { c, r in
                // A NaN or infinity has all exponent bits set.
                var any: UInt32 = 0
                for i in r {
                    let bits = src[i].bitPattern
                    dst.base.storeBytes(of: bits.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
                    any |= (bits & 0x7F80_0000) == 0x7F80_0000 ? 1 : 0
                }
                fp[c] = any
            }
        }
        return !flags.contains { $0 != 0 }
    }
}
