/// Byte grouping ("byte planes"): the k-th byte of every element is stored together. For floating point the planes
/// holding sign and exponent are highly repetitive, so a general-purpose compressor then finds them; mantissa planes
/// stay near-random and cost what they cost. The transform is its own record: width and element count suffice to
/// invert it.
public enum ByteGrouping {
    /// Writes the planes of `count` elements of `width` bytes from `src` to `dst` (both `count * width` bytes).
    public static func group(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, count: Int, width: Int) {
        let s = src.assumingMemoryBound(to: UInt8.self)
        let d = dst.assumingMemoryBound(to: UInt8.self)
        switch width {
        case 1:
            d.update(from: s, count: count)
        case 2:
            let p0 = d, p1 = d + count
            for i in 0..<count {
                p0[i] = s[2 * i]
                p1[i] = s[2 * i + 1]
            }
        case 4:
            let p0 = d, p1 = d + count, p2 = d + 2 * count, p3 = d + 3 * count
            let words = UnsafeRawPointer(s)
            for i in 0..<count {
                let w = words.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                p0[i] = UInt8(truncatingIfNeeded: w)
                p1[i] = UInt8(truncatingIfNeeded: w >> 8)
                p2[i] = UInt8(truncatingIfNeeded: w >> 16)
                p3[i] = UInt8(truncatingIfNeeded: w >> 24)
            }
        default:
            for i in 0..<count {
                for j in 0..<width { d[j * count + i] = s[i * width + j] }
            }
        }
    }

    /// Inverse of `group`.
    public static func ungroup(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, count: Int, width: Int) {
        let s = src.assumingMemoryBound(to: UInt8.self)
        let d = dst.assumingMemoryBound(to: UInt8.self)
        switch width {
        case 1:
            d.update(from: s, count: count)
        case 2:
            let p0 = s, p1 = s + count
            for i in 0..<count {
                d[2 * i] = p0[i]
                d[2 * i + 1] = p1[i]
            }
        case 4:
            let p0 = s, p1 = s + count, p2 = s + 2 * count, p3 = s + 3 * count
            let out = UnsafeMutableRawPointer(d)
            for i in 0..<count {
                let w = UInt32(p0[i]) | UInt32(p1[i]) << 8 | UInt32(p2[i]) << 16 | UInt32(p3[i]) << 24
                out.storeBytes(of: w, toByteOffset: 4 * i, as: UInt32.self)
            }
        default:
            for i in 0..<count {
                for j in 0..<width { d[i * width + j] = s[j * count + i] }
            }
        }
    }

    /// dst[i] = a[i] ^ b[i]: the delta of two versions of a tensor. Fine-tunes change low mantissa bits, so the
    /// XOR is mostly zero in the sign/exponent planes.
    public static func xor(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, byteCount: Int) {
        let words = byteCount / 8
        for i in 0..<words {
            let x = a.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)
            dst.storeBytes(of: x, toByteOffset: 8 * i, as: UInt64.self)
        }
        for i in (words * 8)..<byteCount {
            dst.storeBytes(of: a.load(fromByteOffset: i, as: UInt8.self) ^ b.load(fromByteOffset: i, as: UInt8.self), toByteOffset: i, as: UInt8.self)
        }
    }
}
