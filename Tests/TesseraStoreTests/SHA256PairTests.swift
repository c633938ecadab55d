import Foundation
import Testing
import TesseraStore

/// `SHA256Hasher.hexPair` (two messages at once with the SHA extensions, CSHA256) against OpenSSL's digest of each,
/// at every length where the padding changes shape and with lengths that differ within a pair; and
/// `SHA256PairStream` (the same two chains fed piece by piece) against the same digests, for every way of cutting
/// the messages into pieces that the stream accepts.
@Suite struct SHA256PairTests {
    static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
    }

    static let lengths = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, (1 << 20) + 13]

    @Test func pairsMatchOpenSSLAtEveryPaddingBoundary() {
        for (k, n) in Self.lengths.enumerated() {
            // Equal lengths, and each length against a longer and a shorter partner.
            for m in [n, Self.lengths[(k + 1) % Self.lengths.count], Self.lengths[(k + 5) % Self.lengths.count]] {
                let a = Self.bytes(n, seed: UInt64(2 * k + 1)), b = Self.bytes(m, seed: UInt64(2 * k + 2))
                let (ha, hb) = a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in SHA256Hasher.hexPair(pa, pb) } }
                #expect(ha == SHA256Hasher.hex(a), "length \(n)")
                #expect(hb == SHA256Hasher.hex(b), "length \(m)")
            }
        }
    }

    @Test func standardVectorThroughBothLanes() {
        let abc = Array("abc".utf8), empty: [UInt8] = []
        let (h1, h2) = abc.withUnsafeBytes { a in empty.withUnsafeBytes { e in SHA256Hasher.hexPair(a, e) } }
        #expect(h1 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(h2 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func streamsMatchOpenSSLWhateverThePieces() {
        for (k, n) in Self.lengths.enumerated() {
            let a = Self.bytes(n, seed: UInt64(2 * k + 101)), b = Self.bytes(n, seed: UInt64(2 * k + 102))
            // Whole, one block at a time, and in pieces of 64·7 and 64·4096 bytes (each piece but the last whole blocks).
            for piece in [max(n, 1), 64, 448, 64 * 4096] {
                let stream = SHA256PairStream()
                a.withUnsafeBytes { pa in
                    b.withUnsafeBytes { pb in
                        var start = 0
                        repeat {
                            let end = min(n, start + piece)
                            stream.update(UnsafeRawBufferPointer(rebasing: pa[start..<end]), UnsafeRawBufferPointer(rebasing: pb[start..<end]))
                            start = end
                        } while start < n
                    }
                }
                let (ha, hb) = stream.finalizeHex()
                #expect(ha == SHA256Hasher.hex(a), "length \(n), pieces of \(piece)")
                #expect(hb == SHA256Hasher.hex(b), "length \(n), pieces of \(piece)")
            }
        }
    }
}
