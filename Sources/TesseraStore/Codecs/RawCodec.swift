import TesseraCore
import TesseraIO

/// The raw bytes as they are (code 0, manifest name `raw`). Nothing writes it today; objects made with it stay
/// readable.
public final class RawCodec: ObjectCodec {
    public static let code: UInt8 = 0
    public static func manifestName(width: Int) -> String { "raw" }

    public static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws {
        guard trailer.width == 1 else { throw ObjectTrailer.corrupt(trailer.objectID, "its element width \(trailer.width) does not fit its encoding") }
        guard trailer.rawLength == UInt64(payloadLength) else { throw ObjectTrailer.corrupt(trailer.objectID, "its length does not match its trailer") }
    }

    public init() {}

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try sink(raw)
    }

    public func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        while try payload.nextBlock() > 0 {
            try payload.withBlock { try sink($0) }
        }
    }
}
