import Dispatch
import Foundation
import TesseraCore
import TesseraIO
import CKernels

// Versions 2 and 3 of the ordered-delta payload (`adeltaW` and `lowrank4` with version byte 2 or 3): the same
// differences as version 1 (`OrderedDeltaCoder`), coded with static tables instead of adaptive binary decisions. A
// first pass counts, per base-exponent context, the symbol (bit length and the bits just below the leading one) of
// every element; the tables go in the payload, and each element then costs one rANS step plus its raw bits. Decoding
// is a table lookup, a multiply and an add per element (no division, no per-bit decision), which made it several
// times faster. The versions differ in how many bits below the leading one the symbol holds (`DeltaSymbols`): one in
// version 2; in version 3 one or two, the encoder's choice per object (a byte before the tables), whichever codes it
// in fewer bits with its tables. Two halve the width of the uniform steps the raw bits assume: on a dense fine-tune's
// Gaussian differences, 0.011 bit per element above their conditional entropy instead of 0.028
// (bench/dense_entropy.py); but their tables are twice as long, which a small tensor does not pay back.

/// How a difference d is split into a coded symbol and raw bits: with k the bit length of |d| and `below` the bits
/// under the leading one that the symbol holds, |d| itself when k ≤ below + 1, else (k − below) · 2^below + those
/// bits; the raw bits are the sign (when d ≠ 0) and the k − 1 − below bits left under them.
struct DeltaSymbols: Sendable {
    let below: Int

    /// The bit below the leading one: payload version 2's symbols, and version 3's when they cost less.
    static let oneBitBelow = DeltaSymbols(below: 1)
    /// The two bits below it: version 3's other symbols.
    static let twoBitsBelow = DeltaSymbols(below: 2)
    /// The values of version 3's symbols byte.
    static let choices: ClosedRange<UInt8> = 1...2

    /// The symbol standing for the magnitudes whose leading bits are those of `m` (m > 0).
    func symbol(ofMagnitude m: UInt64) -> Int {
        let k = 64 - m.leadingZeroBitCount
        return k <= below + 1 ? Int(m) : (k - below) << below | Int((m >> UInt64(k - 1 - below)) & ((1 << UInt64(below)) - 1))
    }

    /// Symbols for `bits`-wide elements: up to bit length `bits` (version 2: 64 for 32-bit elements, 32 for 16-bit;
    /// version 3: 124 and 60). Under 128: a decoding table entry holds a symbol in 7 bits.
    func alphabet(bits: Int) -> Int { (bits - below + 1) << below }

    /// Symbols that stand for |d| itself (every bit of it coded).
    private var exact: Int { 2 << below }

    /// Raw bits stored for a symbol: the sign when d ≠ 0, then the bits below the coded ones.
    func rawBits(ofSymbol s: Int) -> Int {
        if s == 0 { return 0 }
        if s < exact { return 1 }
        return s >> below
    }

    /// The magnitude bits a symbol fixes: the leading one and the bits below it that it holds, in place.
    func magnitudeHigh(ofSymbol s: Int) -> UInt64 {
        if s < exact { return UInt64(s) }
        let k = (s >> below) + below
        return UInt64((1 << below) | (s & ((1 << below) - 1))) << UInt64(k - 1 - below)
    }

    /// Symbol and raw bits (value, count) of the difference between two patterns, for symbols holding `below` bits
    /// under the leading one: the definition. The encoder computes the same values in CKernels
    /// (`tessera_delta_split`, `tessera_delta_count`), vectorised; `DeltaKernelTests` holds the two to each other.
    @inline(__always) static func analyse(_ n: UInt32, _ b: UInt32, bits: Int, below: Int) -> (symbol: Int, raw: UInt64, rawCount: Int) {
        // Without branches: the sign of a fine-tune's difference is a coin toss, and a branch on it was mispredicted
        // half the time (the encoder's hottest instruction). Both ordered values fit in `bits` + 1 bits, so the
        // subtraction cannot overflow.
        let d = OrderedDeltaCoder.ordered(n, bits: bits) &- OrderedDeltaCoder.ordered(b, bits: bits)
        let negative = d &>> 63
        let m = UInt64(bitPattern: (d ^ negative) &- negative)
        let sign = UInt64(bitPattern: negative) & 1
        let k = 64 &- m.leadingZeroBitCount
        let exact = k <= below &+ 1
        let low = exact ? 0 : k &- 1 &- below
        let coded = (k &- below) &<< below | Int(truncatingIfNeeded: (m &>> UInt64(low)) & ((1 &<< UInt64(below)) &- 1))
        let symbol = exact ? Int(truncatingIfNeeded: m) : coded
        let raw = ((m & ((1 &<< UInt64(low)) &- 1)) &<< 1) | sign
        return (symbol, raw, m == 0 ? 0 : low &+ 1)
    }
}

/// The tables and the rANS steps of the static coder.
enum StaticDeltaCoder {
    /// Probabilities are in 1/4096ths.
    static let scaleBits: UInt32 = 12
    static let scale = 1 << 12
    /// rANS states live in [2^16, 2^32) and move by 16-bit words.
    static let lowerBound: UInt32 = 1 << 16
    /// Independent rANS states interleaved in one stream: element i uses state i mod 4, so four dependency chains
    /// overlap on one core.
    static let states = 4
    static let contexts = 256
    /// A context with fewer elements than this shares the pooled table (its own would cost more than it saves).
    static let ownTableMinimum = 1024
    static let maximumOwnTables = 255

    @inline(__always) static func context(_ b: UInt32, bits: Int) -> Int { Int((b >> UInt32(bits - 9)) & 0xFF) }

    /// Frequencies summing to `scale` for `counts` (total > 0): every symbol that occurs gets at least 1.
    static func normalise(_ counts: UnsafeBufferPointer<UInt32>) -> [Int] {
        let total = counts.reduce(0) { $0 + Int($1) }
        var f = [Int](repeating: 0, count: counts.count)
        guard total > 0 else { f[0] = scale; return f }
        var sum = 0
        for (i, c) in counts.enumerated() where c > 0 {
            f[i] = max(1, Int((Double(c) * Double(scale) / Double(total)).rounded()))
            sum += f[i]
        }
        // Rounding leaves the sum a little off: the largest frequencies absorb it (relatively the least change).
        while sum != scale {
            var largest = 0
            for i in 1..<f.count where f[i] > f[largest] { largest = i }
            if sum < scale {
                f[largest] += scale - sum
                sum = scale
            } else {
                // Take from the largest that can give (at most `alphabet` rounds of at least one each).
                let take = min(sum - scale, f[largest] - 1)
                f[largest] -= take
                sum -= take
                if take == 0 { break }
            }
        }
        return f
    }

    // MARK: Chunk coding

    /// The most rANS bytes a chunk of `count` elements takes: a 16-bit word per element at most, plus the states.
    static func streamBound(count: Int) -> Int { 2 * count + 4 * states }
    /// The most raw-bit bytes: under 32 bits per element.
    static func rawBound(count: Int, width: Int) -> Int { count * width + 16 }

    /// Per-chunk encoding: symbols into `symbols` and raw bits (forward), then rANS (backward). Returns the stream's
    /// start within `stream` and the lengths, or nil if a buffer was too small (impossible by the bounds).
    static func encode(new: UnsafeRawPointer, base: UnsafeRawPointer, count: Int, bits: Int, tables: EncodingTables,
                       symbols: UnsafeMutablePointer<UInt8>, stream: UnsafeMutableRawBufferPointer,
                       raw: UnsafeMutableRawBufferPointer) -> (start: Int, length: Int, raw: Int)? {
        guard stream.count >= streamBound(count: count), count > 0 else { return nil }
        guard raw.count >= rawBound(count: count, width: bits / 8) + padding else { return nil }
        // Symbols and raw bits: CKernels (vectorised where the CPU allows), the values `DeltaSymbols.analyse` defines.
        var writer = tessera_bit_writer(out: raw.baseAddress!.assumingMemoryBound(to: UInt8.self), accumulator: 0, filled: 0, position: 0)
        tessera_delta_split(new, base, count, Int32(bits / 8), Int32(tables.model.below), symbols, &writer)
        // The pending bits go out as a last partial byte.
        (raw.baseAddress! + Int(writer.position)).storeBytes(of: writer.accumulator.littleEndian, as: UInt64.self)
        let rawLength = Int(writer.position) + (writer.filled > 0 ? 1 : 0)
        // Words are written backwards from the end; the decoder reads them forwards.
        let words = stream.baseAddress!.assumingMemoryBound(to: UInt16.self)
        let capacity = stream.count / 2
        var at = capacity
        var x0 = lowerBound, x1 = lowerBound, x2 = lowerBound, x3 = lowerBound
        let map = tables.tableOfContext
        let entries = tables.entries
        let alphabet = tables.alphabet
        let full = count & ~3
        if bits == 32 {
            let bw = base.assumingMemoryBound(to: UInt32.self)
            var i = count - 1
            while i >= full {
                let e = entries[Int(map[context(bw[i], bits: 32)]) &* alphabet &+ Int(symbols[i])]
                switch i & 3 {
                case 0: put(&x0, e, words, &at)
                case 1: put(&x1, e, words, &at)
                default: put(&x2, e, words, &at)
                }
                i -= 1
            }
            var g = full - 4
            while g >= 0 {
                put(&x3, entries[Int(map[context(bw[g + 3], bits: 32)]) &* alphabet &+ Int(symbols[g + 3])], words, &at)
                put(&x2, entries[Int(map[context(bw[g + 2], bits: 32)]) &* alphabet &+ Int(symbols[g + 2])], words, &at)
                put(&x1, entries[Int(map[context(bw[g + 1], bits: 32)]) &* alphabet &+ Int(symbols[g + 1])], words, &at)
                put(&x0, entries[Int(map[context(bw[g], bits: 32)]) &* alphabet &+ Int(symbols[g])], words, &at)
                g -= 4
            }
        } else {
            let bw = base.assumingMemoryBound(to: UInt16.self)
            var i = count - 1
            while i >= full {
                let e = entries[Int(map[context(UInt32(bw[i]), bits: 16)]) &* alphabet &+ Int(symbols[i])]
                switch i & 3 {
                case 0: put(&x0, e, words, &at)
                case 1: put(&x1, e, words, &at)
                default: put(&x2, e, words, &at)
                }
                i -= 1
            }
            var g = full - 4
            while g >= 0 {
                put(&x3, entries[Int(map[context(UInt32(bw[g + 3]), bits: 16)]) &* alphabet &+ Int(symbols[g + 3])], words, &at)
                put(&x2, entries[Int(map[context(UInt32(bw[g + 2]), bits: 16)]) &* alphabet &+ Int(symbols[g + 2])], words, &at)
                put(&x1, entries[Int(map[context(UInt32(bw[g + 1]), bits: 16)]) &* alphabet &+ Int(symbols[g + 1])], words, &at)
                put(&x0, entries[Int(map[context(UInt32(bw[g]), bits: 16)]) &* alphabet &+ Int(symbols[g])], words, &at)
                g -= 4
            }
        }
        for x in [x3, x2, x1, x0] {
            at -= 2
            words[at] = UInt16(truncatingIfNeeded: x).littleEndian
            words[at + 1] = UInt16(truncatingIfNeeded: x >> 16).littleEndian
        }
        return (2 * at, 2 * (capacity - at), rawLength)
    }

    /// One rANS encoding step of a symbol whose table entry is `e` (`freq | cum << 16`): out one word if the state
    /// would leave its range, then x → (x / freq) · 4096 + x mod freq + cum.
    @inline(__always) static func put(_ x: inout UInt32, _ e: UInt32, _ words: UnsafeMutablePointer<UInt16>, _ at: inout Int) {
        let freq = e & 0xFFFF, cum = e >> 16
        // Selects, not a branch: whether a word goes out is close to random. The word below `at` is free (the
        // states go there at the end), so writing it when it is not kept costs nothing.
        let out = UInt64(x) >= UInt64(freq) << 20
        words[at &- 1] = UInt16(truncatingIfNeeded: x).littleEndian
        at &-= out ? 1 : 0
        x = out ? x >> 16 : x
        x = ((x / freq) << scaleBits) &+ (x % freq) &+ cum
    }

    /// Bytes after each buffer the branch-free readers may load from (and writers store into): zeros, never data.
    static let padding = 8

    /// The 16-bit words of a chunk's rANS stream, read forwards without branches: a word is always loaded (from the
    /// padding once the stream is used up: the position is clamped to the end) and kept only when the state needs
    /// it. Reading past the end shows in `position` > `end`.
    struct WordReader {
        let input: UnsafeRawPointer
        var position: Int
        let end: Int

        @inline(__always) mutating func refill(_ x: inout UInt32) {
            let word = UInt32(UInt16(littleEndian: (input + min(position, end)).loadUnaligned(as: UInt16.self)))
            let need = x < lowerBound
            x = need ? (x << 16) | word : x
            position &+= need ? 2 : 0
        }
    }

    /// Raw bits read LSB-first by bit position: one unaligned 64-bit load per read (≥ 57 valid bits; reads take
    /// at most 32), no refill branch. The byte position is clamped to the length, so a corrupt stream reads the
    /// padding; `bitPosition` then runs past the end, which the caller checks.
    struct PaddedBitReader {
        let input: UnsafeRawPointer
        let length: Int
        var bitPosition = 0

        @inline(__always) mutating func take(_ n: Int) -> UInt64 {
            let word = UInt64(littleEndian: (input + min(bitPosition &>> 3, length)).loadUnaligned(as: UInt64.self))
            let v = (word &>> UInt64(bitPosition & 7)) & ((1 &<< UInt64(n)) &- 1)
            bitPosition &+= n
            return v
        }

        /// Every bit read, and no whole byte left over.
        var consumedExactly: Bool { (bitPosition + 7) >> 3 == length }
    }

    /// One element: its symbol from the state's low 12 bits in its context's table, the state advanced (a multiply and
    /// an add), its raw bits, and the value rebuilt from the base. `bad` collects values outside the type.
    @inline(__always) static func take(_ x: inout UInt32, _ b: UInt32, bits: Int, slots: UnsafeMutablePointer<UInt32>,
                                       map: UnsafeMutablePointer<UInt8>, high: UnsafeMutablePointer<UInt64>, rawCount: UnsafeMutablePointer<UInt8>,
                                       words: inout WordReader, rr: inout PaddedBitReader, bad: inout UInt32) -> UInt32 {
        let e = slots[(Int(map[context(b, bits: bits)]) &<< 12) | Int(x & 0xFFF)]
        let s = Int(e &>> 25)
        x = (e & 0x1FFF) &* (x &>> 12) &+ ((e &>> 13) & 0xFFF)
        words.refill(&x)
        let r = rr.take(Int(rawCount[s]))
        let m = Int64(bitPattern: high[s] | (r &>> 1))
        let signBit = UInt32(1) &<< UInt32(bits - 1)
        let magnitude = Int64(b & ~signBit)
        let ob: Int64 = b & signBit == 0 ? magnitude : (0 &- magnitude) &- 1
        let v = ob &+ ((r & 1) == 0 ? m : 0 &- m)
        let half = Int64(1) &<< Int64(bits - 1)
        bad |= (v < 0 &- half || v >= half) ? 1 : 0
        return v >= 0 ? UInt32(truncatingIfNeeded: v) : UInt32(truncatingIfNeeded: (0 &- v) &- 1) | signBit
    }

    /// Decodes `count` elements; false if the streams are corrupt (a stream that ends early or has bytes left over,
    /// a state that does not return to its start, a value outside the type). CKernels' `tessera_delta_decode` (symbols
    /// first, then values sixteen at a time), whose results `decodeReference` defines.
    static func decode(base: UnsafeRawPointer, out: UnsafeMutableRawPointer, count: Int, bits: Int, tables: DecodingTables,
                       stream: UnsafeRawBufferPointer, raw: UnsafeRawBufferPointer) -> Bool {
        guard let input = stream.baseAddress else { return false }
        // An empty raw stream is still read through its padding: any 8 readable bytes will do.
        let rawStart = raw.baseAddress ?? input
        return tessera_delta_decode(base, out, count, Int32(bits / 8), Int32(tables.below), tables.tableOfContext, tables.slots,
                                    input.assumingMemoryBound(to: UInt8.self), stream.count,
                                    rawStart.assumingMemoryBound(to: UInt8.self), raw.count) == 1
    }

    /// The decoder element by element, as the format defines it: what `decode` must compute, for tests.
    static func decodeReference(base: UnsafeRawPointer, out: UnsafeMutableRawPointer, count: Int, bits: Int, tables: DecodingTables,
                                        stream: UnsafeRawBufferPointer, raw: UnsafeRawBufferPointer) -> Bool {
        guard stream.count >= 4 * states, stream.count % 2 == 0, let input = stream.baseAddress else { return false }
        @inline(__always) func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: (input + at).loadUnaligned(as: UInt32.self)) }
        var x0 = u32(0), x1 = u32(4), x2 = u32(8), x3 = u32(12)
        guard x0 >= lowerBound, x1 >= lowerBound, x2 >= lowerBound, x3 >= lowerBound else { return false }
        // Both buffers are followed by `padding` bytes the readers may load (StaticDeltaChunks allocates them).
        var words = WordReader(input: UnsafeRawPointer(input), position: 4 * states, end: stream.count)
        var rr = PaddedBitReader(input: raw.baseAddress ?? UnsafeRawPointer(input), length: raw.count)
        var bad: UInt32 = 0
        let map = tables.tableOfContext
        let slots = tables.slots
        let high = tables.magnitudeHigh
        let rawCount = tables.rawCount
        let full = count & ~3
        if bits == 32 {
            let bw = base.assumingMemoryBound(to: UInt32.self), ow = out.assumingMemoryBound(to: UInt32.self)
            var g = 0
            while g < full {
                ow[g] = take(&x0, bw[g], bits: 32, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad)
                ow[g + 1] = take(&x1, bw[g + 1], bits: 32, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad)
                ow[g + 2] = take(&x2, bw[g + 2], bits: 32, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad)
                ow[g + 3] = take(&x3, bw[g + 3], bits: 32, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad)
                g += 4
            }
            while g < count {
                switch g & 3 {
                case 0: ow[g] = take(&x0, bw[g], bits: 32, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad)
                case 1: ow[g] = take(&x1, bw[g], bits: 32, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad)
                default: ow[g] = take(&x2, bw[g], bits: 32, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad)
                }
                g += 1
            }
        } else {
            let bw = base.assumingMemoryBound(to: UInt16.self), ow = out.assumingMemoryBound(to: UInt16.self)
            var g = 0
            while g < full {
                ow[g] = UInt16(truncatingIfNeeded: take(&x0, UInt32(bw[g]), bits: 16, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad))
                ow[g + 1] = UInt16(truncatingIfNeeded: take(&x1, UInt32(bw[g + 1]), bits: 16, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad))
                ow[g + 2] = UInt16(truncatingIfNeeded: take(&x2, UInt32(bw[g + 2]), bits: 16, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad))
                ow[g + 3] = UInt16(truncatingIfNeeded: take(&x3, UInt32(bw[g + 3]), bits: 16, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad))
                g += 4
            }
            while g < count {
                switch g & 3 {
                case 0: ow[g] = UInt16(truncatingIfNeeded: take(&x0, UInt32(bw[g]), bits: 16, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad))
                case 1: ow[g] = UInt16(truncatingIfNeeded: take(&x1, UInt32(bw[g]), bits: 16, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad))
                default: ow[g] = UInt16(truncatingIfNeeded: take(&x2, UInt32(bw[g]), bits: 16, slots: slots, map: map, high: high, rawCount: rawCount, words: &words, rr: &rr, bad: &bad))
                }
                g += 1
            }
        }
        // The encoder started every state at the lower bound: a valid stream ends exactly there, with every word read.
        return bad == 0 && words.position == words.end && x0 == lowerBound && x1 == lowerBound && x2 == lowerBound && x3 == lowerBound
            && rr.consumedExactly
    }
}

/// The encoder's tables: per table, per symbol, `freq | cum << 16`.
final class EncodingTables: @unchecked Sendable {
    // @unchecked: immutable once built; read by both coding threads.
    let model: DeltaSymbols
    let alphabet: Int
    let tableOfContext: UnsafeMutablePointer<UInt8>
    let entries: UnsafeMutablePointer<UInt32>
    /// The serialised form (what the decoder reads).
    let bytes: [UInt8]
    /// What coding the counted symbols with these tables costs: their rANS bits at these frequencies, their raw bits
    /// and the tables' own bytes.
    let codedBits: Double

    /// Tables for the symbol counts `histogram` (contexts × the alphabet of `model`).
    init(histogram: UnsafeBufferPointer<UInt32>, bits: Int, model: DeltaSymbols) {
        let a = model.alphabet(bits: bits)
        self.model = model
        alphabet = a
        var totals = [Int](repeating: 0, count: StaticDeltaCoder.contexts)
        for c in 0..<StaticDeltaCoder.contexts {
            for s in 0..<a { totals[c] += Int(histogram[c * a + s]) }
        }
        let own = (0..<StaticDeltaCoder.contexts).filter { totals[$0] >= StaticDeltaCoder.ownTableMinimum }
            .sorted { totals[$0] > totals[$1] }.prefix(StaticDeltaCoder.maximumOwnTables).sorted()
        let tableCount = own.count + 1
        tableOfContext = .allocate(capacity: StaticDeltaCoder.contexts)
        tableOfContext.initialize(repeating: UInt8(truncatingIfNeeded: own.count), count: StaticDeltaCoder.contexts)
        for (t, c) in own.enumerated() { tableOfContext[c] = UInt8(t) }
        var counts = [UInt32](repeating: 0, count: tableCount * a)
        for c in 0..<StaticDeltaCoder.contexts {
            let t = Int(tableOfContext[c])
            for s in 0..<a { counts[t * a + s] &+= histogram[c * a + s] }
        }
        entries = .allocate(capacity: tableCount * a)
        var out: [UInt8] = [UInt8(own.count)] + own.map { UInt8($0) }
        var bits = 0.0
        for t in 0..<tableCount {
            let f = counts.withUnsafeBufferPointer { StaticDeltaCoder.normalise(UnsafeBufferPointer(rebasing: $0[(t * a)..<((t + 1) * a)])) }
            var cum = 0
            for s in 0..<a {
                entries[t * a + s] = UInt32(f[s]) | UInt32(cum) << 16
                cum += f[s]
                let n = Double(counts[t * a + s])
                if n > 0 { bits += n * (Double(StaticDeltaCoder.scaleBits) - log2(Double(f[s])) + Double(model.rawBits(ofSymbol: s))) }
            }
            let first = f.firstIndex { $0 > 0 } ?? 0, last = f.lastIndex { $0 > 0 } ?? 0
            out.append(UInt8(first))
            out.append(UInt8(last))
            for s in first...last {
                var v = f[s]
                while v >= 0x80 { out.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
                out.append(UInt8(v))
            }
        }
        bytes = out
        codedBits = bits + Double(8 * out.count)
    }

    deinit { tableOfContext.deallocate(); entries.deallocate() }
}

/// The decoder's tables, read from a payload: per table, per 12-bit slot, `freq | (slot − cum) << 13 | symbol << 25`.
final class DecodingTables: @unchecked Sendable {
    // @unchecked: immutable once read; read by both decoding threads.
    let tableOfContext: UnsafeMutablePointer<UInt8>
    let slots: UnsafeMutablePointer<UInt32>
    let magnitudeHigh: UnsafeMutablePointer<UInt64>
    let rawCount: UnsafeMutablePointer<UInt8>
    /// The bits under a difference's leading one that a symbol holds (`DeltaSymbols.below`).
    let below: Int

    /// Reads the tables of `bits`-wide elements coded with `model`'s symbols; throws if they are malformed (a
    /// frequency sum other than 4096, a symbol outside the alphabet, a context named twice).
    init(_ cursor: PayloadCursor, bits: Int, model: DeltaSymbols) throws {
        let a = model.alphabet(bits: bits)
        below = model.below
        let ownCount = Int(try cursor.readU8())
        let contexts = try cursor.readBytes(ownCount)
        tableOfContext = .allocate(capacity: StaticDeltaCoder.contexts)
        tableOfContext.initialize(repeating: UInt8(truncatingIfNeeded: ownCount), count: StaticDeltaCoder.contexts)
        // Allocated before anything can throw below, so deinit frees them on every path.
        slots = .allocate(capacity: (ownCount + 1) << 12)
        magnitudeHigh = .allocate(capacity: a)
        rawCount = .allocate(capacity: a)
        for s in 0..<a {
            magnitudeHigh[s] = model.magnitudeHigh(ofSymbol: s)
            rawCount[s] = UInt8(model.rawBits(ofSymbol: s))
        }
        var previous = -1
        for (t, c) in contexts.enumerated() {
            guard Int(c) > previous else { throw cursor.payload.corrupt("its delta tables name a context twice or out of order") }
            previous = Int(c)
            tableOfContext[Int(c)] = UInt8(t)
        }
        for t in 0...ownCount {
            let first = Int(try cursor.readU8()), last = Int(try cursor.readU8())
            guard first <= last, last < a else { throw cursor.payload.corrupt("a delta table's symbols \(first)…\(last) are outside 0…\(a - 1)") }
            var cum = 0
            let table = slots + (t << 12)
            for s in first...last {
                var v = 0
                var shift = 0
                while true {
                    let byte = Int(try cursor.readU8())
                    v |= (byte & 0x7F) << shift
                    if byte < 0x80 { break }
                    shift += 7
                    guard shift < 14 else { throw cursor.payload.corrupt("a delta table's frequency is too long") }
                }
                guard v <= StaticDeltaCoder.scale - cum else { throw cursor.payload.corrupt("a delta table's frequencies exceed \(StaticDeltaCoder.scale)") }
                for slot in cum..<(cum + v) {
                    table[slot] = UInt32(v) | UInt32(slot - cum) << 13 | UInt32(s) << 25
                }
                cum += v
            }
            guard cum == StaticDeltaCoder.scale else { throw cursor.payload.corrupt("a delta table's frequencies sum to \(cum), not \(StaticDeltaCoder.scale)") }
        }
    }

    deinit { tableOfContext.deallocate(); slots.deallocate(); magnitudeHigh.deallocate(); rawCount.deallocate() }
}

/// The version 2 and 3 payloads after a codec's own header: `[version 3: u8 bits below the leading one in a symbol, 1
/// or 2] | tables | chunks`, each chunk `u32 stream length | u32 raw length | rANS stream | raw bits`, coded two at a
/// time on two cores.
final class StaticDeltaChunks {
    private final class Slot {
        var stream: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var raw: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var symbols: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var prediction: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var values: UnsafeMutableRawBufferPointer = .init(start: nil, count: 0)
        var histogram: UnsafeMutableBufferPointer<UInt32> = .init(start: nil, count: 0)
        var lengths = (start: 0, stream: 0, raw: 0)
        var ok = true

        static func ensure(_ buffer: inout UnsafeMutableRawBufferPointer, _ count: Int) {
            if buffer.count >= count { return }
            buffer.deallocate()
            buffer = .allocate(byteCount: count, alignment: 64)
        }

        deinit {
            stream.deallocate(); raw.deallocate(); symbols.deallocate(); prediction.deallocate(); values.deallocate()
            histogram.deallocate()
        }
    }

    private let slots = (0..<OrderedDeltaChunks.parallelism).map { _ in Slot() }
    /// Decode with `StaticDeltaCoder.decodeReference` instead of the kernel: for tests that hold the two to each other.
    package var elementByElement = false

    /// Encodes elements [0, total) of `new` in chunks of `chunkElements` (see `OrderedDeltaChunks.encode`) as payload
    /// `version` (2 or 3): the symbol counts of every chunk first, then (version 3) the symbols that cost less with
    /// their tables, then the tables, then the chunks.
    func encode(new: UnsafeRawPointer, total: Int, chunkElements: Int, width: Int, version: UInt8,
                base: (Int, Int, UnsafeMutableRawPointer) -> UnsafeRawPointer,
                sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let bits = width * 8
        // Counted in the finer symbols: the coarser ones' counts follow from them.
        let model: DeltaSymbols = version == 2 ? .oneBitBelow : .twoBitsBelow
        let a = model.alphabet(bits: bits)
        let histogramSize = StaticDeltaCoder.contexts * a
        let chunkCount = (total + chunkElements - 1) / chunkElements
        for slot in slots {
            if slot.histogram.count < histogramSize { slot.histogram.deallocate(); slot.histogram = .allocate(capacity: histogramSize) }
            slot.histogram.initialize(repeating: 0)
            Slot.ensure(&slot.prediction, min(chunkElements, total) * width)
        }
        let slots = self.slots
        // Pass 1: symbol counts, chunk s·k + s on thread s.
        OrderedDeltaChunks.concurrently(min(slots.count, chunkCount)) { s in
            let slot = slots[s]
            var c = s
            while c < chunkCount {
                let first = c * chunkElements, n = min(chunkElements, total - first)
                let b = base(first, n, slot.prediction.baseAddress!)
                let h = slot.histogram.baseAddress!
                tessera_delta_count(new + first * width, b, n, Int32(width), Int32(model.below), a, h)
                c += slots.count
            }
        }
        for slot in slots.dropFirst() {
            for i in 0..<histogramSize { slots[0].histogram[i] &+= slot.histogram[i] }
        }
        var tables = EncodingTables(histogram: UnsafeBufferPointer(slots[0].histogram), bits: bits, model: model)
        if version >= 3 {
            let coarse = DeltaSymbols.oneBitBelow
            let ca = coarse.alphabet(bits: bits)
            let coarser = (0..<a).map { $0 == 0 ? 0 : coarse.symbol(ofMagnitude: model.magnitudeHigh(ofSymbol: $0)) }
            var histogram = [UInt32](repeating: 0, count: StaticDeltaCoder.contexts * ca)
            for c in 0..<StaticDeltaCoder.contexts {
                for s in 0..<a { histogram[c * ca + coarser[s]] &+= slots[0].histogram[c * a + s] }
            }
            let other = histogram.withUnsafeBufferPointer { EncodingTables(histogram: $0, bits: bits, model: coarse) }
            if other.codedBits < tables.codedBits { tables = other }
            try [UInt8(tables.model.below)].withUnsafeBytes { try sink($0) }
        }
        try tables.bytes.withUnsafeBytes { try sink($0) }
        // Pass 2: the chunks, two at a time.
        var start = 0
        while start < total {
            let starts = (0..<slots.count).map { start + $0 * chunkElements }.filter { $0 < total }
            for (s, slotStart) in starts.enumerated() {
                let n = min(chunkElements, total - slotStart)
                Slot.ensure(&slots[s].stream, StaticDeltaCoder.streamBound(count: n))
                Slot.ensure(&slots[s].raw, StaticDeltaCoder.rawBound(count: n, width: width) + StaticDeltaCoder.padding)
                Slot.ensure(&slots[s].symbols, n)
                Slot.ensure(&slots[s].prediction, n * width)
            }
            OrderedDeltaChunks.concurrently(starts.count) { s in
                let slot = slots[s]
                let first = starts[s]
                let n = min(chunkElements, total - first)
                let b = base(first, n, slot.prediction.baseAddress!)
                let r = StaticDeltaCoder.encode(new: new + first * width, base: b, count: n, bits: bits, tables: tables,
                                                symbols: slot.symbols.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                                stream: slot.stream, raw: slot.raw)
                slot.ok = r != nil
                slot.lengths = r ?? (0, 0, 0)
            }
            for s in 0..<starts.count {
                let slot = slots[s]
                guard slot.ok else { throw TesseraError(.io, "internal error: a delta chunk overflowed its bound") }
                var header = [UInt8](repeating: 0, count: 8)
                storeU32(UInt32(slot.lengths.stream), into: &header, at: 0)
                storeU32(UInt32(slot.lengths.raw), into: &header, at: 4)
                try header.withUnsafeBytes { try sink($0) }
                try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.stream)[slot.lengths.start..<(slot.lengths.start + slot.lengths.stream)]))
                try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.raw)[0..<slot.lengths.raw]))
            }
            start += starts.count * chunkElements
        }
    }

    /// Decodes elements [0, total) of payload `version` (2 or 3) from `cursor`. With `into` (exactly total × width
    /// bytes), each chunk is decoded in place there and `sink` gets that part of it; otherwise chunks go through a
    /// scratch buffer.
    func decode(_ cursor: PayloadCursor, total: Int, chunkElements: Int, width: Int, version: UInt8,
                base: (Int, Int, UnsafeMutableRawPointer) -> UnsafeRawPointer,
                into destination: UnsafeMutableRawPointer? = nil,
                sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let bits = width * 8
        var model = DeltaSymbols.oneBitBelow
        if version >= 3 {
            let below = try cursor.readU8()
            guard DeltaSymbols.choices.contains(below) else {
                throw cursor.payload.corrupt("its delta symbols hold \(below) bits below the leading one, not 1 or 2")
            }
            model = DeltaSymbols(below: Int(below))
        }
        let tables = try DecodingTables(cursor, bits: bits, model: model)
        var start = 0
        while start < total {
            let starts = (0..<slots.count).map { start + $0 * chunkElements }.filter { $0 < total }
            for (s, first) in starts.enumerated() {
                let n = min(chunkElements, total - first)
                let slot = slots[s]
                let streamLength = Int(try cursor.readU32()), rawLength = Int(try cursor.readU32())
                guard streamLength >= 4 * StaticDeltaCoder.states, streamLength <= StaticDeltaCoder.streamBound(count: n), streamLength % 2 == 0,
                      rawLength <= StaticDeltaCoder.rawBound(count: n, width: width) else {
                    throw cursor.payload.corrupt("a delta chunk's recorded lengths (\(streamLength), \(rawLength)) are impossible for \(n) elements")
                }
                // The readers may load up to `padding` bytes past each stream: zeros.
                Slot.ensure(&slot.stream, streamLength + StaticDeltaCoder.padding)
                Slot.ensure(&slot.raw, rawLength + StaticDeltaCoder.padding)
                UnsafeMutableRawBufferPointer(rebasing: slot.stream[streamLength..<(streamLength + StaticDeltaCoder.padding)]).initializeMemory(as: UInt8.self, repeating: 0)
                UnsafeMutableRawBufferPointer(rebasing: slot.raw[rawLength..<(rawLength + StaticDeltaCoder.padding)]).initializeMemory(as: UInt8.self, repeating: 0)
                if destination == nil { Slot.ensure(&slot.values, n * width) }
                Slot.ensure(&slot.prediction, n * width)
                try cursor.read(into: UnsafeMutableRawBufferPointer(rebasing: slot.stream[0..<streamLength]))
                try cursor.read(into: UnsafeMutableRawBufferPointer(rebasing: slot.raw[0..<rawLength]))
                slot.lengths = (0, streamLength, rawLength)
            }
            let slots = self.slots
            OrderedDeltaChunks.concurrently(starts.count) { s in
                let slot = slots[s]
                let first = starts[s]
                let n = min(chunkElements, total - first)
                let b = base(first, n, slot.prediction.baseAddress!)
                let out = destination.map { $0 + first * width } ?? slot.values.baseAddress!
                let stream = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.stream)[0..<slot.lengths.stream])
                let raw = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(slot.raw)[0..<slot.lengths.raw])
                slot.ok = elementByElement
                    ? StaticDeltaCoder.decodeReference(base: b, out: out, count: n, bits: bits, tables: tables, stream: stream, raw: raw)
                    : StaticDeltaCoder.decode(base: b, out: out, count: n, bits: bits, tables: tables, stream: stream, raw: raw)
            }
            for s in 0..<starts.count {
                guard slots[s].ok else { throw cursor.payload.corrupt("a delta chunk does not decode") }
                let n = min(chunkElements, total - starts[s])
                let out = destination.map { UnsafeRawPointer($0 + starts[s] * width) } ?? UnsafeRawPointer(slots[s].values.baseAddress!)
                try sink(UnsafeRawBufferPointer(start: out, count: n * width))
            }
            start += starts.count * chunkElements
        }
    }
}

/// The encoder's element analysis two ways, for `DeltaKernelTests`: by the definition (`DeltaSymbols.analyse`, raw
/// bits appended one at a time) and by the CKernels functions the encoder calls.
package enum DeltaSymbolsCheck {
    package struct Output: Equatable {
        package var symbols: [UInt8]
        package var raw: [UInt8]
        package var histogram: [UInt32]
    }

    /// `count` elements of `width` bytes (2 or 4) with symbols holding `below` bits (1 or 2) under the leading one.
    package static func reference(new: UnsafeRawPointer, base: UnsafeRawPointer, count: Int, width: Int, below: Int) -> Output {
        let bits = 8 * width
        let alphabet = DeltaSymbols(below: below).alphabet(bits: bits)
        var out = Output(symbols: [], raw: [], histogram: [UInt32](repeating: 0, count: StaticDeltaCoder.contexts * alphabet))
        var bitCount = 0
        for i in 0..<count {
            let n = width == 4 ? new.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) : UInt32(new.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
            let b = width == 4 ? base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) : UInt32(base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
            let a = DeltaSymbols.analyse(n, b, bits: bits, below: below)
            out.symbols.append(UInt8(a.symbol))
            out.histogram[StaticDeltaCoder.context(b, bits: bits) * alphabet + a.symbol] += 1
            for j in 0..<a.rawCount {
                if bitCount % 8 == 0 { out.raw.append(0) }
                out.raw[bitCount / 8] |= UInt8((a.raw >> UInt64(j)) & 1) << UInt8(bitCount % 8)
                bitCount += 1
            }
        }
        return out
    }

    /// The same through `tessera_delta_split` and `tessera_delta_count`, at whatever level CKernels runs.
    package static func kernel(new: UnsafeRawPointer, base: UnsafeRawPointer, count: Int, width: Int, below: Int) -> Output {
        let alphabet = DeltaSymbols(below: below).alphabet(bits: 8 * width)
        var symbols = [UInt8](repeating: 0, count: count)
        var raw = [UInt8](repeating: 0, count: StaticDeltaCoder.rawBound(count: count, width: width) + StaticDeltaCoder.padding)
        var histogram = [UInt32](repeating: 0, count: StaticDeltaCoder.contexts * alphabet)
        let length = raw.withUnsafeMutableBytes { rawBuffer -> Int in
            var writer = tessera_bit_writer(out: rawBuffer.baseAddress!.assumingMemoryBound(to: UInt8.self), accumulator: 0, filled: 0, position: 0)
            tessera_delta_split(new, base, count, Int32(width), Int32(below), &symbols, &writer)
            (rawBuffer.baseAddress! + Int(writer.position)).storeBytes(of: writer.accumulator.littleEndian, as: UInt64.self)
            return Int(writer.position) + (writer.filled > 0 ? 1 : 0)
        }
        tessera_delta_count(new, base, count, Int32(width), Int32(below), alphabet, &histogram)
        return Output(symbols: symbols, raw: Array(raw[0..<length]), histogram: histogram)
    }
}
