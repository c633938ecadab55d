#if canImport(Glibc)
import Glibc
#endif
import TesseraCore
import TesseraIO

/// Sparse update against a base object (code 6, manifest name `sparseW+zstd@BASE:SIZE`, W the element width): only
/// the elements whose bytes differ from the base's are stored, as their positions and their XOR with the base.
///
/// Payload: one zstd frame of `u8 version (1) | u64 changed count` then groups of up to 65536 changes, each
/// `u32 gap bytes | gaps (LEB128: elements skipped since the previous change) | XOR values, byte-grouped in W planes`.
/// Every count is checked against the element count before it is used, and a position past the end is corrupt.
public final class SparseDeltaCodec: ObjectCodec {
    public static let code: UInt8 = 6
    public static let dependencies: ClosedRange<Int> = 1...1
    static let group = 65536

    public static func manifestName(width: Int) -> String { "sparse\(width)+zstd" }
    public static func width(fromManifestName name: String) -> Int? { ByteGroupedFrames.width(in: name, prefix: "sparse") }

    public static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws {
        try ByteGroupedFrames.validateWidth(trailer)
        guard trailer.rawLength % UInt64(trailer.width) == 0 else {
            throw ObjectTrailer.corrupt(trailer.objectID, "its length is not a whole number of elements")
        }
    }

    private let compressor = ZstdCompressor(level: 3)
    private let stream = ZstdPayloadStream()

    public init() {}

    /// How many elements of `width` bytes differ between `a` and `b` (same length), stopping once past `limit`.
    public static func changedCount(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, width: Int, limit: Int = .max) -> Int {
        let n = min(a.count, b.count) / width
        guard n > 0 else { return 0 }
        var changed = 0
        let pa = a.baseAddress!, pb = b.baseAddress!
        switch width {
        case 4:
            let x = pa.assumingMemoryBound(to: UInt32.self), y = pb.assumingMemoryBound(to: UInt32.self)
            var i = 0
            while i < n {
                let end = min(n, i + 65536)
                var c = 0
                for j in i..<end where x[j] != y[j] { c += 1 }
                changed += c
                if changed > limit { return changed }
                i = end
            }
        case 2:
            let x = pa.assumingMemoryBound(to: UInt16.self), y = pb.assumingMemoryBound(to: UInt16.self)
            var i = 0
            while i < n {
                let end = min(n, i + 65536)
                var c = 0
                for j in i..<end where x[j] != y[j] { c += 1 }
                changed += c
                if changed > limit { return changed }
                i = end
            }
        default:
            for i in 0..<n where memcmp(pa + i * width, pb + i * width, width) != 0 {
                changed += 1
                if changed > limit { return changed }
            }
        }
        return changed
    }

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        precondition(dependencies.count == 1 && dependencies[0].count == raw.count && raw.count % width == 0,
                     "a sparse delta has one base of the same length, in whole elements")
        let base = dependencies[0]
        let elements = raw.count / width
        let changed = SparseDeltaCodec.changedCount(raw, base, width: width)
        var header = [UInt8](repeating: 0, count: 9)
        header[0] = 1
        for k in 0..<8 { header[1 + k] = UInt8(truncatingIfNeeded: UInt64(changed) >> (8 * UInt64(k))) }
        try header.withUnsafeBytes { try compressor.compress($0, end: changed == 0, sink: sink) }
        if changed == 0 { return }
        var gaps: [UInt8] = []
        var values = [UInt8](repeating: 0, count: SparseDeltaCodec.group * width)
        var positions: [Int] = []
        positions.reserveCapacity(SparseDeltaCodec.group)
        var previous = -1
        var emitted = 0
        var i = 0
        let pn = raw.baseAddress!, pb = base.baseAddress!
        while i < elements || !positions.isEmpty {
            // Collect the next group's positions.
            while i < elements && positions.count < SparseDeltaCodec.group {
                if memcmp(pn + i * width, pb + i * width, width) != 0 { positions.append(i) }
                i += 1
            }
            if positions.isEmpty { break }
            gaps.removeAll(keepingCapacity: true)
            let count = positions.count
            for (k, p) in positions.enumerated() {
                var gap = UInt64(p - previous - 1)
                previous = p
                while gap >= 0x80 { gaps.append(UInt8(gap & 0x7F) | 0x80); gap >>= 7 }
                gaps.append(UInt8(gap))
                for w in 0..<width { values[w * count + k] = pn.load(fromByteOffset: p * width + w, as: UInt8.self) ^ pb.load(fromByteOffset: p * width + w, as: UInt8.self) }
            }
            emitted += count
            var length = [UInt8](repeating: 0, count: 4)
            storeU32(UInt32(gaps.count), into: &length, at: 0)
            try length.withUnsafeBytes { try compressor.compress($0, end: false, sink: sink) }
            try gaps.withUnsafeBytes { try compressor.compress($0, end: false, sink: sink) }
            try values.withUnsafeBytes { try compressor.compress(UnsafeRawBufferPointer(rebasing: $0[0..<(count * width)]), end: emitted == changed, sink: sink) }
            positions.removeAll(keepingCapacity: true)
        }
        precondition(emitted == changed, "the changed elements were counted twice the same")
    }

    public func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard dependencies.count == 1, dependencies[0].count == trailer.rawCount else {
            throw payload.corrupt("its delta base has a different length")
        }
        let width = Int(trailer.width)
        let elements = trailer.rawCount / width
        let base = UnsafeRawBufferPointer(dependencies[0].bytes)
        try stream.begin(payload)
        func fill(_ out: inout [UInt8], _ n: Int) throws {
            let got = try out.withUnsafeMutableBytes { try stream.fill(UnsafeMutableRawBufferPointer(rebasing: $0[0..<n]), from: payload) }
            guard got == n else { throw payload.corrupt("its sparse data ends early") }
        }
        var header = [UInt8](repeating: 0, count: 9)
        try fill(&header, 9)
        guard header[0] == 1 else { throw payload.corrupt("its sparse format version \(header[0]) is unknown") }
        var declared: UInt64 = 0
        for k in 0..<8 { declared |= UInt64(header[1 + k]) << (8 * UInt64(k)) }
        guard declared <= UInt64(elements) else { throw payload.corrupt("it claims \(declared) changed elements of \(elements)") }
        let changed = Int(declared)
        // The output: the base, with each change applied as it is decoded, handed on in pieces of up to 1 MiB.
        let piece = max(width, (1 << 20) / width * width)
        var out = [UInt8](repeating: 0, count: piece)
        var produced = 0          // bytes handed to the sink
        var filled = 0            // bytes of `out` that are the base copied (and changes applied)
        let rawCount = trailer.rawCount
        func copyBase(to end: Int) {
            // Copies the base into the current piece up to absolute byte `end` (within the piece).
            if produced + filled < end {
                out.withUnsafeMutableBytes { o in
                    (o.baseAddress! + filled).copyMemory(from: base.baseAddress! + produced + filled, byteCount: end - produced - filled)
                }
                filled = end - produced
            }
        }
        func completePiece() throws {
            let length = min(piece, rawCount - produced)
            copyBase(to: produced + length)
            try out.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
            produced += length
            filled = 0
        }
        var gaps = [UInt8]()
        var values = [UInt8]()
        var position = -1
        var remaining = changed
        while remaining > 0 {
            let count = min(SparseDeltaCodec.group, remaining)
            var lengthBytes = [UInt8](repeating: 0, count: 4)
            try fill(&lengthBytes, 4)
            let gapBytes = Int(UInt32(lengthBytes[0]) | UInt32(lengthBytes[1]) << 8 | UInt32(lengthBytes[2]) << 16 | UInt32(lengthBytes[3]) << 24)
            guard gapBytes >= count, gapBytes <= count * 10 else { throw payload.corrupt("a group of \(count) changes claims \(gapBytes) bytes of positions") }
            if gaps.count < gapBytes { gaps = [UInt8](repeating: 0, count: gapBytes) }
            if values.count < count * width { values = [UInt8](repeating: 0, count: count * width) }
            try fill(&gaps, gapBytes)
            try fill(&values, count * width)
            var at = 0
            for k in 0..<count {
                var gap: UInt64 = 0
                var shift: UInt64 = 0
                while true {
                    guard at < gapBytes, shift < 63 else { throw payload.corrupt("a change's position is malformed") }
                    let byte = gaps[at]
                    at += 1
                    gap |= UInt64(byte & 0x7F) << shift
                    if byte & 0x80 == 0 { break }
                    shift += 7
                }
                guard gap < UInt64(elements), position + 1 + Int(gap) < elements else { throw payload.corrupt("a change lies past the end") }
                position += 1 + Int(gap)
                let byte = position * width
                while byte >= produced + piece { try completePiece() }
                copyBase(to: byte + width)
                let local = byte - produced
                out.withUnsafeMutableBytes { o in
                    for w in 0..<width { o[local + w] ^= values[w * count + k] }
                }
            }
            guard at == gapBytes else { throw payload.corrupt("a group's positions have bytes left over") }
            remaining -= count
        }
        while produced < rawCount { try completePiece() }
        guard produced == rawCount else { throw payload.corrupt("its sparse data does not cover the value") }
        try stream.end(payload)
    }
}
