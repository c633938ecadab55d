import TesseraCore
import TesseraIO

/// The object format (docs/manifest-format.md). An object file is `payload ‖ trailer`, named by the SHA-256 of the
/// whole file (its Git LFS oid). The trailer comes last so that an object can be written in one pass while its raw
/// bytes stream in (the raw hash and length are known only at the end).
///
///     trailer (88 bytes): raw SHA-256 (32) | first dependency's object id (32, zero if none) | raw length (u64 LE)
///                         | codec (u8) | element width (u8) | chunk log2 (u8) | more dependencies (u8) | magic (4)
///                         | reserved (8)
///
/// Version 1 (magic `TSO1`) has at most one dependency, and 0 in the "more dependencies" byte. Version 2 (`TSO2`),
/// written only for objects with several dependencies, keeps that layout and puts the ids of dependencies 2...k+1
/// (32 bytes each, k in the "more" byte) between the payload and the trailer. Every object written before version 2
/// existed is a version 1 object, read as before.
public struct ObjectTrailer: Sendable, Equatable {
    public static let size = 88
    public static let magicV1: [UInt8] = Array("TSO1".utf8)
    public static let magicV2: [UInt8] = Array("TSO2".utf8)
    /// Byte grouping works on chunks of 2^20 bytes so that encoding and decoding need only a chunk of scratch space.
    public static let defaultChunkLog2: UInt8 = 20
    /// Widest element byte grouping is applied to (8: F64, I64, C64).
    public static let maximumWidth: UInt8 = 16
    /// Chunk sizes a reader accepts (16 B ... 16 MiB): the decoder allocates one chunk of scratch space.
    public static let chunkLog2Range: ClosedRange<UInt8> = 4...24
    /// Most dependencies an object may name.
    public static let maximumDependencies = 16
    /// The most raw bytes one byte of zstd payload can stand for. A zstd block holds at most 128 KiB and the smallest
    /// block (an RLE block) is 4 bytes, so no valid frame expands by more than 32768; measured here: 1 GB of zeros
    /// compresses to 33,875 bytes at level 1 (29,500x). A trailer claiming more is corrupt or hostile, and is refused
    /// before anything is allocated for it.
    public static let maximumExpansion = 32768
    /// The largest raw length accepted at all (2^48 bytes): far beyond any tensor, and small enough that every
    /// length and offset computed from it stays clear of overflow.
    public static let maximumRawLength: UInt64 = 1 << 48

    public var rawSHA256: [UInt8]
    /// The objects the payload is encoded against (a delta's base), by id.
    public var dependencies: [[UInt8]]
    public var rawLength: UInt64
    /// The codec's code (`ObjectCodec.code`).
    public var codec: UInt8
    public var width: UInt8
    public var chunkLog2: UInt8
    /// The object this trailer was read from (for messages); empty for a trailer being written.
    public var objectID: String = ""

    public init(rawSHA256: [UInt8], dependencies: [[UInt8]] = [], rawLength: UInt64, codec: UInt8, width: UInt8,
                chunkLog2: UInt8 = ObjectTrailer.defaultChunkLog2) {
        self.rawSHA256 = rawSHA256
        self.dependencies = dependencies
        self.rawLength = rawLength
        self.codec = codec
        self.width = width
        self.chunkLog2 = chunkLog2
    }

    public static func == (a: ObjectTrailer, b: ObjectTrailer) -> Bool {
        a.rawSHA256 == b.rawSHA256 && a.dependencies == b.dependencies && a.rawLength == b.rawLength && a.codec == b.codec
            && a.width == b.width && a.chunkLog2 == b.chunkLog2
    }

    public var dependencyIDs: [String] { dependencies.map(\.hexString) }

    /// The raw length as an `Int` (validated trailers only: `decode` bounds it by `maximumRawLength`).
    public var rawCount: Int { Int(rawLength) }

    /// Bytes of raw data per byte-grouping chunk: a whole number of elements.
    public var chunkBytes: Int { ObjectTrailer.chunkBytes(width: Int(width), log2: chunkLog2) }

    public static func chunkBytes(width: Int, log2: UInt8 = defaultChunkLog2) -> Int {
        let c = 1 << Int(log2)
        return max(width, c / max(width, 1) * max(width, 1))
    }

    /// The bytes that follow the payload: the extra dependency ids (version 2), then the 88-byte trailer.
    public func encoded() -> [UInt8] {
        let extra = dependencies.dropFirst()
        var out: [UInt8] = extra.flatMap { $0 }
        out += rawSHA256 + (dependencies.first ?? [UInt8](repeating: 0, count: 32))
        var n = rawLength
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        out += [codec, width, chunkLog2, UInt8(extra.count)]
        out += extra.isEmpty ? ObjectTrailer.magicV1 : ObjectTrailer.magicV2
        out += [UInt8](repeating: 0, count: 8)
        return out
    }

    static func corrupt(_ object: String, _ why: String) -> TesseraError {
        TesseraError(.objectCorrupt, "object \(object.prefix(12)) is corrupt: \(why)",
                     hint: "delete it and fetch it again from the remote (`tessera fetch`), or run `tessera fsck`")
    }

    /// How many extra dependency ids precede a trailer (version 2), from its last 88 bytes; checks the magic.
    static func extraDependencyCount(_ b: [UInt8], object: String) throws -> Int {
        guard b.count == size else { throw corrupt(object, "it has no valid trailer") }
        let magic = Array(b[76..<80])
        if magic == magicV1 {
            guard b[75] == 0 else { throw corrupt(object, "its trailer's reserved bytes are not zero") }
            return 0
        }
        guard magic == magicV2 else { throw corrupt(object, "it has no valid trailer") }
        return Int(b[75])
    }

    /// Decodes and validates a trailer read from an object file whose payload (the bytes before the extra
    /// dependencies and the trailer) is `payloadLength` bytes long. Every field a reader will act on is checked
    /// here, before the payload is touched: a trailer is as untrusted as the rest of an object fetched from a remote
    /// (an attacker can store any bytes under their own SHA-256).
    public static func decode(_ b: [UInt8], extraDependencies: [UInt8] = [], object: String, payloadLength: Int) throws -> ObjectTrailer {
        let extra = try extraDependencyCount(b, object: object)
        guard b[80..<88].allSatisfy({ $0 == 0 }) else { throw corrupt(object, "its trailer's reserved bytes are not zero") }
        guard extraDependencies.count == 32 * extra, extra < maximumDependencies else { throw corrupt(object, "its dependency list is damaged") }
        if Array(b[76..<80]) == magicV2 && extra == 0 { throw corrupt(object, "a version 2 trailer with one dependency") }
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(b[64 + k]) << (8 * UInt64(k)) }
        guard let codec = ObjectCodecs.codec(code: b[72]) else {
            throw TesseraError(.objectCorrupt, "object \(object.prefix(12)) has an unknown encoding \(b[72])",
                               hint: "it may come from a newer tessera; upgrade, or run `tessera fsck`")
        }
        let chunkLog2 = b[74]
        guard chunkLog2Range.contains(chunkLog2) else { throw corrupt(object, "its chunk size 2^\(chunkLog2) is out of range") }
        let first = Array(b[32..<64])
        var dependencies: [[UInt8]] = first.allSatisfy({ $0 == 0 }) ? [] : [first]
        if extra > 0 {
            guard !dependencies.isEmpty else { throw corrupt(object, "its dependency list is damaged") }
            for k in 0..<extra { dependencies.append(Array(extraDependencies[(32 * k)..<(32 * k + 32)])) }
        }
        guard codec.dependencies.contains(dependencies.count) else {
            throw corrupt(object, dependencies.isEmpty ? "it is a delta with no base" : "it names \(dependencies.count) dependencies, which its encoding does not use")
        }
        guard n <= maximumRawLength else { throw corrupt(object, "its trailer claims \(n) raw bytes") }
        guard payloadLength >= 0 else { throw corrupt(object, "it is shorter than its trailer") }
        // A codec with dependencies (a delta) decodes to exactly its base's length, and the base's own trailer is
        // bounded before that length is allocated: a sparse delta of one changed element may be 30 bytes for 500 MB.
        if codec != RawCodec.self && codec.dependencies.lowerBound == 0 {
            // Checked arithmetic: payloadLength is at most a file size, far below 2^63 / 32768.
            let (bound, overflow) = UInt64(payloadLength).multipliedReportingOverflow(by: UInt64(maximumExpansion))
            guard overflow || n <= bound + (1 << 17) else {
                throw corrupt(object, "its trailer claims \(n) raw bytes from \(payloadLength) compressed bytes, more than zstd can expand")
            }
        }
        var trailer = ObjectTrailer(rawSHA256: Array(b[0..<32]), dependencies: dependencies, rawLength: n, codec: b[72],
                                    width: b[73], chunkLog2: chunkLog2)
        trailer.objectID = object
        try codec.validate(trailer, payloadLength: payloadLength)
        return trailer
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
