/// A block-quantised element type (GGML's Q4_0, Q8_0, Q4_K, ...): a tensor is a sequence of blocks, each holding
/// `blockElements` values in `blockBytes` bytes. The store keeps the blocks as they are; the manifest names the type
/// in a tensor line's dtype field, and a tensor's byte length follows from its shape (GGUF order: the first
/// dimension is the innermost, and it is a whole number of blocks).
public struct BlockQuantization: Hashable, Sendable {
    /// GGML's name ("Q4_K").
    public let name: String
    /// GGML's type number in GGUF files.
    public let ggmlType: UInt32
    public let blockElements: Int
    public let blockBytes: Int

    /// Every block-quantised type a GGUF file may hold (ggml's type traits). Removed types (4, 5, 31-33, 36-38) are
    /// absent: a file using them is stored whole.
    public static let all: [BlockQuantization] = [
        .init(name: "Q4_0", ggmlType: 2, blockElements: 32, blockBytes: 18),
        .init(name: "Q4_1", ggmlType: 3, blockElements: 32, blockBytes: 20),
        .init(name: "Q5_0", ggmlType: 6, blockElements: 32, blockBytes: 22),
        .init(name: "Q5_1", ggmlType: 7, blockElements: 32, blockBytes: 24),
        .init(name: "Q8_0", ggmlType: 8, blockElements: 32, blockBytes: 34),
        .init(name: "Q8_1", ggmlType: 9, blockElements: 32, blockBytes: 36),
        .init(name: "Q2_K", ggmlType: 10, blockElements: 256, blockBytes: 84),
        .init(name: "Q3_K", ggmlType: 11, blockElements: 256, blockBytes: 110),
        .init(name: "Q4_K", ggmlType: 12, blockElements: 256, blockBytes: 144),
        .init(name: "Q5_K", ggmlType: 13, blockElements: 256, blockBytes: 176),
        .init(name: "Q6_K", ggmlType: 14, blockElements: 256, blockBytes: 210),
        .init(name: "Q8_K", ggmlType: 15, blockElements: 256, blockBytes: 292),
        .init(name: "IQ2_XXS", ggmlType: 16, blockElements: 256, blockBytes: 66),
        .init(name: "IQ2_XS", ggmlType: 17, blockElements: 256, blockBytes: 74),
        .init(name: "IQ3_XXS", ggmlType: 18, blockElements: 256, blockBytes: 98),
        .init(name: "IQ1_S", ggmlType: 19, blockElements: 256, blockBytes: 50),
        .init(name: "IQ4_NL", ggmlType: 20, blockElements: 32, blockBytes: 18),
        .init(name: "IQ3_S", ggmlType: 21, blockElements: 256, blockBytes: 110),
        .init(name: "IQ2_S", ggmlType: 22, blockElements: 256, blockBytes: 82),
        .init(name: "IQ4_XS", ggmlType: 23, blockElements: 256, blockBytes: 136),
        .init(name: "IQ1_M", ggmlType: 29, blockElements: 256, blockBytes: 56),
        .init(name: "TQ1_0", ggmlType: 34, blockElements: 256, blockBytes: 54),
        .init(name: "TQ2_0", ggmlType: 35, blockElements: 256, blockBytes: 66),
        .init(name: "MXFP4", ggmlType: 39, blockElements: 32, blockBytes: 17),
    ]

    private static let byName: [String: BlockQuantization] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
    private static let byType: [UInt32: BlockQuantization] = Dictionary(uniqueKeysWithValues: all.map { ($0.ggmlType, $0) })

    public static func named(_ name: String) -> BlockQuantization? { byName[name] }
    public static func ggml(_ type: UInt32) -> BlockQuantization? { byType[type] }

    /// Bytes of a tensor of this type and shape (GGUF order), or nil if the first dimension is not a whole number of
    /// blocks, the shape is empty, or the size overflows.
    public func byteCount(shape: [Int]) -> Int? {
        guard let first = shape.first, first >= 0, first % blockElements == 0 else { return nil }
        var n = (first / blockElements)
        let (bytes, o) = n.multipliedReportingOverflow(by: blockBytes)
        if o { return nil }
        n = bytes
        for d in shape.dropFirst() {
            guard d >= 0 else { return nil }
            let (m, o2) = n.multipliedReportingOverflow(by: d)
            if o2 { return nil }
            n = m
        }
        return n
    }
}

/// The element type of a tensor segment: a safetensors dtype, or a block quantisation.
public enum TensorElementType: Hashable, Sendable, CustomStringConvertible {
    case dtype(DType)
    case blocks(BlockQuantization)

    /// The manifest's name for it ("F32", "Q4_K").
    public var description: String {
        switch self {
        case let .dtype(d): return d.rawValue
        case let .blocks(b): return b.name
        }
    }

    public init?(manifestName: String) {
        if let d = DType(rawValue: manifestName) { self = .dtype(d) }
        else if let b = BlockQuantization.named(manifestName) { self = .blocks(b) }
        else { return nil }
    }

    /// Bytes of a tensor of this type and shape, or nil on overflow or a shape the type cannot have.
    public func byteCount(shape: [Int]) -> Int? {
        switch self {
        case let .dtype(d): return elementCount(shape).flatMap { d.byteCount(elements: $0) }
        case let .blocks(b): return b.byteCount(shape: shape)
        }
    }
}
