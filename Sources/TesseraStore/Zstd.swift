import CZstd
import TesseraCore
import TesseraIO

/// Streaming zstd compression. Level 1 runs at 340-630 MB/s per core here with a ratio equal to or better than zlib's,
/// which manages only 21-33 MB/s (DESIGN.md).
public final class ZstdCompressor {
    private let context: OpaquePointer
    private var output: [UInt8]

    /// `hashLog`: log2 of the match finder's table (zstd's default at level 1 is 14, for a 16 KB table); see
    /// `ByteGroupedFrames`, which asks for 6.
    public init(level: Int32 = 1, hashLog: Int32? = nil) {
        guard let ctx = ZSTD_createCCtx() else { fatalError("zstd could not allocate a compression context (out of memory)") }
        context = ctx
        ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        if let hashLog { ZSTD_CCtx_setParameter(context, ZSTD_c_hashLog, hashLog) }
        output = [UInt8](repeating: 0, count: ZSTD_CStreamOutSize())
    }

    deinit { ZSTD_freeCCtx(context) }

    /// Feeds `input`; compressed bytes go to `sink` as they are produced. `end` finishes the frame.
    public func compress(_ input: UnsafeRawBufferPointer, end: Bool, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var inBuf = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        let mode = end ? ZSTD_e_end : ZSTD_e_continue
        while true {
            let (remaining, produced): (Int, Int) = try output.withUnsafeMutableBytes { out in
                var outBuf = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                let r = ZSTD_compressStream2(context, &outBuf, &inBuf, mode)
                if ZSTD_isError(r) != 0 {
                    throw TesseraError(.io, "zstd compression failed: \(String(cString: ZSTD_getErrorName(r)))")
                }
                return (r, outBuf.pos)
            }
            if produced > 0 { try output.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<produced])) } }
            if end { if remaining == 0 { break } } else if inBuf.pos == inBuf.size { break }
        }
    }
}

/// Streaming zstd decompression of one frame.
public final class ZstdDecompressor {
    fileprivate let context: OpaquePointer

    public init() {
        guard let ctx = ZSTD_createDCtx() else { fatalError("zstd could not allocate a decompression context (out of memory)") }
        context = ctx
    }

    deinit { ZSTD_freeDCtx(context) }

    /// Decompresses a whole frame into `destination`, which must be exactly the decompressed size.
    public func decompress(_ input: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws {
        ZSTD_DCtx_reset(context, ZSTD_reset_session_only)
        var inBuf = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var outBuf = ZSTD_outBuffer(dst: destination.baseAddress, size: destination.count, pos: 0)
        while true {
            let r = ZSTD_decompressStream(context, &outBuf, &inBuf)
            if ZSTD_isError(r) != 0 {
                throw TesseraError(.objectCorrupt, "zstd data is corrupt: \(String(cString: ZSTD_getErrorName(r)))")
            }
            if r == 0 { break }
            if inBuf.pos == inBuf.size && outBuf.pos < outBuf.size {
                throw TesseraError(.objectCorrupt, "zstd data ends early")
            }
            if outBuf.pos == outBuf.size {
                // Output full but the frame is not finished: the data is longer than recorded.
                var probe: UInt8 = 0
                let extra = withUnsafeMutablePointer(to: &probe) { p -> Int in
                    var o = ZSTD_outBuffer(dst: p, size: 1, pos: 0)
                    _ = ZSTD_decompressStream(context, &o, &inBuf)
                    return o.pos
                }
                if extra > 0 { throw TesseraError(.objectCorrupt, "zstd data is longer than its recorded size") }
                break
            }
        }
    }
}

extension ZstdDecompressor {
    public func reset() { ZSTD_DCtx_reset(context, ZSTD_reset_session_only) }

    /// One step of streaming decompression: consumes from `input` starting at `inputPosition`, writes into `output`
    /// from `outputPosition`. Returns true when the frame is complete.
    public func step(input: UnsafeRawBufferPointer, inputPosition: inout Int,
                     output: UnsafeMutableRawBufferPointer, outputPosition: inout Int) throws -> Bool {
        var inBuf = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: inputPosition)
        var outBuf = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: outputPosition)
        let r = ZSTD_decompressStream(context, &outBuf, &inBuf)
        if ZSTD_isError(r) != 0 {
            throw TesseraError(.objectCorrupt, "zstd data is corrupt: \(String(cString: ZSTD_getErrorName(r)))")
        }
        inputPosition = inBuf.pos
        outputPosition = outBuf.pos
        return r == 0
    }
}
