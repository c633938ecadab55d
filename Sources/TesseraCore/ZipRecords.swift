import Foundation
import TesseraIO

/// The ZIP records a PyTorch checkpoint or a NumPy .npz holds (PKWARE APPNOTE 4.3: local file headers, data
/// descriptors, central directory, zip64 extras and end records). Only what splitting and reading those archives
/// needs; every size is overflow-checked and capped, nothing is allocated from a declared length.
public enum ZipRecords {
    public static let localSignature: UInt32 = 0x0403_4B50
    public static let centralSignature: UInt32 = 0x0201_4B50
    public static let descriptorSignature: UInt32 = 0x0807_4B50
    public static let endSignature: UInt32 = 0x0605_4B50
    public static let zip64EndSignature: UInt32 = 0x0606_4B50
    public static let zip64LocatorSignature: UInt32 = 0x0706_4B50
    /// Sizes and offsets beyond 2^48 bytes are lies.
    public static let maximumSize = 1 << 48

    public static func u16<C: Collection>(_ b: C, _ at: Int) -> Int where C.Element == UInt8, C.Index == Int {
        Int(b[b.startIndex + at]) | Int(b[b.startIndex + at + 1]) << 8
    }
    public static func u32<C: Collection>(_ b: C, _ at: Int) -> UInt32 where C.Element == UInt8, C.Index == Int {
        var v: UInt32 = 0
        for k in 0..<4 { v |= UInt32(b[b.startIndex + at + k]) << (8 * UInt32(k)) }
        return v
    }
    public static func u64<C: Collection>(_ b: C, _ at: Int) -> UInt64 where C.Element == UInt8, C.Index == Int {
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(b[b.startIndex + at + k]) << (8 * UInt64(k)) }
        return v
    }

    /// A local file header.
    public struct LocalHeader: Equatable, Sendable {
        public var name: String
        public var flags: Int
        public var method: Int
        /// Sizes from the header (or its zip64 extra); nil when a data descriptor after the data carries them.
        public var compressedSize: Int?
        public var uncompressedSize: Int?
        /// 30 + name + extra: where the data starts, from the header's start.
        public var length: Int
        public var hasDataDescriptor: Bool { flags & 8 != 0 }
        public var isEncrypted: Bool { flags & 1 != 0 }
    }

    public enum Parse<T> {
        case needMore(Int)
        case parsed(T)
    }

    /// Reads the local header at the start of `bytes`. Throws on a header that cannot be one.
    public static func localHeader(_ bytes: ArraySlice<UInt8>, file: String) throws -> Parse<LocalHeader> {
        guard bytes.count >= 30 else { return .needMore(30) }
        guard u32(bytes, 0) == localSignature else { throw TesseraError(.invalidCheckpoint, "\(file): not a zip local header") }
        let flags = u16(bytes, 6), method = u16(bytes, 8)
        var csize = Int(u32(bytes, 18)), usize = Int(u32(bytes, 22))
        let nameLength = u16(bytes, 26), extraLength = u16(bytes, 28)
        let length = 30 + nameLength + extraLength
        guard bytes.count >= length else { return .needMore(length) }
        let name = String(decoding: bytes[(bytes.startIndex + 30)..<(bytes.startIndex + 30 + nameLength)], as: UTF8.self)
        let extra = bytes[(bytes.startIndex + 30 + nameLength)..<(bytes.startIndex + length)]
        if csize == 0xFFFF_FFFF || usize == 0xFFFF_FFFF {
            guard let z = zip64Extra(extra) else {
                throw TesseraError(.invalidCheckpoint, "\(file): zip entry '\(name)' has 32-bit sizes marked as zip64 but no zip64 extra field")
            }
            var k = 0
            func next() throws -> Int {
                guard k + 8 <= z.count else { throw TesseraError(.invalidCheckpoint, "\(file): zip entry '\(name)': its zip64 extra field is too short") }
                defer { k += 8 }
                let v = u64(z, k)
                guard v <= UInt64(maximumSize) else { throw TesseraError(.invalidCheckpoint, "\(file): zip entry '\(name)' declares a size of \(v) bytes") }
                return Int(v)
            }
            if usize == 0xFFFF_FFFF { usize = try next() }
            if csize == 0xFFFF_FFFF { csize = try next() }
        }
        let described = flags & 8 != 0
        return .parsed(LocalHeader(name: name, flags: flags, method: method, compressedSize: described && csize == 0 ? nil : csize,
                                   uncompressedSize: described && usize == 0 ? nil : usize, length: length))
    }

    /// The zip64 extended information extra field's data, if present.
    static func zip64Extra(_ extra: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        var k = 0
        while k + 4 <= extra.count {
            let id = u16(extra, k), n = u16(extra, k + 2)
            guard k + 4 + n <= extra.count else { return nil }
            if id == 1 { return extra[(extra.startIndex + k + 4)..<(extra.startIndex + k + 4 + n)] }
            k += 4 + n
        }
        return nil
    }

    /// The length of the data descriptor at the start of `bytes` if it is one for `size` bytes of STORED data
    /// (signature, CRC, then 32- or 64-bit sizes), nil if it is not.
    public static func dataDescriptorLength(_ bytes: ArraySlice<UInt8>, size: Int) -> Int? {
        guard bytes.count >= 16, u32(bytes, 0) == descriptorSignature else { return nil }
        if Int(u32(bytes, 8)) == size && Int(u32(bytes, 12)) == size { return 16 }
        if bytes.count >= 24, u64(bytes, 8) == UInt64(size), u64(bytes, 16) == UInt64(size) { return 24 }
        return nil
    }

    /// A central directory entry.
    public struct CentralEntry: Equatable, Sendable {
        public var name: String
        public var method: Int
        public var compressedSize: Int
        public var uncompressedSize: Int
        public var localHeaderOffset: Int
    }

    /// Reads the central directory entries at the start of `bytes` (which run on to the end records). Throws on a
    /// malformed entry; stops at the first record that is not a central directory entry and returns the entries and
    /// where that record starts.
    public static func centralDirectory(_ bytes: ArraySlice<UInt8>, file: String) throws -> (entries: [CentralEntry], end: Int) {
        var entries: [CentralEntry] = []
        var k = 0
        func bad(_ why: String) -> TesseraError {
            TesseraError(.invalidCheckpoint, "\(file): invalid zip central directory: \(why)", hint: "the archive is corrupt; re-save it")
        }
        while k + 4 <= bytes.count, u32(bytes, k) == centralSignature {
            guard k + 46 <= bytes.count else { throw bad("an entry is cut short") }
            let method = u16(bytes, k + 10)
            var csize = Int(u32(bytes, k + 20)), usize = Int(u32(bytes, k + 24))
            let nameLength = u16(bytes, k + 28), extraLength = u16(bytes, k + 30), commentLength = u16(bytes, k + 32)
            var offset = Int(u32(bytes, k + 42))
            let length = 46 + nameLength + extraLength + commentLength
            guard k + length <= bytes.count else { throw bad("an entry is cut short") }
            let s = bytes.startIndex + k
            let name = String(decoding: bytes[(s + 46)..<(s + 46 + nameLength)], as: UTF8.self)
            if usize == 0xFFFF_FFFF || csize == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
                guard let z = zip64Extra(bytes[(s + 46 + nameLength)..<(s + 46 + nameLength + extraLength)]) else { throw bad("'\(name)' lacks its zip64 extra field") }
                var j = 0
                func next() throws -> Int {
                    guard j + 8 <= z.count else { throw bad("'\(name)': zip64 extra field too short") }
                    defer { j += 8 }
                    let v = u64(z, j)
                    guard v <= UInt64(maximumSize) else { throw bad("'\(name)' declares \(v) bytes") }
                    return Int(v)
                }
                if usize == 0xFFFF_FFFF { usize = try next() }
                if csize == 0xFFFF_FFFF { csize = try next() }
                if offset == 0xFFFF_FFFF { offset = try next() }
            }
            entries.append(CentralEntry(name: name, method: method, compressedSize: csize, uncompressedSize: usize, localHeaderOffset: offset))
            k += length
        }
        return (entries, k)
    }

    /// Finds the central directory of a whole archive from its end records: (offset, size) of the directory.
    public static func locateCentralDirectory(tail: ArraySlice<UInt8>, tailOffset: Int, fileSize: Int, file: String) throws -> (offset: Int, size: Int) {
        func bad(_ why: String) -> TesseraError {
            TesseraError(.invalidCheckpoint, "\(file): not a readable zip archive: \(why)", hint: "the file is truncated or corrupt; re-save it")
        }
        guard tail.count >= 22 else { throw bad("too short") }
        var k = tail.count - 22
        while k >= 0 && u32(tail, k) != endSignature { k -= 1 }
        guard k >= 0 else { throw bad("no end of central directory record") }
        var size = Int(u32(tail, k + 12)), offset = Int(u32(tail, k + 16))
        if (size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF), k >= 20, u32(tail, k - 20) == zip64LocatorSignature {
            let end64 = u64(tail, k - 20 + 8)
            guard end64 <= UInt64(maximumSize), Int(end64) >= tailOffset, Int(end64) - tailOffset + 56 <= tail.count else { throw bad("the zip64 end record is out of reach") }
            let e = Int(end64) - tailOffset
            guard u32(tail, e) == zip64EndSignature else { throw bad("no zip64 end record where the locator says") }
            let s64 = u64(tail, e + 40), o64 = u64(tail, e + 48)
            guard s64 <= UInt64(maximumSize), o64 <= UInt64(maximumSize) else { throw bad("the zip64 end record declares impossible sizes") }
            size = Int(s64)
            offset = Int(o64)
        }
        let (end, o) = offset.addingReportingOverflow(size)
        guard !o, end <= fileSize else { throw bad("the central directory lies outside the file") }
        return (offset, size)
    }
}

/// The header of a `.npy` array (NumPy's format, versions 1-3): its length, dtype, shape and order.
public struct NumpyArrayHeader: Equatable, Sendable {
    /// Magic, version, length field and the dict text: where the array's bytes start.
    public var length: Int
    /// The NumPy type string ("<f4").
    public var descr: String
    public var fortranOrder: Bool
    public var shape: [Int]

    /// The safetensors dtype of the array's bytes, for little-endian (or byte-sized) plain types; nil otherwise.
    public var dtype: DType? {
        let table: [String: DType] = [
            "<f4": .f32, "<f2": .f16, "<f8": .f64, "|i1": .i8, "<i1": .i8, "|u1": .u8, "<u1": .u8, "<i2": .i16, "<u2": .u16,
            "<i4": .i32, "<u4": .u32, "<i8": .i64, "<u8": .u64, "|b1": .bool, "<c8": .c64,
        ]
        return table[descr]
    }

    public enum Parse {
        case needMore(Int)
        case parsed(NumpyArrayHeader)
        case notArray(String)
    }

    /// Parses the header at the start of `bytes`; `.notArray` with a reason for what is not a plain .npy header.
    public static func parse(_ bytes: ArraySlice<UInt8>) -> Parse {
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]
        guard bytes.count >= 10 else { return .needMore(10) }
        guard bytes.prefix(6).elementsEqual(magic) else { return .notArray("not a .npy array") }
        let major = bytes[bytes.startIndex + 6]
        let textLength: Int, start: Int
        switch major {
        case 1: textLength = ZipRecords.u16(bytes, 8); start = 10
        case 2, 3:
            guard bytes.count >= 12 else { return .needMore(12) }
            textLength = Int(ZipRecords.u32(bytes, 8)); start = 12
        default: return .notArray(".npy version \(major)")
        }
        guard textLength <= 1 << 20 else { return .notArray("a .npy header of \(textLength) bytes") }
        guard bytes.count >= start + textLength else { return .needMore(start + textLength) }
        let text = String(decoding: bytes[(bytes.startIndex + start)..<(bytes.startIndex + start + textLength)], as: UTF8.self)
        // {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
        func field(_ key: String) -> Substring? {
            guard let r = text.range(of: "'\(key)':") else { return nil }
            return text[r.upperBound...].drop(while: { $0 == " " })
        }
        guard let d = field("descr"), d.first == "'", let close = d.dropFirst().firstIndex(of: "'") else { return .notArray("no plain 'descr' (a structured dtype?)") }
        let descr = String(d[d.index(after: d.startIndex)..<close])
        guard let f = field("fortran_order") else { return .notArray("no 'fortran_order'") }
        let fortran = f.hasPrefix("True")
        guard fortran || f.hasPrefix("False") else { return .notArray("an invalid 'fortran_order'") }
        guard let sh = field("shape"), sh.first == "(", let end = sh.firstIndex(of: ")") else { return .notArray("no 'shape'") }
        var shape: [Int] = []
        for part in sh[sh.index(after: sh.startIndex)..<end].split(separator: ",") {
            let t = part.filter { $0 != " " }
            if t.isEmpty { continue }
            guard let v = Int(t), v >= 0, v <= ZipRecords.maximumSize else { return .notArray("an invalid shape") }
            shape.append(v)
        }
        return .parsed(NumpyArrayHeader(length: start + textLength, descr: descr, fortranOrder: fortran, shape: shape))
    }
}
