import Dispatch
import TesseraCore
import TesseraIO

// The entropy coder shared by the arithmetic delta (`adeltaW`) and the low-rank residual (`lowrank4`): the
// difference of two floats' bit patterns read as sign-magnitude ordered integers, coded per element with an adaptive
// binary range coder whose contexts are the base element's exponent and the difference's bit length.

/// Adaptive binary range coder, encoding side: 32-bit range, 12-bit probabilities (of a 0), carries propagated
/// through a one-byte cache plus a count of pending 0xFF bytes. Writes into a fixed buffer; running past it sets
/// `overflowed` (the callers size the buffer so that it cannot happen).
struct BinaryRangeEncoder {
    static let probabilityBits: UInt32 = 12
    static let one: UInt16 = 1 << 12
    static let initial: UInt16 = 1 << 11
    static let adaptShift: UInt16 = 5

    private var low: UInt64 = 0
    private var range: UInt32 = 0xFFFF_FFFF
    private var cache: UInt8 = 0
    private var pending = 1
    let out: UnsafeMutablePointer<UInt8>
    let capacity: Int
    private(set) var count = 0
    private(set) var overflowed = false

    init(out: UnsafeMutablePointer<UInt8>, capacity: Int) {
        self.out = out
        self.capacity = capacity
    }

    @inline(__always) private mutating func put(_ byte: UInt8) {
        if count < capacity { out[count] = byte; count += 1 } else { overflowed = true }
    }

    // Out of line: it runs once per output byte, and inlined its state crowded the coding loop's registers.
    @inline(never) private mutating func shiftLow() {
        if low < 0xFF00_0000 || low >= 0x1_0000_0000 {
            let carry = UInt8(truncatingIfNeeded: low >> 32)
            var byte = cache
            while pending > 0 {
                put(byte &+ carry)
                byte = 0xFF
                pending -= 1
            }
            cache = UInt8(truncatingIfNeeded: low >> 24)
        }
        pending += 1
        low = (low & 0x00FF_FFFF) << 8
    }

    // Branch-free on the bit (selects, not jumps): the bits coded here are close to random, and a mispredicted
    // branch per bit cost more than the coding itself.
    @inline(__always) mutating func encode(_ bit: Bool, _ p: inout UInt16) {
        let q = p
        let bound = (range >> BinaryRangeEncoder.probabilityBits) &* UInt32(q)
        let up = q &+ ((BinaryRangeEncoder.one &- q) >> BinaryRangeEncoder.adaptShift)
        let down = q &- (q >> BinaryRangeEncoder.adaptShift)
        low &+= bit ? UInt64(bound) : 0
        range = bit ? range &- bound : bound
        p = bit ? down : up
        // One step of at least 31/4096 leaves the range ≥ 2^24 · 31/4096 > 2^16: one shift restores it.
        if range < (1 << 24) {
            range <<= 8
            shiftLow()
        }
    }

    /// Emits the bytes the decoder needs to resolve the last symbol.
    mutating func finish() {
        for _ in 0..<5 { shiftLow() }
    }
}

/// The decoding side. Reading past the input's end yields zeros and sets `overran`: a corrupt chunk, reported by the
/// caller after the chunk (no check in the per-bit path beyond the bound).
struct BinaryRangeDecoder {
    private var range: UInt32 = 0xFFFF_FFFF
    private var code: UInt32 = 0
    private let input: UnsafePointer<UInt8>?
    private let count: Int
    private var position = 0
    private(set) var overran = false

    init(_ bytes: UnsafeRawBufferPointer) {
        input = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
        count = bytes.count
        // The first byte the encoder writes is its initial cache, always 0.
        if next() != 0 { overran = true }
        for _ in 0..<4 { code = (code << 8) | UInt32(next()) }
    }

    @inline(__always) private mutating func next() -> UInt8 {
        if position < count, let input { let b = input[position]; position += 1; return b }
        overran = true
        return 0
    }

    @inline(__always) mutating func decode(_ p: inout UInt16) -> Bool {
        let q = p
        let bound = (range >> BinaryRangeEncoder.probabilityBits) &* UInt32(q)
        let up = q &+ ((BinaryRangeEncoder.one &- q) >> BinaryRangeEncoder.adaptShift)
        let down = q &- (q >> BinaryRangeEncoder.adaptShift)
        let bit = code >= bound
        code &-= bit ? bound : 0
        range = bit ? range &- bound : bound
        p = bit ? down : up
        if range < (1 << 24) {
            range <<= 8
            code = (code << 8) | UInt32(next())
        }
        return bit
    }
}

/// Bits written as they are (the low bits of a difference, which are noise): LSB-first into 64-bit words.
struct RawBitWriter {
    private var accumulator: UInt64 = 0
    private var filled = 0
    let out: UnsafeMutablePointer<UInt8>
    let capacity: Int
    private(set) var count = 0
    private(set) var overflowed = false

    init(out: UnsafeMutablePointer<UInt8>, capacity: Int) {
        self.out = out
        self.capacity = capacity
    }

    /// Appends the low `n` bits of `value` (n ≤ 32).
    @inline(__always) mutating func put(_ value: UInt64, _ n: Int) {
        accumulator |= (value & ((1 << UInt64(n)) &- 1)) << UInt64(filled)
        filled += n
        if filled >= 32 {
            if count + 4 <= capacity {
                (UnsafeMutableRawPointer(out) + count).storeBytes(of: UInt32(truncatingIfNeeded: accumulator).littleEndian, as: UInt32.self)
                count += 4
            } else { overflowed = true }
            accumulator >>= 32
            filled -= 32
        }
    }

    mutating func finish() {
        while filled > 0 {
            if count < capacity { out[count] = UInt8(truncatingIfNeeded: accumulator); count += 1 } else { overflowed = true }
            accumulator >>= 8
            filled -= 8
        }
        filled = 0
    }
}

struct RawBitReader {
    private var accumulator: UInt64 = 0
    private var available = 0
    private let input: UnsafePointer<UInt8>?
    private let count: Int
    private var position = 0
    private(set) var overran = false

    init(_ bytes: UnsafeRawBufferPointer) {
        input = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
        count = bytes.count
    }

    /// The next `n` bits (n ≤ 32).
    @inline(__always) mutating func take(_ n: Int) -> UInt64 {
        if available < n { refill() }
        let v = accumulator & ((1 << UInt64(n)) &- 1)
        accumulator >>= UInt64(n)
        available -= n
        if available < 0 { overran = true; available = 0 }
        return v
    }

    @inline(__always) private mutating func refill() {
        if position + 4 <= count, let input {
            let word = UInt64(UInt32(littleEndian: UnsafeRawPointer(input + position).loadUnaligned(as: UInt32.self)))
            accumulator |= word << UInt64(available)
            available += 32
            position += 4
        } else {
            while available <= 56 && position < count, let input {
                accumulator |= UInt64(input[position]) << UInt64(available)
                available += 8
                position += 1
            }
        }
    }

    /// Bytes read beyond what the writer's last flush can account for mean a corrupt chunk.
    var consumedAll: Bool { position == count }
}

/// A float's bit pattern as an ordered integer: positive patterns as they are, negative ones (sign set) as
/// -(magnitude) - 1, so that the map is a bijection onto the signed integers of the same width and a small change of
/// value (even across zero) is a small difference.
@inline(__always) func orderedInteger<T: FixedWidthInteger & UnsignedInteger>(_ x: T) -> Int64 {
    let sign = T(1) << (T.bitWidth - 1)
    return x & sign == 0 ? Int64(x) : -Int64(x & ~sign) - 1
}

@inline(__always) func bitPattern<T: FixedWidthInteger & UnsignedInteger>(ordered v: Int64) -> T {
    let sign = T(1) << (T.bitWidth - 1)
    return v >= 0 ? T(truncatingIfNeeded: v) : (T(truncatingIfNeeded: -(v + 1)) | sign)
}

/// Adaptive probabilities, all starting at one half.
struct Probabilities {
    let pointer: UnsafeMutablePointer<UInt16>
    init(count: Int) {
        pointer = .allocate(capacity: count)
        pointer.initialize(repeating: BinaryRangeEncoder.initial, count: count)
    }
    func release() { pointer.deallocate() }
}

/// Codes one chunk of elements as differences from a base (or prediction) of the same length.
///
/// Per element: the difference's bit length k (0...bits) in a binary tree under the base's exponent (the 8 bits below
/// the sign: a float32's or bfloat16's exponent, a float16's exponent and top mantissa bits), then, when k > 0, its
/// sign (raw), then the bit below the leading one under k, then the remaining bits raw. Even elements go to one
/// range coder and odd ones to another, each with its own probabilities: the two dependency chains interleave on
/// one core (a binary range coder is latency-bound), which nearly doubled the speed.
enum OrderedDeltaCoder {
    static let topBits = 1
    static let exponentContexts = 256
    static let lanes = 2

    /// The most range-coder bytes one lane of `count` elements can take: each of at most 7 decisions per element
    /// costs under 8 bits (probabilities stay within [31, 4065]/4096), plus the flush.
    static func rangeBound(count: Int) -> Int { count * 7 + 16 }
    /// The most raw-bit bytes: under `width` bytes per element.
    static func rawBound(count: Int, width: Int) -> Int { count * width + 16 }
    /// Elements of a chunk of `count` in lane `lane`.
    static func laneCount(_ count: Int, lane: Int) -> Int { (count - lane + 1) / 2 }

    /// The class tree's depth: its leaves are k = 0 ... 2^depth − 1, the last one also standing for k = bits (one
    /// more decision tells them apart: bit lengths of 32 or 16 are rare, and a level less is a decision less for
    /// every element).
    static func treeDepth(bits: Int) -> Int { bits == 32 ? 5 : 4 }

    /// One lane's tables: the class trees of every exponent context, the top bit of every class, the escape.
    static func tableSize(bits: Int) -> Int { exponentContexts * (1 << treeDepth(bits: bits)) + (bits + 1) * 2 + 1 }

    /// `orderedInteger` of a `bits`-wide pattern held in a UInt32 (the coder's loops are not generic: a generic
    /// element function was not inlined into them, and that cost half the speed).
    @inline(__always) static func ordered(_ x: UInt32, bits: Int) -> Int64 {
        let sign = UInt32(1) << UInt32(bits - 1)
        return x & sign == 0 ? Int64(x) : -Int64(x & ~sign) - 1
    }

    @inline(__always)
    static func encodeElement(_ n: UInt32, _ b: UInt32, bits: Int, rc: inout BinaryRangeEncoder, rw: inout RawBitWriter,
                              tables: UnsafeMutablePointer<UInt16>, depth: Int) {
        let classNodes = 1 << depth
        let d = ordered(n, bits: bits) - ordered(b, bits: bits)
        let m = d.magnitude
        let k = m == 0 ? 0 : 64 - m.leadingZeroBitCount
        let context = tables + Int((b >> UInt32(bits - 9)) & 0xFF) &* classNodes
        let leaf = min(k, classNodes - 1)
        var node = 1
        var level = depth - 1
        while level >= 0 {
            let bit = (leaf >> level) & 1
            rc.encode(bit != 0, &context[node])
            node = node &* 2 &+ bit
            level -= 1
        }
        if leaf == classNodes - 1 { rc.encode(k == bits, &tables[exponentContexts &* classNodes &+ (bits + 1) &* 2]) }
        if k == 0 { return }
        rw.put(d < 0 ? 1 : 0, 1)
        if k == 1 { return }
        let rest = k - 2
        rc.encode((m >> UInt64(rest)) & 1 != 0, &tables[exponentContexts &* classNodes &+ k &* 2])
        if rest > 0 { rw.put(m, rest) }
    }

    /// Encodes; returns the streams' lengths (two lanes, raw bits), or nil if a buffer was too small (impossible by
    /// the bounds). `range` holds lane 0 from its start and lane 1 from `rangeBound(laneCount(count, 0))`.
    static func encode<T: FixedWidthInteger & UnsignedInteger>(new: UnsafePointer<T>, base: UnsafePointer<T>, count: Int,
                                                               range: UnsafeMutableRawBufferPointer, raw: UnsafeMutableRawBufferPointer,
                                                               as _: T.Type) -> (range0: Int, range1: Int, raw: Int)? {
        let size = tableSize(bits: T.bitWidth)
        // Plain allocations, not arrays in closures: the coders' state must stay in registers across the loop.
        let tables = Probabilities(count: 2 * size)
        defer { tables.release() }
        let t0 = tables.pointer, t1 = tables.pointer + size
        let second = rangeBound(count: laneCount(count, lane: 0))
        guard range.count >= second + rangeBound(count: laneCount(count, lane: 1)) else { return nil }
        let out = range.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var rc0 = BinaryRangeEncoder(out: out, capacity: second)
        var rc1 = BinaryRangeEncoder(out: out + second, capacity: range.count - second)
        var rw = RawBitWriter(out: raw.baseAddress!.assumingMemoryBound(to: UInt8.self), capacity: raw.count)
        var i = 0
        if T.bitWidth == 32 {
            let nw = UnsafeRawPointer(new).assumingMemoryBound(to: UInt32.self), bw = UnsafeRawPointer(base).assumingMemoryBound(to: UInt32.self)
            while i + 1 < count {
                encodeElement(nw[i], bw[i], bits: 32, rc: &rc0, rw: &rw, tables: t0, depth: 5)
                encodeElement(nw[i + 1], bw[i + 1], bits: 32, rc: &rc1, rw: &rw, tables: t1, depth: 5)
                i += 2
            }
            if i < count { encodeElement(nw[i], bw[i], bits: 32, rc: &rc0, rw: &rw, tables: t0, depth: 5) }
        } else {
            let nw = UnsafeRawPointer(new).assumingMemoryBound(to: UInt16.self), bw = UnsafeRawPointer(base).assumingMemoryBound(to: UInt16.self)
            while i + 1 < count {
                encodeElement(UInt32(nw[i]), UInt32(bw[i]), bits: 16, rc: &rc0, rw: &rw, tables: t0, depth: 4)
                encodeElement(UInt32(nw[i + 1]), UInt32(bw[i + 1]), bits: 16, rc: &rc1, rw: &rw, tables: t1, depth: 4)
                i += 2
            }
            if i < count { encodeElement(UInt32(nw[i]), UInt32(bw[i]), bits: 16, rc: &rc0, rw: &rw, tables: t0, depth: 4) }
        }
        rc0.finish()
        rc1.finish()
        rw.finish()
        if rc0.overflowed || rc1.overflowed || rw.overflowed { return nil }
        return (rc0.count, rc1.count, rw.count)
    }

    @inline(__always)
    static func decodeElement(_ b: UInt32, bits: Int, rc: inout BinaryRangeDecoder, rr: inout RawBitReader,
                              tables: UnsafeMutablePointer<UInt16>, depth: Int, bad: inout Bool) -> UInt32 {
        let classNodes = 1 << depth
        let context = tables + Int((b >> UInt32(bits - 9)) & 0xFF) &* classNodes
        var node = 1
        for _ in 0..<depth { node = node &* 2 &+ (rc.decode(&context[node]) ? 1 : 0) }
        var k = node - classNodes
        if k == classNodes - 1 && rc.decode(&tables[exponentContexts &* classNodes &+ (bits + 1) &* 2]) { k = bits }
        if k == 0 { return b }
        if k > bits { bad = true; return b }
        let negative = rr.take(1) == 1
        var m: UInt64 = 1
        if k > 1 {
            let rest = k - 2
            let top: UInt64 = rc.decode(&tables[exponentContexts &* classNodes &+ k &* 2]) ? 1 : 0
            m = ((2 | top) << UInt64(rest)) | (rest > 0 ? rr.take(rest) : 0)
        }
        // k ≤ bits ≤ 32, so m < 2^32 and the sum stays far inside Int64.
        let v = ordered(b, bits: bits) + (negative ? -Int64(m) : Int64(m))
        let half = Int64(1) << (bits - 1)
        if v < -half || v >= half { bad = true; return b }
        return v >= 0 ? UInt32(truncatingIfNeeded: v) : UInt32(truncatingIfNeeded: -(v + 1)) | UInt32(truncatingIfNeeded: half)
    }

    /// Decodes `count` elements into `out`; false if the streams are corrupt (a bit length beyond the width, a value
    /// outside the type, a stream that ends early or has bytes left over).
    static func decode<T: FixedWidthInteger & UnsignedInteger>(base: UnsafePointer<T>, out: UnsafeMutablePointer<T>, count: Int,
                                                               range0: UnsafeRawBufferPointer, range1: UnsafeRawBufferPointer,
                                                               raw: UnsafeRawBufferPointer) -> Bool {
        let size = tableSize(bits: T.bitWidth)
        let tables = Probabilities(count: 2 * size)
        defer { tables.release() }
        let t0 = tables.pointer, t1 = tables.pointer + size
        var rc0 = BinaryRangeDecoder(range0), rc1 = BinaryRangeDecoder(range1)
        var rr = RawBitReader(raw)
        var bad = false
        var i = 0
        if T.bitWidth == 32 {
            let bw = UnsafeRawPointer(base).assumingMemoryBound(to: UInt32.self)
            let ow = UnsafeMutableRawPointer(out).assumingMemoryBound(to: UInt32.self)
            while i + 1 < count {
                ow[i] = decodeElement(bw[i], bits: 32, rc: &rc0, rr: &rr, tables: t0, depth: 5, bad: &bad)
                ow[i + 1] = decodeElement(bw[i + 1], bits: 32, rc: &rc1, rr: &rr, tables: t1, depth: 5, bad: &bad)
                i += 2
            }
            if i < count { ow[i] = decodeElement(bw[i], bits: 32, rc: &rc0, rr: &rr, tables: t0, depth: 5, bad: &bad) }
        } else {
            let bw = UnsafeRawPointer(base).assumingMemoryBound(to: UInt16.self)
            let ow = UnsafeMutableRawPointer(out).assumingMemoryBound(to: UInt16.self)
            while i + 1 < count {
                ow[i] = UInt16(truncatingIfNeeded: decodeElement(UInt32(bw[i]), bits: 16, rc: &rc0, rr: &rr, tables: t0, depth: 4, bad: &bad))
                ow[i + 1] = UInt16(truncatingIfNeeded: decodeElement(UInt32(bw[i + 1]), bits: 16, rc: &rc1, rr: &rr, tables: t1, depth: 4, bad: &bad))
                i += 2
            }
            if i < count { ow[i] = UInt16(truncatingIfNeeded: decodeElement(UInt32(bw[i]), bits: 16, rc: &rc0, rr: &rr, tables: t0, depth: 4, bad: &bad)) }
        }
        return !bad && !rc0.overran && !rc1.overran && !rr.overran && rr.consumedAll
    }
}

/// The payload both ordered-delta codecs write after their own header: chunks of elements, each
/// `u32 lane 0 length | u32 lane 1 length | u32 raw length | lane 0 range-coded bytes | lane 1 | raw bits`, coded
/// two at a time on two cores. The chunk
/// lengths are checked against the bounds a chunk of that many elements can take before anything is read.
final class OrderedDeltaChunks {
    /// Chunks coded at once (the machines this runs on have 2 cores; more costs memory for little).
    static let parallelism = 2

    private final class Slot {
        var range: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var raw: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var values: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var prediction: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var lengths = (range0: 0, range1: 0, raw: 0)
        var ok = true

        static func ensure(_ buffer: inout UnsafeMutableRawBufferPointer, _ count: Int) {
            if buffer.count >= count { return }
            buffer.deallocate()
            buffer = .allocate(byteCount: count, alignment: 64)
        }

        deinit { range.deallocate(); raw.deallocate(); values.deallocate(); prediction.deallocate() }
    }

    private let slots = (0..<OrderedDeltaChunks.parallelism).map { _ in Slot() }

    /// The range-coder scratch a chunk of `n` elements needs when encoding: both lanes' bounds.
    static func rangeCapacity(_ n: Int) -> Int {
        OrderedDeltaCoder.rangeBound(count: OrderedDeltaCoder.laneCount(n, lane: 0)) + OrderedDeltaCoder.rangeBound(count: OrderedDeltaCoder.laneCount(n, lane: 1))
    }

    /// Runs `body(0..<n)` on libdispatch's threads and returns when all are done. The bodies write disjoint slots
    /// and read only what no iteration writes, which is what makes handing them to other threads safe.
    static func concurrently(_ n: Int, _ body: (Int) -> Void) {
        if n == 1 { body(0); return }
        withoutActuallyEscaping(body) { escapable in
            DispatchQueue.concurrentPerform(iterations: n, execute: unsafeBitCast(escapable, to: (@Sendable (Int) -> Void).self))
        }
    }

    /// Encodes elements [0, total) of `new` in chunks of `chunkElements`; `base(start, count, scratch)` gives the
    /// base of a chunk (a pointer into the base, or a prediction written into `scratch`, count × width bytes).
    func encode(new: UnsafeRawPointer, total: Int, chunkElements: Int, width: Int,
                base: (Int, Int, UnsafeMutableRawPointer) -> UnsafeRawPointer,
                sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var start = 0
        while start < total {
            let starts = (0..<slots.count).map { start + $0 * chunkElements }.filter { $0 < total }
            for (s, slotStart) in starts.enumerated() {
                let n = min(chunkElements, total - slotStart)
                Slot.ensure(&slots[s].range, OrderedDeltaChunks.rangeCapacity(n))
                Slot.ensure(&slots[s].raw, OrderedDeltaCoder.rawBound(count: n, width: width))
                Slot.ensure(&slots[s].prediction, n * width)
            }
            let slots = self.slots
            OrderedDeltaChunks.concurrently(starts.count) { s in
                let slot = slots[s]
                let first = starts[s]
                let n = min(chunkElements, total - first)
                let b = base(first, n, slot.prediction.baseAddress!)
                let lengths: (range0: Int, range1: Int, raw: Int)?
                if width == 4 {
                    lengths = OrderedDeltaCoder.encode(new: (new + first * 4).assumingMemoryBound(to: UInt32.self), base: b.assumingMemoryBound(to: UInt32.self),
                                                       count: n, range: slot.range, raw: slot.raw, as: UInt32.self)
                } else {
                    lengths = OrderedDeltaCoder.encode(new: (new + first * 2).assumingMemoryBound(to: UInt16.self), base: b.assumingMemoryBound(to: UInt16.self),
                                                       count: n, range: slot.range, raw: slot.raw, as: UInt16.self)
                }
                slot.ok = lengths != nil
                slot.lengths = lengths ?? (0, 0, 0)
            }
            for s in 0..<starts.count {
                let slot = slots[s]
                guard slot.ok else { throw TesseraError(.io, "internal error: a delta chunk overflowed its bound") }
                var header = [UInt8](repeating: 0, count: 12)
                storeU32(UInt32(slot.lengths.range0), into: &header, at: 0)
                storeU32(UInt32(slot.lengths.range1), into: &header, at: 4)
                storeU32(UInt32(slot.lengths.raw), into: &header, at: 8)
                try header.withUnsafeBytes { try sink($0) }
                let n = min(chunkElements, total - starts[s])
                let second = OrderedDeltaCoder.rangeBound(count: OrderedDeltaCoder.laneCount(n, lane: 0))
                try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.range)[0..<slot.lengths.range0]))
                try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.range)[second..<(second + slot.lengths.range1)]))
                try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.raw)[0..<slot.lengths.raw]))
            }
            start += starts.count * chunkElements
        }
    }

    /// Decodes elements [0, total) from `cursor`, handing each chunk's bytes to `sink` in order.
    func decode(_ cursor: PayloadCursor, total: Int, chunkElements: Int, width: Int,
                base: (Int, Int, UnsafeMutableRawPointer) -> UnsafeRawPointer,
                sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var start = 0
        while start < total {
            let starts = (0..<slots.count).map { start + $0 * chunkElements }.filter { $0 < total }
            for (s, first) in starts.enumerated() {
                let n = min(chunkElements, total - first)
                let slot = slots[s]
                let range0 = Int(try cursor.readU32()), range1 = Int(try cursor.readU32()), rawLength = Int(try cursor.readU32())
                guard range0 >= 5, range0 <= OrderedDeltaCoder.rangeBound(count: OrderedDeltaCoder.laneCount(n, lane: 0)),
                      range1 >= 5, range1 <= OrderedDeltaCoder.rangeBound(count: OrderedDeltaCoder.laneCount(n, lane: 1)),
                      rawLength <= OrderedDeltaCoder.rawBound(count: n, width: width) else {
                    throw cursor.payload.corrupt("a delta chunk's recorded lengths (\(range0), \(range1), \(rawLength)) are impossible for \(n) elements")
                }
                Slot.ensure(&slot.range, range0 + range1)
                Slot.ensure(&slot.raw, rawLength)
                Slot.ensure(&slot.values, n * width)
                Slot.ensure(&slot.prediction, n * width)
                try cursor.read(into: UnsafeMutableRawBufferPointer(rebasing: slot.range[0..<(range0 + range1)]))
                try cursor.read(into: UnsafeMutableRawBufferPointer(rebasing: slot.raw[0..<rawLength]))
                slot.lengths = (range0, range1, rawLength)
            }
            let slots = self.slots
            OrderedDeltaChunks.concurrently(starts.count) { s in
                let slot = slots[s]
                let first = starts[s]
                let n = min(chunkElements, total - first)
                let b = base(first, n, slot.prediction.baseAddress!)
                let all = UnsafeRawBufferPointer(slot.range)
                let range0 = UnsafeRawBufferPointer(rebasing: all[0..<slot.lengths.range0])
                let range1 = UnsafeRawBufferPointer(rebasing: all[slot.lengths.range0..<(slot.lengths.range0 + slot.lengths.range1)])
                let raw = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.raw)[0..<slot.lengths.raw])
                if width == 4 {
                    slot.ok = OrderedDeltaCoder.decode(base: b.assumingMemoryBound(to: UInt32.self), out: slot.values.baseAddress!.assumingMemoryBound(to: UInt32.self),
                                                       count: n, range0: range0, range1: range1, raw: raw)
                } else {
                    slot.ok = OrderedDeltaCoder.decode(base: b.assumingMemoryBound(to: UInt16.self), out: slot.values.baseAddress!.assumingMemoryBound(to: UInt16.self),
                                                       count: n, range0: range0, range1: range1, raw: raw)
                }
            }
            for s in 0..<starts.count {
                guard slots[s].ok else { throw cursor.payload.corrupt("a delta chunk does not decode") }
                let n = min(chunkElements, total - starts[s])
                try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slots[s].values)[0..<(n * width)]))
            }
            start += starts.count * chunkElements
        }
    }
}

@inline(__always) func storeU32(_ v: UInt32, into a: inout [UInt8], at i: Int) {
    for k in 0..<4 { a[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(k))) }
}

/// An object's payload read as a sequence of exact-length fields, across the reader's 1 MiB blocks.
final class PayloadCursor {
    let payload: PayloadReader
    private var position = 0

    init(_ payload: PayloadReader) { self.payload = payload }

    func read(into destination: UnsafeMutableRawBufferPointer) throws {
        var filled = 0
        while filled < destination.count {
            if position == payload.blockLength {
                position = 0
                if try payload.nextBlock() == 0 { throw payload.corrupt("its data ends early") }
            }
            let n = min(destination.count - filled, payload.blockLength - position)
            payload.withBlock { block in
                (destination.baseAddress! + filled).copyMemory(from: block.baseAddress! + position, byteCount: n)
            }
            filled += n
            position += n
        }
    }

    func readBytes(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0) }
        return out
    }

    func readU8() throws -> UInt8 {
        if position == payload.blockLength {
            position = 0
            if try payload.nextBlock() == 0 { throw payload.corrupt("its data ends early") }
        }
        let byte = payload.withBlock { $0[position] }
        position += 1
        return byte
    }

    func readU32() throws -> UInt32 {
        let b = try readBytes(4)
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }

    func readU64() throws -> UInt64 {
        let b = try readBytes(8)
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(b[k]) << (8 * UInt64(k)) }
        return v
    }

    /// The payload must end here.
    func expectEnd() throws {
        if position < payload.blockLength || payload.remaining > 0 { throw payload.corrupt("it has data after its end") }
    }
}
