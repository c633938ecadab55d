import TesseraCore
import TesseraIO

/// zstd (level 1) of the raw bytes (code 1, manifest name `zstd`): headers, gaps, opaque files, non-float tensors.
public final class ZstdCodec: ObjectCodec {
    public static let code: UInt8 = 1
    public static func manifestName(width: Int) -> String { "zstd" }

    public static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws {
        guard trailer.width == 1 else { throw ObjectTrailer.corrupt(trailer.objectID, "its element width \(trailer.width) does not fit its encoding") }
    }

    private let compressor = ZstdCompressor(level: 1)
    private let stream = ZstdPayloadStream()
    private var scratch: [UInt8] = []

    public init() {}

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try compressor.compress(raw, end: true, sink: sink)
    }

    public func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let chunk = 1 << 20
        if scratch.count < chunk { scratch = [UInt8](repeating: 0, count: chunk) }
        try stream.begin(payload)
        var produced = 0
        let rawLength = trailer.rawCount
        while produced < rawLength {
            let want = min(chunk, rawLength - produced)
            let got = try scratch.withUnsafeMutableBytes { try stream.fill(UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), from: payload) }
            guard got == want else { throw payload.corrupt("its compressed data is shorter than recorded") }
            try scratch.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<want])) }
            produced += want
        }
        try stream.end(payload)
    }
}

/// One zstd frame read from an object's payload, for the codecs that compress with zstd: it fills output buffers
/// on demand, and `end` checks that the frame ends exactly where the recorded raw length does and that nothing
/// follows it. Every step consumes input, produces output, reads a payload block or ends the frame, so a hostile
/// frame cannot make it loop.
final class ZstdPayloadStream {
    private let decompressor = ZstdDecompressor()
    private var inPos = 0
    private var finished = false

    func begin(_ payload: PayloadReader) throws {
        decompressor.reset()
        inPos = 0
        finished = false
        _ = try payload.nextBlock()
    }

    /// Fills `out` from the frame; stops early only if the frame ends. Returns the bytes written.
    func fill(_ out: UnsafeMutableRawBufferPointer, from payload: PayloadReader) throws -> Int {
        var outPos = 0
        while outPos < out.count && !finished {
            if inPos == payload.blockLength {
                inPos = 0
                if try payload.nextBlock() == 0 { throw payload.corrupt("its compressed data ends early") }
            }
            finished = try payload.withBlock { block in
                try decompressor.step(input: block, inputPosition: &inPos, output: out, outputPosition: &outPos)
            }
        }
        return outPos
    }

    /// The frame must end here: one more byte of output means the data is longer than recorded, and anything after
    /// the frame is corruption.
    func end(_ payload: PayloadReader) throws {
        var probe: UInt8 = 0
        let extra = try withUnsafeMutableBytes(of: &probe) { try fill($0, from: payload) }
        if extra > 0 { throw payload.corrupt("its compressed data is longer than recorded") }
        if inPos < payload.blockLength || payload.remaining > 0 { throw payload.corrupt("it has data after its compressed frame") }
    }
}
