import TesseraCore
import TesseraIO

/// XOR with a base object's raw bytes (the previous version of the same tensor), then byte-grouped zstd (code 3,
/// manifest name `xor+bgW+zstd@BASE:SIZE`): a fine-tune changes low mantissa bits, so the XOR is mostly zero in the
/// planes of sign and exponent. The base is its one dependency, exactly as long as the object's raw bytes; it may
/// itself be a delta (a chain of bounded depth: `ObjectStore` decodes and checks it, `EncodingPolicy` bounds it).
public final class XORDeltaCodec: ObjectCodec {
    public static let code: UInt8 = 3
    public static let dependencies: ClosedRange<Int> = 1...1
    public static func manifestName(width: Int) -> String { "xor+bg\(width)+zstd" }
    public static func width(fromManifestName name: String) -> Int? { ByteGroupedFrames.width(in: name, prefix: "xor+bg") }

    public static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws {
        try ByteGroupedFrames.validateWidth(trailer)
    }

    private let frames = ByteGroupedFrames()

    public init() {}

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        precondition(dependencies.count == 1 && dependencies[0].count == raw.count, "a delta has one base of the same length")
        try frames.encode(raw: raw, width: width, chunkLog2: chunkLog2, xorWith: dependencies[0], sink: sink)
    }

    public func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard dependencies.count == 1, dependencies[0].count == trailer.rawCount else {
            throw payload.corrupt("its delta base has a different length")
        }
        try frames.decode(payload, trailer: trailer, xorWith: dependencies[0], sink: sink)
    }
}
