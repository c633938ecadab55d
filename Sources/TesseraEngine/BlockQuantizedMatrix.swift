import CKernels
import Foundation

/// A weight matrix kept in its GGUF block encoding for products with one token (decoding). A single token reads
/// every weight once and does little arithmetic with it, so its speed is memory bandwidth: Q4_1 weights are 5 bits
/// where float32 copies are 32. Rows are dequantised inside the kernel exactly as ggml defines the format, so the
/// values are the same the float32 path multiplies; only the order of the float32 additions differs.
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
    private var rowBytes: Int { columns / 32 * format.blockBytes }

    /// The rows of `names` stacked in order (fused Q/K/V or gate/up), or nil when any of them is not Q4_1 or Q8_0,
    /// or they differ in format or width: such matrices keep using the float32 path.
    public init?(gguf: GGUFFile, names: [String]) {
        guard let first = gguf.info(names[0]), first.shape.count == 2 else { return nil }
        let format: Format
        switch first.type {
        case .q4_1: format = .q4_1
        case .q8_0: format = .q8_0
        default: return nil
        }
        let columns = first.shape[1]
        var rows = 0
        for name in names {
            guard let i = gguf.info(name), i.type == first.type, i.shape.count == 2, i.shape[1] == columns else { return nil }
            rows += i.shape[0]
        }
        guard columns % 32 == 0 else { return nil }
        self.format = format
        self.columns = columns
        self.rows = rows
        let rowBytes = columns / 32 * format.blockBytes
        bytes = .allocate(byteCount: max(1, rows * rowBytes), alignment: 64)
        var offset = 0
        for name in names {
            guard let copied = try? gguf.withEncodedBytes(name, { source -> Int in
                (bytes + offset).copyMemory(from: source.baseAddress!, byteCount: source.count)
                return source.count
            }) else {
                bytes.deallocate()
                return nil
            }
            offset += copied
        }
    }

    deinit { bytes.deallocate() }

    /// y = W·x (or y += W·x), rows split over `threads` cores.
    public func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        let parts = max(1, min(threads, rows / 64))
        let perPart = (rows + parts - 1) / parts
        let rowBytes = self.rowBytes, bytes = UnsafeRawPointer(self.bytes), format = self.format, columns = self.columns
        let run = { (part: Int) in
            let first = part * perPart, count = min(self.rows, first + perPart) - first
            guard count > 0 else { return }
            let w = bytes + first * rowBytes
            switch format {
            case .q4_1: tessera_matvec_q4_1(w, count, columns, x, y + first, accumulate ? 1 : 0)
            case .q8_0: tessera_matvec_q8_0(w, count, columns, x, y + first, accumulate ? 1 : 0)
            }
        }
        if parts == 1 { run(0) } else { parallelFor(parts, run) }
    }

}

/// The hand-vectorised C kernels (`Sources/CKernels`): block-format products and prefill attention tiles.
public enum CPUKernels {
    /// Whether the AVX2/FMA/F16C versions run on this CPU (else portable C).
    public static var vectorised: Bool { tessera_kernels_vectorised() != 0 }

    /// Tests: run the portable versions even where AVX2 is available, until as many `false` calls as `true` ones.
    public static func forcePortable(_ portable: Bool) { tessera_kernels_force_portable(portable ? 1 : 0) }
}
