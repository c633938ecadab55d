import TesseraCore
import TesseraIO

/// Arithmetic delta against a base object (code 4, manifest name `adeltaW@BASE:SIZE`, W = 2 for float16/bfloat16,
/// 4 for float32): each element is stored as the difference of its bit pattern from the base element's, both read as
/// sign-magnitude ordered integers, entropy-coded under the base element's exponent (`OrderedDeltaCoder`). A
/// fine-tune's noise is a few ulps of each weight's own magnitude, so its bit length is predictable from the base's
/// exponent; the XOR delta's byte planes cannot see that.
///
/// Payload: `u8 version | u8 log2(chunk elements) | chunks`: versions 3 (written) and 2 are static tables then rANS
/// chunks (`StaticDeltaChunks`; version 2's symbols hold one bit below a difference's leading one, version 3's one or
/// two, whichever costs less: `DeltaSymbols`), version 1 adaptive binary range-coded chunks (`OrderedDeltaChunks`).
/// Every version stays readable.
/// Exact for any bit patterns (NaN payloads, infinities, ±0, subnormals).
public final class ArithmeticDeltaCodec: ObjectCodec {
    public static let code: UInt8 = 4
    public static let dependencies: ClosedRange<Int> = 1...1
    public static let widths: Set<Int> = [2, 4]
    public static let chunkElementsLog2: UInt8 = 20
    static let chunkLog2Range: ClosedRange<UInt8> = 8...22

    public static func manifestName(width: Int) -> String { "adelta\(width)" }
    public static func width(fromManifestName name: String) -> Int? {
        name == "adelta2" ? 2 : name == "adelta4" ? 4 : nil
    }

    public static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws {
        guard widths.contains(Int(trailer.width)) else {
            throw ObjectTrailer.corrupt(trailer.objectID, "its element width \(trailer.width) does not fit its encoding")
        }
        guard trailer.rawLength % UInt64(trailer.width) == 0 else {
            throw ObjectTrailer.corrupt(trailer.objectID, "its length is not a whole number of elements")
        }
    }

    private let chunks = OrderedDeltaChunks()
    private let staticChunks = StaticDeltaChunks()
    /// The payload version written.
    static let writtenVersion: UInt8 = 3
    /// The payload versions read.
    static let readVersions: ClosedRange<UInt8> = 1...3
    /// What this instance writes: an older version only for tests that check old objects stay readable.
    package var payloadVersion = ArithmeticDeltaCodec.writtenVersion

    public init() {}

    /// Decode element by element, as the format defines it, instead of with the vectorised kernel: for tests.
    package var decodesElementByElement: Bool {
        get { staticChunks.elementByElement }
        set { staticChunks.elementByElement = newValue }
    }

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        precondition(dependencies.count == 1 && dependencies[0].count == raw.count, "a delta has one base of the same length")
        precondition(ArithmeticDeltaCodec.widths.contains(width) && raw.count % width == 0, "adelta codes whole 2- or 4-byte elements")
        let log2 = ArithmeticDeltaCodec.chunkElementsLog2
        try [payloadVersion, log2].withUnsafeBytes { try sink($0) }
        guard raw.count > 0 else { return }
        let base = UnsafeRawPointer(dependencies[0].baseAddress!)
        if payloadVersion == 1 {
            try chunks.encode(new: raw.baseAddress!, total: raw.count / width, chunkElements: 1 << Int(log2), width: width,
                              base: { start, _, _ in base + start * width }, sink: sink)
        } else {
            try staticChunks.encode(new: raw.baseAddress!, total: raw.count / width, chunkElements: 1 << Int(log2), width: width,
                                    version: payloadVersion, base: { start, _, _ in base + start * width }, sink: sink)
        }
    }

    public func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard dependencies.count == 1, dependencies[0].count == trailer.rawCount else {
            throw payload.corrupt("its delta base has a different length")
        }
        let width = Int(trailer.width)
        let cursor = PayloadCursor(payload)
        let header = try cursor.readBytes(2)
        guard ArithmeticDeltaCodec.readVersions.contains(header[0]) else { throw payload.corrupt("its delta format version \(header[0]) is unknown") }
        guard ArithmeticDeltaCodec.chunkLog2Range.contains(header[1]) else {
            throw payload.corrupt("its chunk size 2^\(header[1]) is out of range")
        }
        let total = trailer.rawCount / width
        if total > 0 {
            let base = UnsafeRawPointer(dependencies[0].bytes.baseAddress!)
            if header[0] >= 2 {
                try staticChunks.decode(cursor, total: total, chunkElements: 1 << Int(header[1]), width: width, version: header[0],
                                        base: { start, _, _ in base + start * width }, into: payload.destination?.baseAddress, sink: sink)
            } else {
                try chunks.decode(cursor, total: total, chunkElements: 1 << Int(header[1]), width: width,
                                  base: { start, _, _ in base + start * width }, sink: sink)
            }
        }
        try cursor.expectEnd()
    }
}
