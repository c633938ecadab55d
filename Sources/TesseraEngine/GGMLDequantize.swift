import Foundation
import TesseraCore
import TesseraMath

/// Dequantisation of GGML block formats to float32, written from the block layouts in ggml's `ggml-common.h`
/// (documented in the GGUF spec): each block stores one or two f16 scales and packed small integers.
enum GGMLDequantize {
    /// Dequantises `count` elements of `type` from `src` into `dst`. Large tensors are split over cores by blocks.
    static func run(type: GGMLType, src: UnsafeRawPointer, dst: UnsafeMutablePointer<Float>, count: Int) {
        guard let block = type.supportedBlock else { return }
        let blocks = count / block.elements
        let chunks = blocks >= 4096 ? 8 : 1
        let perChunk = (blocks + chunks - 1) / chunks
        let work = { (chunk: Int) in
            let first = chunk * perChunk
            let last = min(blocks, first + perChunk)
            for b in first..<max(first, last) {
                let s = src + b * block.bytes
                let d = dst + b * block.elements
                switch type.rawValue {
                case 0: d.pointee = Float(bitPattern: s.loadUnaligned(as: UInt32.self).littleEndian)
                case 1: d.pointee = HalfFloat.f16ToFloat(s.loadUnaligned(as: UInt16.self).littleEndian)
                case 30: d.pointee = HalfFloat.bf16ToFloat(s.loadUnaligned(as: UInt16.self).littleEndian)
                case 2: q4_0(s, d)
                case 3: q4_1(s, d)
                case 6: q5_0(s, d)
                case 8: q8_0(s, d)
                case 12: q4_K(s, d)
                case 14: q6_K(s, d)
                default: break
                }
            }
        }
        if chunks == 1 { work(0) } else { Parallel.forEach(chunks, work) }
    }

    @inline(__always)
    private static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        HalfFloat.f16ToFloat(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self).littleEndian)
    }

    /// Q4_0: d, then 16 bytes; element j is the low nibble of byte j, element j+16 the high nibble; value (q-8)·d.
    @inline(__always)
    static func q4_0(_ s: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(s, 0)
        let qs = (s + 2).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = Float(Int(qs[j] & 0x0F) - 8) * d
            y[j + 16] = Float(Int(qs[j] >> 4) - 8) * d
        }
    }

    /// Q4_1: d and a minimum m, then nibbles as in Q4_0; value q·d + m.
    @inline(__always)
    static func q4_1(_ s: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(s, 0), m = half(s, 2)
        let qs = (s + 4).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = Float(qs[j] & 0x0F) * d + m
            y[j + 16] = Float(qs[j] >> 4) * d + m
        }
    }

    /// Q5_0: d, 32 high bits (bit j is element j's fifth bit), then nibbles as in Q4_0; value (q-16)·d.
    @inline(__always)
    static func q5_0(_ s: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(s, 0)
        let qh = s.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
        let qs = (s + 6).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            let h0 = Int((qh >> UInt32(j)) & 1) << 4
            let h1 = Int((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = Float((Int(qs[j] & 0x0F) | h0) - 16) * d
            y[j + 16] = Float((Int(qs[j] >> 4) | h1) - 16) * d
        }
    }

    /// Q8_0: d, then 32 signed bytes; value q·d.
    @inline(__always)
    static func q8_0(_ s: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(s, 0)
        let qs = (s + 2).assumingMemoryBound(to: Int8.self)
        for j in 0..<32 { y[j] = Float(qs[j]) * d }
    }

    /// The 6-bit scale and minimum of sub-block j (0..<8) packed in Q4_K's 12 scale bytes.
    @inline(__always)
    private static func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (Float, Float) {
        if j < 4 {
            return (Float(q[j] & 63), Float(q[j + 4] & 63))
        }
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
        return (Float(sc), Float(m))
    }

    /// Q4_K: a 256-element super-block of 8 sub-blocks of 32, each with a 6-bit scale and minimum; value
    /// d·sc·q − dmin·m. Nibbles: per 64 elements, 32 bytes give the first 32 (low) and next 32 (high).
    @inline(__always)
    static func q4_K(_ s: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(s, 0), dmin = half(s, 2)
        let scales = (s + 4).assumingMemoryBound(to: UInt8.self)
        var q = (s + 16).assumingMemoryBound(to: UInt8.self)
        var out = y
        var sub = 0
        for _ in 0..<4 {
            let (sc1, m1) = scaleMinK4(sub, scales)
            let (sc2, m2) = scaleMinK4(sub + 1, scales)
            let d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 { out[l] = d1 * Float(q[l] & 0x0F) - min1 }
            for l in 0..<32 { out[l + 32] = d2 * Float(q[l] >> 4) - min2 }
            q += 32
            out += 64
            sub += 2
        }
    }

    /// Q6_K: 256 elements as 16 sub-blocks of 16 with int8 scales; each 6-bit value is a nibble from `ql` and two bits
    /// from `qh`, minus 32; value d·scale·q. Layout per 128 elements: 64 bytes of ql, 32 of qh, 8 scales.
    @inline(__always)
    static func q6_K(_ s: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        var ql = s.assumingMemoryBound(to: UInt8.self)
        var qh = (s + 128).assumingMemoryBound(to: UInt8.self)
        var sc = (s + 192).assumingMemoryBound(to: Int8.self)
        let d = half(s, 208)
        var out = y
        for _ in 0..<2 {
            for l in 0..<32 {
                let i = l / 16
                let q1 = Int((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32
                let q2 = Int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                out[l] = d * Float(sc[i]) * Float(q1)
                out[l + 32] = d * Float(sc[i + 2]) * Float(q2)
                out[l + 64] = d * Float(sc[i + 4]) * Float(q3)
                out[l + 96] = d * Float(sc[i + 6]) * Float(q4)
            }
            out += 128
            ql += 64
            qh += 32
            sc += 8
        }
    }
}
