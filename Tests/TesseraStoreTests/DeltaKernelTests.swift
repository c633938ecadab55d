import CKernels
import Foundation
import Testing
import TesseraStore

/// The arithmetic delta encoder's element analysis runs in CKernels (AVX-512 where the CPU has it, a portable loop
/// otherwise). Both must give exactly the symbols, raw bits and symbol counts that `DeltaSymbols.analyse` defines,
/// for every kind of bit pattern: the decoder, which is Swift, reads them by that definition.
@Suite(.serialized) struct DeltaKernelTests {
    /// Patterns a fine-tune makes (a few ulps apart, either sign) and the ones it may not: signed zeros, subnormals,
    /// infinities, NaNs with payloads, the extremes, and pairs of opposite signs.
    static func patterns(width: Int, count: Int, seed: UInt64) -> (new: [UInt8], base: [UInt8]) {
        var state = seed
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let bits = 8 * width
        let mask: UInt64 = bits == 32 ? 0xFFFF_FFFF : 0xFFFF
        let sign: UInt64 = 1 << UInt64(bits - 1)
        let special: [UInt64] = bits == 32
            ? [0, 0x8000_0000, 1, 0x8000_0001, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0001, 0xFFFF_FFFF, 0x7FFF_FFFF, 0x0080_0000, 0x3F80_0000]
            : [0, 0x8000, 1, 0x8001, 0x7C00, 0xFC00, 0x7E01, 0xFFFF, 0x7FFF, 0x0400, 0x3C00]
        var new: [UInt8] = [], base: [UInt8] = []
        func append(_ v: UInt64, to a: inout [UInt8]) {
            for k in 0..<width { a.append(UInt8((v >> UInt64(8 * k)) & 0xFF)) }
        }
        for i in 0..<count {
            let b: UInt64, n: UInt64
            switch next() % 6 {
            case 0:  // a few ulps either way, same sign (most of a fine-tune)
                b = next() & mask & ~sign | (next() & 1 == 0 ? 0 : sign)
                let d = UInt64(next() % 64)
                n = (next() & 1 == 0 ? b &+ d : b &- d) & mask
            case 1:  // across zero
                b = next() % 8 | (next() & 1 == 0 ? 0 : sign)
                n = next() % 8 | (next() & 1 == 0 ? 0 : sign)
            case 2:
                b = special[i % special.count]
                n = special[Int(next() % UInt64(special.count))]
            case 3:  // equal
                b = next() & mask
                n = b
            default:  // anything
                b = next() & mask
                n = next() & mask
            }
            append(n, to: &new)
            append(b, to: &base)
        }
        return (new, base)
    }

    func check(width: Int, below: Int, count: Int, portable: Bool) {
        let (new, base) = DeltaKernelTests.patterns(width: width, count: count, seed: UInt64(width * 10 + below))
        if portable { tessera_kernels_force_portable(1) }
        defer { if portable { tessera_kernels_force_portable(0) } }
        new.withUnsafeBytes { n in
            base.withUnsafeBytes { b in
                let reference = DeltaSymbolsCheck.reference(new: n.baseAddress!, base: b.baseAddress!, count: count, width: width, below: below)
                let kernel = DeltaSymbolsCheck.kernel(new: n.baseAddress!, base: b.baseAddress!, count: count, width: width, below: below)
                // Counts of differing entries, not the arrays themselves (a failing #expect on 100,000 entries is slow).
                #expect(kernel.symbols.count == reference.symbols.count)
                #expect(zip(kernel.symbols, reference.symbols).filter { $0 != $1 }.count == 0)
                #expect(kernel.raw.count == reference.raw.count)
                #expect(zip(kernel.raw, reference.raw).filter { $0 != $1 }.count == 0)
                #expect(zip(kernel.histogram, reference.histogram).filter { $0 != $1 }.count == 0)
                #expect(kernel.histogram.reduce(0, +) == UInt32(count))
            }
        }
    }

    @Test(arguments: [4, 2], [1, 2])
    func vectorisedMatchesTheDefinition(width: Int, below: Int) {
        // 100,003: whole vectors, whole blocks of 256, and a tail of each.
        check(width: width, below: below, count: 100_003, portable: false)
    }

    @Test(arguments: [4, 2], [1, 2])
    func portableMatchesTheDefinition(width: Int, below: Int) {
        check(width: width, below: below, count: 20_011, portable: true)
    }

    @Test func shortRunsAndEmpty() {
        for count in [0, 1, 15, 16, 17, 255, 256, 257] {
            check(width: 4, below: 2, count: count, portable: false)
            check(width: 2, below: 1, count: count, portable: false)
        }
    }
}
