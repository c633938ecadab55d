import Foundation

/// Little-endian bytes of an integer.
public func littleEndian<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    withUnsafeBytes(of: v.littleEndian) { Array($0) }
}

/// Writes ZIP archives byte by byte (PKWARE APPNOTE), independently of the readers under test: STORED entries,
/// optionally with data descriptors (as torch.save writes them), and hooks to make the records lie.
public struct TestZip {
    public struct Entry {
        public var name: String
        public var data: [UInt8]
        /// Sizes in a data descriptor after the data instead of the local header.
        public var descriptor: Bool
        /// Overrides of what the local header and the central directory declare.
        public var localSize: UInt32?
        public var centralSize: UInt32?
        public var zip64LocalSize: UInt64?
        public init(_ name: String, _ data: [UInt8], descriptor: Bool = false) {
            self.name = name
            self.data = data
            self.descriptor = descriptor
        }
    }

    public var entries: [Entry] = []
    public init(_ entries: [Entry] = []) { self.entries = entries }

    public func bytes() -> [UInt8] {
        var out: [UInt8] = []
        var central: [UInt8] = []
        for e in entries {
            let offset = UInt32(out.count)
            let name = Array(e.name.utf8)
            let size = UInt32(e.data.count)
            var extra: [UInt8] = []
            var declared = e.descriptor ? 0 : (e.localSize ?? size)
            if let z = e.zip64LocalSize {
                declared = 0xFFFF_FFFF
                extra = littleEndian(UInt16(1)) + littleEndian(UInt16(16)) + littleEndian(z) + littleEndian(z)
            }
            out += littleEndian(UInt32(0x0403_4B50)) + littleEndian(UInt16(20)) + littleEndian(UInt16(e.descriptor ? 8 : 0))
            out += littleEndian(UInt16(0)) + littleEndian(UInt32(0)) + littleEndian(UInt32(0))
            out += littleEndian(declared) + littleEndian(declared)
            out += littleEndian(UInt16(name.count)) + littleEndian(UInt16(extra.count)) + name + extra
            out += e.data
            if e.descriptor {
                out += littleEndian(UInt32(0x0807_4B50)) + littleEndian(UInt32(0)) + littleEndian(size) + littleEndian(size)
            }
            let csize = e.centralSize ?? size
            central += littleEndian(UInt32(0x0201_4B50)) + littleEndian(UInt16(20)) + littleEndian(UInt16(20))
            central += littleEndian(UInt16(e.descriptor ? 8 : 0)) + littleEndian(UInt16(0)) + littleEndian(UInt32(0)) + littleEndian(UInt32(0))
            central += littleEndian(csize) + littleEndian(csize)
            central += littleEndian(UInt16(name.count)) + littleEndian(UInt16(0)) + littleEndian(UInt16(0))
            central += littleEndian(UInt16(0)) + littleEndian(UInt16(0)) + littleEndian(UInt32(0)) + littleEndian(offset) + name
        }
        let cdOffset = UInt32(out.count)
        out += central
        out += littleEndian(UInt32(0x0605_4B50)) + littleEndian(UInt16(0)) + littleEndian(UInt16(0))
        out += littleEndian(UInt16(entries.count)) + littleEndian(UInt16(entries.count))
        out += littleEndian(UInt32(central.count)) + littleEndian(cdOffset) + littleEndian(UInt16(0))
        return out
    }
}

/// Pickle opcodes, for tests that write pickles by hand.
public enum TestPickle {
    public static func global(_ module: String, _ name: String) -> [UInt8] { [0x63] + Array("\(module)\n\(name)\n".utf8) }
    public static func unicode(_ s: String) -> [UInt8] { [0x58] + littleEndian(UInt32(s.utf8.count)) + Array(s.utf8) }
    public static func int1(_ v: UInt8) -> [UInt8] { [0x4B, v] }
    public static let proto2: [UInt8] = [0x80, 0x02]
    public static let mark: [UInt8] = [0x28]
    public static let tuple: [UInt8] = [0x74]
    public static let emptyTuple: [UInt8] = [0x29]
    public static let emptyDict: [UInt8] = [0x7D]
    public static let reduce: [UInt8] = [0x52]
    public static let setitem: [UInt8] = [0x73]
    public static let binpersid: [UInt8] = [0x51]
    public static let stop: [UInt8] = [0x2E]
    public static let newFalse: [UInt8] = [0x89]

    /// `{name: tensor of `count` float32 at storage key, shape [count]}` as torch.save writes it.
    public static func floatTensorDict(_ tensors: [(name: String, key: String, count: UInt8, shape: [UInt8], stride: [UInt8], offset: UInt8)]) -> [UInt8] {
        var p = proto2 + emptyDict + mark
        for t in tensors {
            p += unicode(t.name)
            p += global("torch._utils", "_rebuild_tensor_v2") + mark
            p += mark + unicode("storage") + global("torch", "FloatStorage") + unicode(t.key) + unicode("cpu") + int1(t.count) + tuple + binpersid
            p += int1(t.offset)
            p += mark + t.shape.flatMap { int1($0) } + tuple
            p += mark + t.stride.flatMap { int1($0) } + tuple
            p += newFalse + global("collections", "OrderedDict") + emptyTuple + reduce
            p += tuple + reduce
        }
        return p + [0x75] + stop  // SETITEMS, STOP
    }
}

/// Writes GGUF v3 files byte by byte, independently of the readers under test.
public struct TestGGUF {
    public var keyValues: [(key: String, type: UInt32, value: [UInt8])] = []
    public var tensors: [(name: String, dims: [UInt64], type: UInt32, offset: UInt64)] = []
    public var declaredTensorCount: UInt64?
    public var declaredKeyCount: UInt64?
    public var data: [UInt8] = []
    public var alignment = 32
    public init() {}

    public static func string(_ s: String) -> [UInt8] { littleEndian(UInt64(s.utf8.count)) + Array(s.utf8) }

    public mutating func addString(_ key: String, _ value: String) { keyValues.append((key, 8, TestGGUF.string(value))) }
    public mutating func addStringArray(_ key: String, _ values: [String]) {
        keyValues.append((key, 9, littleEndian(UInt32(8)) + littleEndian(UInt64(values.count)) + values.flatMap { TestGGUF.string($0) }))
    }

    public func bytes() -> [UInt8] {
        var out = Array("GGUF".utf8) + littleEndian(UInt32(3))
        out += littleEndian(declaredTensorCount ?? UInt64(tensors.count)) + littleEndian(declaredKeyCount ?? UInt64(keyValues.count))
        for kv in keyValues { out += TestGGUF.string(kv.key) + littleEndian(kv.type) + kv.value }
        for t in tensors {
            out += TestGGUF.string(t.name) + littleEndian(UInt32(t.dims.count)) + t.dims.flatMap { littleEndian($0) }
            out += littleEndian(t.type) + littleEndian(t.offset)
        }
        while out.count % alignment != 0 { out.append(0) }
        return out + data
    }
}
