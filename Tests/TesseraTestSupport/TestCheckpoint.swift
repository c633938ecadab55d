import Foundation

/// Independent checkpoint writer for tests: builds safetensors bytes by hand (not with Tessera's writer), with
/// control over header order, padding and gaps, so that tests can also produce malformed files.
public struct TestCheckpoint {
    public struct Entry {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var bytes: [UInt8]

        public init(name: String, dtype: String, shape: [Int], bytes: [UInt8]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.bytes = bytes
        }
    }
    public var entries: [Entry] = []
    public var metadata: [String: String]? = ["format": "pt"]

    public init() {}

    /// Deterministic pseudo-random float32 values (xorshift), so tests need no numpy.
    public static func floats(_ n: Int, seed: UInt64, scale: Float = 0.02) -> [Float] {
        var s = seed &* 0x9E3779B97F4A7C15 | 1
        return (0..<n).map { _ in
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            return (Float(s % 2_000_001) / 1_000_000 - 1) * scale
        }
    }

    public static func f32Bytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

    public mutating func add(_ name: String, shape: [Int], seed: UInt64, dtype: String = "F32") {
        let n = shape.reduce(1, *)
        let values = TestCheckpoint.floats(n, seed: seed)
        let bytes: [UInt8]
        switch dtype {
        case "F32": bytes = TestCheckpoint.f32Bytes(values)
        case "BF16": bytes = values.flatMap { v -> [UInt8] in let b = v.bitPattern >> 16; return [UInt8(b & 0xFF), UInt8(b >> 8)] }
        case "F16", "I16", "U16": bytes = values.flatMap { v -> [UInt8] in let b = UInt16(truncatingIfNeeded: v.bitPattern >> 13); return [UInt8(b & 0xFF), UInt8(b >> 8)] }
        case "F64", "I64", "U64": bytes = values.flatMap { v -> [UInt8] in withUnsafeBytes(of: Double(v).bitPattern) { Array($0) } }
        case "I32", "U32": bytes = TestCheckpoint.f32Bytes(values)
        default: bytes = values.map { UInt8(truncatingIfNeeded: $0.bitPattern >> 20) }
        }
        entries.append(Entry(name: name, dtype: dtype, shape: shape, bytes: bytes))
    }

    /// The file: header keys in the given order, data in entry order, optional gap bytes after each tensor.
    public func encode(gaps: [Int: [UInt8]] = [:], trailing: [UInt8] = []) -> [UInt8] {
        var header = "{"
        var parts: [String] = []
        if let metadata {
            parts.append("\"__metadata__\":{" + metadata.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",") + "}")
        }
        var offset = 0
        var data: [UInt8] = []
        for (k, e) in entries.enumerated() {
            parts.append("\"\(e.name)\":{\"dtype\":\"\(e.dtype)\",\"shape\":[\(e.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + e.bytes.count)]}")
            data += e.bytes
            offset += e.bytes.count
            if let g = gaps[k] { data += g; offset += g.count }
        }
        header += parts.joined(separator: ",") + "}"
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var out: [UInt8] = []
        var n = UInt64(h.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        return out + h + data + trailing
    }

    public static func withHeader(_ json: String, data: [UInt8]) -> [UInt8] {
        let h = Array(json.utf8)
        var out: [UInt8] = []
        var n = UInt64(h.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        return out + h + data
    }

    public func write(to path: String, gaps: [Int: [UInt8]] = [:], trailing: [UInt8] = []) throws {
        try Data(encode(gaps: gaps, trailing: trailing)).write(to: URL(fileURLWithPath: path))
    }
}

/// A small model: `n` float32 matrices of 64×64 plus a bias, named like a transformer's layers.
public func smallModel(layers: Int = 6, seedOffset: UInt64 = 0, changed: Set<Int> = []) -> TestCheckpoint {
    var c = TestCheckpoint()
    for i in 0..<layers {
        c.add("layers.\(i).weight", shape: [64, 64], seed: UInt64(i + 1) + (changed.contains(i) ? 1000 : 0) + seedOffset)
    }
    c.add("head.bias", shape: [64], seed: 99 + seedOffset)
    return c
}
