import TesseraCore
import TesseraIO

/// How an object's payload encodes the raw bytes it stands for.
///
/// An object file is `payload ‖ trailer`. The trailer comes last so that an object can be written in one pass while
/// its raw bytes stream in (the raw hash and length are known only at the end). The object id is the SHA-256 of the
/// whole file, which is also its Git LFS oid.
///
///     trailer (88 bytes): raw SHA-256 (32) | base object id (32, zero unless delta) | raw length (u64 LE)
///                         | encoding (u8) | element width (u8) | chunk log2 (u8) | reserved (u8) | "TSO1" (4)
///                         | reserved (8)
public enum ObjectEncoding: UInt8, Sendable {
    /// Stored as is.
    case raw = 0
    /// zstd of the raw bytes.
    case zstd = 1
    /// Byte-grouped in chunks, then zstd.
    case byteGroupedZstd = 2
    /// XOR against a base object's raw bytes, byte-grouped in chunks, then zstd.
    case xorByteGroupedZstd = 3

    /// The name the manifest shows ("bg4+zstd", "xor+bg2+zstd@<base id>:<base size>").
    public func manifestName(width: Int, base: String?) -> String {
        switch self {
        case .raw: return "raw"
        case .zstd: return "zstd"
        case .byteGroupedZstd: return "bg\(width)+zstd"
        case .xorByteGroupedZstd: return "xor+bg\(width)+zstd@\(base ?? "")"
        }
    }
}

public struct ObjectTrailer: Sendable, Equatable {
    public static let size = 88
    public static let magic: [UInt8] = Array("TSO1".utf8)
    /// Byte grouping works on chunks of 2^20 bytes so that encoding and decoding need only a chunk of scratch space.
    public static let defaultChunkLog2: UInt8 = 20
    /// Widest element byte grouping is applied to (8: F64, I64, C64).
    public static let maximumWidth: UInt8 = 16
    /// Chunk sizes a reader accepts (16 B ... 16 MiB): the decoder allocates one chunk of scratch space.
    public static let chunkLog2Range: ClosedRange<UInt8> = 4...24
    /// The most raw bytes one byte of zstd payload can stand for. A zstd block holds at most 128 KiB and the smallest
    /// block (an RLE block) is 4 bytes, so no valid frame expands by more than 32768; measured here: 1 GB of zeros
    /// compresses to 33,875 bytes at level 1 (29,500x). A trailer claiming more is corrupt or hostile, and is refused
    /// before anything is allocated for it.
    public static let maximumExpansion = 32768
    /// The largest raw length accepted at all (2^48 bytes): far beyond any tensor, and small enough that every
    /// length and offset computed from it stays clear of overflow.
    public static let maximumRawLength: UInt64 = 1 << 48

    public var rawSHA256: [UInt8]
    public var baseObject: [UInt8]
    public var rawLength: UInt64
    public var encoding: ObjectEncoding
    public var width: UInt8
    public var chunkLog2: UInt8

    public init(rawSHA256: [UInt8], baseObject: [UInt8]? = nil, rawLength: UInt64, encoding: ObjectEncoding, width: UInt8,
                chunkLog2: UInt8 = ObjectTrailer.defaultChunkLog2) {
        self.rawSHA256 = rawSHA256
        self.baseObject = baseObject ?? [UInt8](repeating: 0, count: 32)
        self.rawLength = rawLength
        self.encoding = encoding
        self.width = width
        self.chunkLog2 = chunkLog2
    }

    public var baseObjectID: String? { baseObject.allSatisfy { $0 == 0 } ? nil : baseObject.hexString }

    /// The raw length as an `Int` (validated trailers only: `decode` bounds it by `maximumRawLength`).
    public var rawCount: Int { Int(rawLength) }

    /// Bytes of raw data per byte-grouping chunk: a whole number of elements.
    public var chunkBytes: Int { ObjectTrailer.chunkBytes(width: Int(width), log2: chunkLog2) }

    public static func chunkBytes(width: Int, log2: UInt8 = defaultChunkLog2) -> Int {
        let c = 1 << Int(log2)
        return max(width, c / max(width, 1) * max(width, 1))
    }

    public func encoded() -> [UInt8] {
        var out = rawSHA256 + baseObject
        var n = rawLength
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        out += [encoding.rawValue, width, chunkLog2, 0]
        out += ObjectTrailer.magic
        out += [UInt8](repeating: 0, count: 8)
        return out
    }

    /// Decodes and validates a trailer read from an object file whose payload (the bytes before the trailer) is
    /// `payloadLength` bytes long. Every field a reader will act on is checked here, before the payload is touched:
    /// a trailer is as untrusted as the rest of an object fetched from a remote (an attacker can store any bytes
    /// under their own SHA-256).
    public static func decode(_ b: [UInt8], object: String, payloadLength: Int) throws -> ObjectTrailer {
        func bad(_ why: String) -> TesseraError {
            TesseraError(.objectCorrupt, "object \(object.prefix(12)) is corrupt: \(why)",
                         hint: "delete it and fetch it again from the remote (`tessera fetch`), or run `tessera fsck`")
        }
        guard b.count == size, Array(b[76..<80]) == magic else { throw bad("it has no valid trailer") }
        guard b[75] == 0, b[80..<88].allSatisfy({ $0 == 0 }) else { throw bad("its trailer's reserved bytes are not zero") }
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(b[64 + k]) << (8 * UInt64(k)) }
        guard let enc = ObjectEncoding(rawValue: b[72]) else {
            throw TesseraError(.objectCorrupt, "object \(object.prefix(12)) has an unknown encoding \(b[72])",
                               hint: "it may come from a newer tessera; upgrade, or run `tessera fsck`")
        }
        let width = b[73], chunkLog2 = b[74]
        guard chunkLog2Range.contains(chunkLog2) else { throw bad("its chunk size 2^\(chunkLog2) is out of range") }
        switch enc {
        case .raw, .zstd:
            guard width == 1 else { throw bad("its element width \(width) does not fit its encoding") }
        case .byteGroupedZstd, .xorByteGroupedZstd:
            guard width >= 1, width <= maximumWidth else { throw bad("its element width \(width) is out of range") }
        }
        let base = Array(b[32..<64])
        let hasBase = !base.allSatisfy { $0 == 0 }
        guard hasBase == (enc == .xorByteGroupedZstd) else {
            throw bad(hasBase ? "it names a delta base but is not a delta" : "it is a delta with no base")
        }
        guard n <= maximumRawLength else { throw bad("its trailer claims \(n) raw bytes") }
        guard payloadLength >= 0 else { throw bad("it is shorter than its trailer") }
        switch enc {
        case .raw:
            guard n == UInt64(payloadLength) else { throw bad("its length does not match its trailer") }
        case .zstd, .byteGroupedZstd, .xorByteGroupedZstd:
            // Checked arithmetic: payloadLength is at most a file size, far below 2^63 / 32768.
            let (bound, overflow) = UInt64(payloadLength).multipliedReportingOverflow(by: UInt64(maximumExpansion))
            guard overflow || n <= bound + (1 << 17) else {
                throw bad("its trailer claims \(n) raw bytes from \(payloadLength) compressed bytes, more than zstd can expand")
            }
        }
        return ObjectTrailer(rawSHA256: Array(b[0..<32]), baseObject: base, rawLength: n, encoding: enc,
                             width: width, chunkLog2: chunkLog2)
    }
}

/// Object ids and raw-value hashes: 64 lower-case hex digits (SHA-256). Anything else read from a manifest, a
/// trailer or a remote is refused before it becomes part of a path.
public enum ObjectID {
    public static func isValid<S: StringProtocol>(_ s: S) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    public static func check(_ s: String, what: String = "object id") throws {
        guard isValid(s) else {
            throw TesseraError(.invalidManifest, "invalid \(what) \(String(reflecting: String(s.prefix(80))))",
                               hint: "an object id is 64 lower-case hex digits; the manifest or object naming it is damaged")
        }
    }
}
