import TesseraCore

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

    public static func decode(_ b: [UInt8], object: String) throws -> ObjectTrailer {
        guard b.count == size, Array(b[76..<80]) == magic else {
            throw TesseraError(.objectCorrupt, "object \(object.prefix(12)) has no valid trailer",
                               hint: "the object is damaged: run `tessera fsck`, then fetch it again from the remote")
        }
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(b[64 + k]) << (8 * UInt64(k)) }
        guard let enc = ObjectEncoding(rawValue: b[72]), b[73] >= 1, b[74] >= 4, b[74] <= 30 else {
            throw TesseraError(.objectCorrupt, "object \(object.prefix(12)) has an unknown encoding",
                               hint: "it may come from a newer tessera; upgrade, or run `tessera fsck`")
        }
        return ObjectTrailer(rawSHA256: Array(b[0..<32]), baseObject: Array(b[32..<64]), rawLength: n, encoding: enc,
                             width: b[73], chunkLog2: b[74])
    }
}
