import TesseraCore
import TesseraIO

/// A file format the cleaner splits into segments while the bytes stream past: it detects the format from the first
/// bytes, reads each metadata run (header) as it arrives, and says which byte ranges follow (tensors, gaps, runs
/// stored whole). Only headers are held in memory; tensors go through the encoding pipeline one at a time.
///
/// Every range a layout names is a claim about bytes still to come: the cleaner takes memory as bytes arrive, and a
/// file that ends early is refused as truncated. Whatever a layout says, the segments tile the file exactly, so a
/// checkout gives back the bytes that were added.
protocol CheckpointLayout: AnyObject {
    var format: Manifest.Format { get }
    /// Reads a metadata run starting at file offset `offset`: `bytes` is what has arrived from there (all of the
    /// rest of the file when `atEnd`). Returns how many more bytes it needs, or how the run splits and what follows.
    func scan(_ bytes: [UInt8], at offset: Int, atEnd: Bool) throws -> LayoutScan
    /// Called once the whole file has been read and every segment is known.
    func finish(segments: inout [Manifest.Segment]) throws
}

/// A tensor the layout found: its name and type for the manifest, its absolute byte range in the file.
struct LayoutTensor {
    var name: String
    var type: TensorElementType
    var shape: [Int]
    var begin: Int
    var end: Int
    var byteCount: Int { end - begin }

    /// What the encoding pipeline is given: a dtype that sets the codec (block-quantised bytes are plain bytes).
    var pipelineTensor: SafetensorsTensor {
        switch type {
        case let .dtype(d): return SafetensorsTensor(name: name, dtype: d, shape: shape, begin: begin, end: end)
        case .blocks: return SafetensorsTensor(name: name, dtype: .u8, shape: [end - begin], begin: begin, end: end)
        }
    }

    func segment(_ stored: Manifest.Stored) -> Manifest.Segment {
        switch type {
        case let .dtype(d): return .tensor(name: name, dtype: d, shape: shape, begin: begin, end: end, stored)
        case let .blocks(q): return .blocks(name: name, type: q, shape: shape, begin: begin, end: end, stored)
        }
    }
}

/// A byte range that follows a metadata run (absolute offsets).
enum LayoutItem {
    case tensor(LayoutTensor)
    /// Bytes kept as they are: inline in the manifest when small, else one object.
    case gap(begin: Int, end: Int)
    /// Bytes stored whole as one object (a compressed archive entry): a `blob` line.
    case blob(begin: Int, end: Int)

    var end: Int {
        switch self {
        case let .tensor(t): return t.end
        case let .gap(_, e), let .blob(_, e): return e
        }
    }
}

/// How a metadata run splits into segments (lengths, in order, from the run's start).
enum LayoutPiece {
    case header(Int)
    case gap(Int)
    var length: Int {
        switch self {
        case let .header(n), let .gap(n): return n
        }
    }
}

enum LayoutScan {
    /// At least this many bytes from the run's start are needed (the cleaner collects them, or up to the file's end).
    case needMore(Int)
    /// The run is `pieces`; then come `items`; then `next`. Bytes collected beyond the pieces are read again as what
    /// follows.
    case parsed(pieces: [LayoutPiece], items: [LayoutItem], next: LayoutNext)
    /// Not a file this layout splits after all (valid only for the first run: nothing has been stored yet). The file
    /// is stored whole, for the reason given.
    case storeWhole(String)
}

enum LayoutNext {
    /// Another metadata run starts right after the items.
    case scan
    /// The rest of the file is one gap (trailing bytes after the last tensor; or a part the layout does not split).
    case trailing
}

/// The formats the cleaner splits, asked in order.
enum CheckpointLayouts {
    /// Bytes the cleaner collects before choosing a layout.
    static let detectionLength = 17

    static func detect(prefix: [UInt8], fileName: String) -> CheckpointLayout? {
        if SafetensorsLayout.looksLikeSafetensors(prefix: prefix) { return SafetensorsFileLayout(fileName: fileName) }
        if GGUFFileLayout.detects(prefix: prefix) { return GGUFFileLayout(fileName: fileName) }
        if ZipCheckpointLayout.detects(prefix: prefix) { return ZipCheckpointLayout(fileName: fileName) }
        return nil
    }
}

/// safetensors: the 8 length bytes and the JSON header, then tensors in offset order with gaps between them.
final class SafetensorsFileLayout: CheckpointLayout {
    let fileName: String
    var format: Manifest.Format { .safetensors }
    init(fileName: String) { self.fileName = fileName }

    func scan(_ bytes: [UInt8], at offset: Int, atEnd: Bool) throws -> LayoutScan {
        guard bytes.count >= 8 else {
            if atEnd { _ = try SafetensorsLayout.headerLength(prefix: bytes, fileSize: bytes.count, file: fileName) }
            return .needMore(8)
        }
        let n = try SafetensorsLayout.headerLength(prefix: bytes, fileSize: atEnd ? bytes.count : nil, file: fileName)
        guard bytes.count >= 8 + n else { return .needMore(8 + n) }
        let layout = try SafetensorsLayout.parse(headerBytes: Array(bytes[0..<(8 + n)]), fileSize: nil, file: fileName)
        var items: [LayoutItem] = []
        var at = 0
        let base = layout.dataStart
        for t in layout.tensors {
            if t.begin > at { items.append(.gap(begin: base + at, end: base + t.begin)) }
            items.append(.tensor(LayoutTensor(name: t.name, type: .dtype(t.dtype), shape: t.shape, begin: base + t.begin, end: base + t.end)))
            at = max(at, t.end)
        }
        return .parsed(pieces: [.header(layout.dataStart)], items: items, next: .trailing)
    }

    func finish(segments: inout [Manifest.Segment]) throws {}
}
