/// The element types of the safetensors format, by their header names.
///
/// Sub-byte types (F4, F6_*) are packed; `bitWidth` is what sizes are computed from, so a tensor's byte length is
/// `ceil(elements * bitWidth / 8)`.
public enum DType: String, Sendable, CaseIterable, Codable {
    case bool = "BOOL"
    case u8 = "U8", i8 = "I8"
    case f8e5m2 = "F8_E5M2", f8e4m3 = "F8_E4M3", f8e8m0 = "F8_E8M0"
    case f4 = "F4", f6e2m3 = "F6_E2M3", f6e3m2 = "F6_E3M2"
    case i16 = "I16", u16 = "U16", f16 = "F16", bf16 = "BF16"
    case i32 = "I32", u32 = "U32", f32 = "F32"
    case f64 = "F64", i64 = "I64", u64 = "U64"
    case c64 = "C64"

    public var bitWidth: Int {
        switch self {
        case .f4: return 4
        case .f6e2m3, .f6e3m2: return 6
        case .bool, .u8, .i8, .f8e5m2, .f8e4m3, .f8e8m0: return 8
        case .i16, .u16, .f16, .bf16: return 16
        case .i32, .u32, .f32: return 32
        case .f64, .i64, .u64, .c64: return 64
        }
    }

    /// Bytes per element for whole-byte types; 1 for packed sub-byte types (they are byte-grouped as bytes).
    public var byteWidth: Int { max(1, bitWidth / 8) }

    /// Whether the type is a floating-point type whose bytes benefit from byte grouping.
    public var isFloatingPoint: Bool {
        switch self {
        case .f16, .bf16, .f32, .f64, .f8e4m3, .f8e5m2, .f8e8m0, .f4, .f6e2m3, .f6e3m2, .c64: return true
        default: return false
        }
    }

    /// Byte length of a tensor of this type with `elements` elements, or nil on overflow.
    public func byteCount(elements: Int) -> Int? {
        let (bits, overflow) = elements.multipliedReportingOverflow(by: bitWidth)
        if overflow { return nil }
        return (bits + 7) / 8
    }
}

/// The number of elements of a shape, or nil if it overflows `Int`.
public func elementCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (m, o) = n.multipliedReportingOverflow(by: d)
        if o { return nil }
        n = m
    }
    return n
}
