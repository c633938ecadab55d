import TesseraCore
import TesseraIO

/// GGUF (versions 2 and 3, little-endian): the header (magic, version, counts, key/value metadata, tensor infos),
/// padding to the data alignment, then the tensors at their declared offsets, in offset order, with padding gaps.
///
/// The header is split so that one metadata change stores little: each key/value whose value is large (the
/// tokenizer's vocabulary, merges, token types: megabytes) is a header segment of its own, runs of small key/values
/// are one segment each, and the tensor infos are one segment. An unchanged vocabulary is then the same object in
/// every version and every quantisation of a model.
///
/// Every count, length and offset is a claim: nothing is allocated from it, sizes are overflow-checked, and a header
/// that does not fit the bytes, tensors that overlap or lie outside the data, or an alignment that is not a power of
/// two are refused with one line. Types this reader does not know (removed GGML types) leave the file stored whole.
final class GGUFFileLayout: CheckpointLayout {
    let fileName: String
    var format: Manifest.Format { .gguf }
    init(fileName: String) { self.fileName = fileName }

    /// Values at least this long are a header segment of their own.
    static let largeValueBytes = 1024
    /// The largest header accepted (headers of real models are a few MB, mostly vocabulary).
    static let maximumHeaderBytes = 512 << 20
    static let maximumDimensions = 8
    static let maximumNameBytes = 1 << 16
    static let maximumArrayNesting = 4
    /// Offsets and sizes beyond this are lies (2^48 bytes), so that sums of them never overflow.
    static let maximumOffset = 1 << 48

    static func detects(prefix: [UInt8]) -> Bool { prefix.starts(with: Array("GGUF".utf8)) }

    private struct NeedMore: Error {}

    /// A little-endian cursor over the header bytes that throws `NeedMore` at their end.
    private struct Cursor {
        let bytes: [UInt8]
        var at = 0
        mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, n <= bytes.count - at else { throw NeedMore() }
            defer { at += n }
            return bytes[at..<(at + n)]
        }
        mutating func skip(_ n: Int) throws {
            guard n >= 0 else { throw NeedMore() }
            guard n <= bytes.count - at else { throw NeedMore() }
            at += n
        }
        mutating func u32() throws -> UInt32 {
            let s = try take(4)
            var v: UInt32 = 0
            for (k, b) in s.enumerated() { v |= UInt32(b) << (8 * UInt32(k)) }
            return v
        }
        mutating func u64() throws -> UInt64 {
            let s = try take(8)
            var v: UInt64 = 0
            for (k, b) in s.enumerated() { v |= UInt64(b) << (8 * UInt64(k)) }
            return v
        }
    }

    private func refuse(_ why: String) -> TesseraError {
        TesseraError(.invalidCheckpoint, "\(fileName): invalid GGUF: \(why)", hint: "the file is corrupt or not a GGUF file; re-download or re-export it")
    }

    func scan(_ bytes: [UInt8], at offset: Int, atEnd: Bool) throws -> LayoutScan {
        guard offset == 0 else { throw TesseraError(.io, "\(fileName): internal error: a second GGUF header") }
        do {
            return try parse(bytes)
        } catch is NeedMore {
            if atEnd {
                throw TesseraError(.invalidCheckpoint, "\(fileName): invalid GGUF: the header does not fit in the file's \(bytes.count) bytes (truncated, or its counts or lengths lie)",
                                   hint: "the file is incomplete or corrupt; re-download or re-export it")
            }
            guard bytes.count < GGUFFileLayout.maximumHeaderBytes else {
                return .storeWhole("its GGUF header is larger than \(GGUFFileLayout.maximumHeaderBytes >> 20) MiB")
            }
            return .needMore(min(GGUFFileLayout.maximumHeaderBytes, max(64 << 10, bytes.count * 2)))
        }
    }

    /// Skips one metadata value of type `type`; `depth` bounds nested arrays.
    private func skipValue(_ c: inout Cursor, type: UInt32, depth: Int) throws {
        switch type {
        case 0, 1, 7: try c.skip(1)
        case 2, 3: try c.skip(2)
        case 4, 5, 6: try c.skip(4)
        case 10, 11, 12: try c.skip(8)
        case 8:
            let n = try c.u64()
            guard n <= UInt64(GGUFFileLayout.maximumHeaderBytes) else { throw refuse("a string of \(n) bytes") }
            try c.skip(Int(n))
        case 9:
            guard depth < GGUFFileLayout.maximumArrayNesting else { throw refuse("arrays nested more than \(GGUFFileLayout.maximumArrayNesting) deep") }
            let elementType = try c.u32()
            let count = try c.u64()
            guard count <= UInt64(GGUFFileLayout.maximumHeaderBytes) else { throw refuse("an array of \(count) values") }
            let fixed: Int? = switch elementType {
            case 0, 1, 7: 1
            case 2, 3: 2
            case 4, 5, 6: 4
            case 10, 11, 12: 8
            default: nil
            }
            if let fixed {
                try c.skip(Int(count) * fixed)
            } else if elementType == 8 || elementType == 9 {
                // Each element takes at least 8 bytes, so the loop ends with the bytes whatever the count says.
                for _ in 0..<Int(count) { try skipValue(&c, type: elementType, depth: depth + 1) }
            } else {
                throw refuse("an array of unknown value type \(elementType)")
            }
        default:
            throw refuse("metadata value type \(type) is unknown")
        }
    }

    private func string(_ c: inout Cursor, what: String) throws -> String {
        let n = try c.u64()
        guard n <= UInt64(GGUFFileLayout.maximumNameBytes) else { throw refuse("\(what) of \(n) bytes") }
        return String(decoding: try c.take(Int(n)), as: UTF8.self)
    }

    private func parse(_ bytes: [UInt8]) throws -> LayoutScan {
        var c = Cursor(bytes: bytes)
        _ = try c.take(4)
        let version = try c.u32()
        guard version == 2 || version == 3 else {
            return .storeWhole(version == 1 ? "GGUF version 1 is not split" : "GGUF version \(version) is unknown (or the file is big-endian)")
        }
        let tensorCount = try c.u64()
        let keyCount = try c.u64()
        guard tensorCount <= UInt64(GGUFFileLayout.maximumHeaderBytes), keyCount <= UInt64(GGUFFileLayout.maximumHeaderBytes) else {
            throw refuse("it declares \(tensorCount) tensors and \(keyCount) metadata keys")
        }
        var pieces: [LayoutPiece] = []
        var runStart = 0
        var alignment = 32
        // Each key takes at least 13 bytes: the loop ends with the bytes whatever the count says.
        for _ in 0..<Int(keyCount) {
            let keyStart = c.at
            let key = try string(&c, what: "a key")
            let type = try c.u32()
            let valueStart = c.at
            if key == "general.alignment" {
                guard type == 4 else { throw refuse("general.alignment is not a uint32") }
                let a = try c.u32()
                guard a > 0, a & (a - 1) == 0, a <= 1 << 20 else { throw refuse("alignment \(a) is not a power of two up to 1 MiB") }
                alignment = Int(a)
            } else {
                try skipValue(&c, type: type, depth: 0)
            }
            if c.at - valueStart >= GGUFFileLayout.largeValueBytes {
                if keyStart > runStart { pieces.append(.header(keyStart - runStart)) }
                pieces.append(.header(c.at - keyStart))
                runStart = c.at
            }
        }
        if c.at > runStart { pieces.append(.header(c.at - runStart)) }
        let infosStart = c.at
        var tensors: [LayoutTensor] = []
        var names = Set<String>()
        for _ in 0..<Int(tensorCount) {
            let name = try string(&c, what: "a tensor name")
            let dimensionCount = try c.u32()
            guard dimensionCount <= UInt32(GGUFFileLayout.maximumDimensions) else { throw refuse("tensor '\(name)' has \(dimensionCount) dimensions") }
            var shape: [Int] = []
            for _ in 0..<Int(dimensionCount) {
                let d = try c.u64()
                guard d <= UInt64(GGUFFileLayout.maximumOffset) else { throw refuse("tensor '\(name)' has a dimension of \(d)") }
                shape.append(Int(d))
            }
            let typeNumber = try c.u32()
            let offset = try c.u64()
            guard let type = GGUFFileLayout.elementType(typeNumber) else {
                return .storeWhole("tensor '\(name)' has GGML type \(typeNumber), which this tessera does not know")
            }
            guard let size = type.byteCount(shape: shape), size <= GGUFFileLayout.maximumOffset else {
                throw refuse("tensor '\(name)' of type \(type) cannot have shape \(shape)")
            }
            guard offset <= UInt64(GGUFFileLayout.maximumOffset), Int(offset) % alignment == 0 else {
                throw refuse("tensor '\(name)' has offset \(offset), not a multiple of the alignment \(alignment) (or too large)")
            }
            guard names.insert(name).inserted else { throw refuse("two tensors are named '\(name)'") }
            tensors.append(LayoutTensor(name: name, type: type, shape: shape, begin: Int(offset), end: Int(offset) + size))
        }
        if c.at > infosStart { pieces.append(.header(c.at - infosStart)) }
        let headerEnd = c.at
        let dataStart = (headerEnd + alignment - 1) / alignment * alignment
        var items: [LayoutItem] = []
        if dataStart > headerEnd { items.append(.gap(begin: headerEnd, end: dataStart)) }
        var at = 0
        for t in tensors.sorted(by: { ($0.begin, $0.end) < ($1.begin, $1.end) }) {
            guard t.begin >= at else { throw refuse("tensor '\(t.name)' at data offset \(t.begin) overlaps the tensor before it (which ends at \(at))") }
            if t.begin > at { items.append(.gap(begin: dataStart + at, end: dataStart + t.begin)) }
            var placed = t
            placed.begin += dataStart
            placed.end += dataStart
            items.append(.tensor(placed))
            at = t.end
        }
        return .parsed(pieces: pieces, items: items, next: .trailing)
    }

    /// The manifest type of a GGML type number: safetensors dtypes where they are the same bytes, else blocks.
    static func elementType(_ ggml: UInt32) -> TensorElementType? {
        switch ggml {
        case 0: return .dtype(.f32)
        case 1: return .dtype(.f16)
        case 30: return .dtype(.bf16)
        case 24: return .dtype(.i8)
        case 25: return .dtype(.i16)
        case 26: return .dtype(.i32)
        case 27: return .dtype(.i64)
        case 28: return .dtype(.f64)
        default: return BlockQuantization.ggml(ggml).map { .blocks($0) }
        }
    }

    func finish(segments: inout [Manifest.Segment]) throws {}
}
