import CKernels
import Foundation
import TesseraMath

/// A weight matrix kept in its GGUF block encoding for products with one token (decoding). A single token reads
/// every weight once and does little arithmetic with it, so its speed is the bytes read: Q4_1 weights are 5 bits
/// where float32 copies are 32. Rows are dequantised inside the kernel exactly as ggml defines the format, so the
/// values are the same the float32 path multiplies; only the order of the float32 additions differs.
///
/// The blocks are copied once at load and repacked per row (scales first, then quants: the same bytes in the order
/// the vector kernels load them; see `Sources/CKernels/matvec_blocks.c`).
///
/// `final class @unchecked Sendable`: the bytes are written once in `init`, then only read.
public final class BlockQuantizedMatrix: @unchecked Sendable {
    public enum Format: Sendable {
        case q4_1, q8_0
        var blockBytes: Int { self == .q4_1 ? 20 : 34 }
    }

    public let format: Format
    public let rows: Int
    public let columns: Int
    private let bytes: UnsafeMutableRawPointer
    private let rowBytes: Int

    /// The rows of `names` stacked in order (fused Q/K/V or gate/up), or nil when any of them is not Q4_1 or Q8_0,
    /// or they differ in format or width: such matrices keep using the float32 path.
    public init?(gguf: GGUFFile, names: [String]) {
        guard let firstName = names.first, let first = gguf.info(firstName), first.shape.count == 2 else { return nil }
        let format: Format
        switch first.type {
        case .q4_1: format = .q4_1
        case .q8_0: format = .q8_0
        default: return nil
        }
        let columns = first.shape[1]
        guard columns > 0, columns % 32 == 0 else { return nil }
        let rowBytes = columns / 32 * format.blockBytes
        var rows = 0
        for name in names {
            guard let i = gguf.info(name), i.type == first.type, i.shape.count == 2, i.shape[1] == columns else { return nil }
            let (bytesNeeded, tooMany) = i.shape[0].multipliedReportingOverflow(by: rowBytes)
            guard !tooMany, i.byteCount == bytesNeeded else { return nil }
            let (sum, overflow) = rows.addingReportingOverflow(i.shape[0])
            guard !overflow else { return nil }
            rows = sum
        }
        let (total, overflow) = rows.multipliedReportingOverflow(by: rowBytes)
        guard !overflow else { return nil }
        self.format = format
        self.columns = columns
        self.rows = rows
        self.rowBytes = rowBytes
        bytes = .allocate(byteCount: max(1, total), alignment: 64)
        var offset = 0
        for name in names {
            guard let copied = try? gguf.withEncodedBytes(name, { source -> Int in
                guard let base = source.baseAddress, source.count % rowBytes == 0, offset + source.count <= total else { return -1 }
                let sourceRows = source.count / rowBytes
                switch format {
                case .q4_1: tessera_repack_q4_1(base, sourceRows, columns, bytes + offset)
                case .q8_0: tessera_repack_q8_0(base, sourceRows, columns, bytes + offset)
                }
                return source.count
            }), copied >= 0 else {
                bytes.deallocate()
                return nil
            }
            offset += copied
        }
    }

    deinit { bytes.deallocate() }

    /// y = W·x (or y += W·x), rows split over `threads` cores.
    public func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        apply(x, y, rows: 0..<rows, accumulate: accumulate, threads: threads)
    }

    /// Whether `apply(_:tokens:_:accumulate:threads:)` has a several-token kernel on this CPU (AVX-512): each row's
    /// blocks dequantised once for up to 16 tokens. Without it, several tokens are better served by sgemm.
    public static var multiTokenKernel: Bool { tessera_matmul_blocks_available() != 0 }

    /// Y[t] = W·X[t] (or +=) for `tokens` rows of x ([tokens, columns]) into y ([tokens, rows]), the weight rows split
    /// over `threads` cores.
    public func apply(_ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        let count = rows
        let parts = max(1, min(threads, count / 64))
        let rowBytes = self.rowBytes, bytes = UnsafeRawPointer(self.bytes), format = self.format, columns = self.columns
        let run = { (part: Int) in
            let first = part * count / parts, end = (part + 1) * count / parts
            guard end > first else { return }
            let w = bytes + first * rowBytes
            switch format {
            case .q4_1: tessera_matmul_q4_1(w, end - first, columns, x, columns, tokens, y + first, count, accumulate ? 1 : 0)
            case .q8_0: tessera_matmul_q8_0(w, end - first, columns, x, columns, tokens, y + first, count, accumulate ? 1 : 0)
            }
        }
        if parts == 1 { run(0) } else { Parallel.forEach(parts, run) }
    }

    /// y[r] = W[r]·x (or +=) for the rows `range` only, y indexed by row (y + r), split over `threads` cores.
    func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows range: Range<Int>, accumulate: Bool, threads: Int) {
        let count = range.count
        let parts = max(1, min(threads, count / 64))
        let rowBytes = self.rowBytes, bytes = UnsafeRawPointer(self.bytes), format = self.format, columns = self.columns
        let run = { (part: Int) in
            let first = range.lowerBound + part * count / parts, end = range.lowerBound + (part + 1) * count / parts
            guard end > first else { return }
            let w = bytes + first * rowBytes
            switch format {
            case .q4_1: tessera_matvec_q4_1(w, end - first, columns, x, y + first, accumulate ? 1 : 0)
            case .q8_0: tessera_matvec_q8_0(w, end - first, columns, x, y + first, accumulate ? 1 : 0)
            }
        }
        if parts == 1 { run(0) } else { Parallel.forEach(parts, run) }
    }
}
