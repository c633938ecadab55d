/// A fast non-cryptographic 64-bit hash (four independent multiply-rotate lanes, XXH64-style constants), used only
/// to confirm that a file whose stat data matches the stat cache really has the content the cache remembers. The
/// identity of stored values is always SHA-256.
public struct FastHash: Sendable {
    private static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    private static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    private var lanes: (UInt64, UInt64, UInt64, UInt64) = (p1 &+ p2, p2, 0, 0 &- p1)
    private var tail: [UInt8] = []
    private var total: UInt64 = 0

    public init() {}

    @inline(__always) private static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        let a = acc &+ input &* p2
        return ((a << 31) | (a >> 33)) &* p1
    }

    public mutating func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        total &+= UInt64(buffer.count)
        var offset = 0
        if !tail.isEmpty {
            let need = 32 - tail.count
            let take = min(need, buffer.count)
            tail += UnsafeRawBufferPointer(start: base, count: take)
            offset = take
            if tail.count < 32 { return }
            tail.withUnsafeBytes { consume($0.baseAddress!, blocks: 1) }
            tail.removeAll(keepingCapacity: true)
        }
        let blocks = (buffer.count - offset) / 32
        if blocks > 0 { consume(base + offset, blocks: blocks) }
        offset += blocks * 32
        if offset < buffer.count { tail += UnsafeRawBufferPointer(start: base + offset, count: buffer.count - offset) }
    }

    private mutating func consume(_ p: UnsafeRawPointer, blocks: Int) {
        var (a, b, c, d) = lanes
        for k in 0..<blocks {
            let o = 32 * k
            a = FastHash.round(a, p.loadUnaligned(fromByteOffset: o, as: UInt64.self))
            b = FastHash.round(b, p.loadUnaligned(fromByteOffset: o + 8, as: UInt64.self))
            c = FastHash.round(c, p.loadUnaligned(fromByteOffset: o + 16, as: UInt64.self))
            d = FastHash.round(d, p.loadUnaligned(fromByteOffset: o + 24, as: UInt64.self))
        }
        lanes = (a, b, c, d)
    }

    public func finalize() -> UInt64 {
        var h = (lanes.0 << 1 | lanes.0 >> 63) &+ (lanes.1 << 7 | lanes.1 >> 57)
            &+ (lanes.2 << 12 | lanes.2 >> 52) &+ (lanes.3 << 18 | lanes.3 >> 46)
        h ^= total
        for b in tail { h = (h ^ UInt64(b)) &* FastHash.p1; h = (h << 11) | (h >> 53) }
        h ^= h >> 33; h &*= FastHash.p2; h ^= h >> 29; h &*= FastHash.p1; h ^= h >> 32
        return h
    }
}
