import TesseraIO
/// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON header, then the data region.
/// The header maps tensor names to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data
/// region) and may hold `__metadata__`, a map of strings.
public struct SafetensorsTensor: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Offsets into the data region (the bytes after the header).
    public let begin: Int
    public let end: Int
    public var byteCount: Int { end - begin }
    public var elementCount: Int { TesseraCore.elementCount(shape) ?? 0 }

    public init(name: String, dtype: DType, shape: [Int], begin: Int, end: Int) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.begin = begin
        self.end = end
    }
}

public struct SafetensorsLayout: Sendable {
    /// 8 + header length: where the data region starts in the file.
    public let dataStart: Int
    /// The raw header prefix: the 8 length bytes and the JSON text, exactly as in the file.
    public let headerBytes: [UInt8]
    /// Tensors in data-offset order (the order their bytes appear in the file).
    public let tensors: [SafetensorsTensor]
    public let metadata: [(String, String)]
    /// Length of the data region implied by the tensors (the largest end offset).
    public let dataEnd: Int

    /// The largest header Tessera accepts (the Rust reference implementation's limit is 100 MB).
    public static let maxHeaderLength = 100_000_000
    /// The largest data offset accepted (2^48 bytes), so that offsets plus the header never overflow.
    public static let maximumOffset = 1 << 48

    /// Whether a file's first bytes look like safetensors: a plausible header length followed by '{'.
    /// Used for format detection; a file that looks like safetensors but is malformed is an error, not an opaque blob.
    public static func looksLikeSafetensors(prefix: [UInt8]) -> Bool {
        guard prefix.count >= 9 else { return false }
        let n = readLength(prefix)
        guard n >= 2, n <= UInt64(maxHeaderLength) else { return false }
        return prefix[8] == UInt8(ascii: "{")
    }

    public static func readLength(_ bytes: [UInt8]) -> UInt64 {
        var n: UInt64 = 0
        for k in 0..<8 { n |= UInt64(bytes[k]) << (8 * UInt64(k)) }
        return n
    }

    /// Header length from the first 8 bytes, validated against the limit and the file size when known.
    public static func headerLength(prefix: [UInt8], fileSize: Int?, file: String) throws -> Int {
        guard prefix.count >= 8 else {
            throw TesseraError(.invalidCheckpoint, "\(file): truncated: \(prefix.count) bytes, shorter than the 8-byte header length",
                               hint: "the file is incomplete; re-save or re-download it")
        }
        let n = readLength(prefix)
        guard n <= UInt64(maxHeaderLength) else {
            throw TesseraError(.invalidCheckpoint, "\(file): header length \(n) exceeds the 100 MB limit",
                               hint: "the file is not a valid safetensors checkpoint")
        }
        if let fileSize, Int(n) + 8 > fileSize {
            throw TesseraError(.invalidCheckpoint, "\(file): header length \(n) is longer than the file (\(fileSize) bytes)",
                               hint: "the file is truncated or corrupt; re-save or re-download it")
        }
        return Int(n)
    }

    /// Parses and validates a header. `headerBytes` holds the 8 length bytes and the whole JSON text.
    /// `fileSize`, when known, is checked against the tensors' extents.
    public static func parse(headerBytes: [UInt8], fileSize: Int?, file: String) throws -> SafetensorsLayout {
        let n = try headerLength(prefix: headerBytes, fileSize: fileSize, file: file)
        guard headerBytes.count >= 8 + n else {
            throw TesseraError(.invalidCheckpoint, "\(file): header length \(n) is longer than the file (\(headerBytes.count) bytes)",
                               hint: "the file is truncated or corrupt; re-save or re-download it")
        }
        let json: JSONValue
        do {
            json = try JSONParser.parse(headerBytes[8..<(8 + n)])
        } catch let e as JSONError {
            throw TesseraError(.invalidCheckpoint, "\(file): the JSON header is invalid: \(e.message) at header byte \(e.offset)",
                               hint: "the file is corrupt; re-save it with the safetensors library")
        }
        guard case let .object(pairs) = json else {
            throw TesseraError(.invalidCheckpoint, "\(file): the JSON header is not an object", hint: "the file is not a valid safetensors checkpoint")
        }
        var tensors: [SafetensorsTensor] = []
        var metadata: [(String, String)] = []
        for (name, value) in pairs {
            if name == "__metadata__" {
                guard case let .object(meta) = value else {
                    throw TesseraError(.invalidCheckpoint, "\(file): __metadata__ is not a map of strings", hint: "re-save the file with the safetensors library")
                }
                for (k, v) in meta {
                    guard let s = v.stringValue else {
                        throw TesseraError(.invalidCheckpoint, "\(file): __metadata__ value for '\(k)' is not a string", hint: "re-save the file with the safetensors library")
                    }
                    metadata.append((k, s))
                }
                continue
            }
            try validateName(name, file: file)
            guard let dtypeName = value["dtype"]?.stringValue else {
                throw TesseraError(.invalidCheckpoint, "\(file): tensor '\(name)' has no dtype", hint: "the header is corrupt")
            }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw TesseraError(.unsupported, "\(file): tensor '\(name)' has unknown dtype '\(dtypeName)'",
                                   hint: "supported: " + DType.allCases.map(\.rawValue).joined(separator: ", "))
            }
            guard let shapeValues = value["shape"]?.arrayValue else {
                throw TesseraError(.invalidCheckpoint, "\(file): tensor '\(name)' has no shape", hint: "the header is corrupt")
            }
            var shape: [Int] = []
            for d in shapeValues {
                guard let v = d.intValue, v >= 0 else {
                    throw TesseraError(.invalidCheckpoint, "\(file): tensor '\(name)' has an invalid shape entry", hint: "the header is corrupt")
                }
                shape.append(v)
            }
            guard let offsets = value["data_offsets"]?.arrayValue, offsets.count == 2,
                  let begin = offsets[0].intValue, let end = offsets[1].intValue else {
                throw TesseraError(.invalidCheckpoint, "\(file): tensor '\(name)' has invalid data_offsets", hint: "the header is corrupt")
            }
            // Offsets beyond any real file are refused before any arithmetic on them (2^48 bytes = 256 TB).
            guard begin <= SafetensorsLayout.maximumOffset, end <= SafetensorsLayout.maximumOffset else {
                throw TesseraError(.invalidCheckpoint, "\(file): tensor '\(name)' has data_offsets [\(begin), \(end)] beyond any real file",
                                   hint: "the header is corrupt")
            }
            guard begin >= 0, end >= begin else {
                throw TesseraError(.invalidCheckpoint, "\(file): tensor '\(name)' has data_offsets [\(begin), \(end)] that end before they begin",
                                   hint: "the header is corrupt")
            }
            guard let count = TesseraCore.elementCount(shape), let bytes = dtype.byteCount(elements: count) else {
                throw TesseraError(.invalidCheckpoint, "\(file): tensor '\(name)' shape \(shape) is too large", hint: "the header is corrupt")
            }
            guard bytes == end - begin else {
                throw TesseraError(.invalidCheckpoint,
                                   "\(file): tensor '\(name)' is \(dtype.rawValue) \(shape) = \(bytes) bytes but its data_offsets span \(end - begin) bytes",
                                   hint: "the header is corrupt; re-save the file with the safetensors library")
            }
            tensors.append(SafetensorsTensor(name: name, dtype: dtype, shape: shape, begin: begin, end: end))
        }
        tensors.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var dataEnd = 0
        for (k, t) in tensors.enumerated() {
            if k > 0 {
                let prev = tensors[k - 1]
                // Zero-length tensors may share an offset; anything else overlapping is malformed.
                if t.begin < prev.end && t.byteCount > 0 && prev.byteCount > 0 {
                    throw TesseraError(.invalidCheckpoint, "\(file): tensors '\(prev.name)' and '\(t.name)' overlap in the data region",
                                       hint: "the header is corrupt; re-save the file with the safetensors library")
                }
            }
            dataEnd = max(dataEnd, t.end)
        }
        if let fileSize, 8 + n + dataEnd > fileSize {
            let culprit = tensors.first(where: { 8 + n + $0.end > fileSize })?.name ?? "?"
            throw TesseraError(.invalidCheckpoint,
                               "\(file): truncated: tensor '\(culprit)' extends to byte \(8 + n + dataEnd) but the file has \(fileSize) bytes",
                               hint: "the file is incomplete; re-save or re-download it")
        }
        return SafetensorsLayout(dataStart: 8 + n, headerBytes: Array(headerBytes[0..<(8 + n)]), tensors: tensors,
                                 metadata: metadata, dataEnd: dataEnd)
    }

    /// Tensor names end up in manifests, diffs and conflict reports; names that could act as paths or break a line
    /// are refused.
    public static func validateName(_ name: String, file: String) throws {
        let bad: String?
        if name.isEmpty { bad = "is empty" }
        else if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) { bad = "contains a control character" }
        else if name.hasPrefix("/") || name.contains("\\") { bad = "contains path characters ('/' at the start or '\\')" }
        else if name.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == ".." || $0 == "." || $0.isEmpty }) {
            bad = "contains path characters ('.', '..' or empty path components)"
        } else { bad = nil }
        if let bad {
            throw TesseraError(.invalidCheckpoint, "\(file): tensor name \(String(reflecting: name)) \(bad)",
                               hint: "rename the tensor before saving the checkpoint")
        }
    }
}

/// The one writer of safetensors headers: the 8-byte little-endian length, then the JSON (`__metadata__` first, then
/// each tensor's dtype, shape and data offsets in the order given), padded with spaces as the reference library
/// pads it (to a multiple of 8 bytes, or to fill a space reserved for it).
public enum SafetensorsHeader {
    public struct Entry: Sendable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        /// Offsets in the data region.
        public var begin: Int
        public var end: Int
        public init(name: String, dtype: DType, shape: [Int], begin: Int, end: Int) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.begin = begin
            self.end = end
        }
    }

    /// Entries laid out one after another from offset 0, in the order given.
    public static func contiguous(_ tensors: [(name: String, dtype: DType, shape: [Int])]) -> [Entry] {
        var offset = 0
        return tensors.map { t in
            let n = t.dtype.byteCount(elements: elementCount(t.shape) ?? 0) ?? 0
            defer { offset += n }
            return Entry(name: t.name, dtype: t.dtype, shape: t.shape, begin: offset, end: offset + n)
        }
    }

    /// The JSON text, unpadded.
    public static func json(_ entries: [Entry], metadata: [(String, String)]) -> [UInt8] {
        var pairs: [(String, JSONValue)] = []
        if !metadata.isEmpty { pairs.append(("__metadata__", .object(metadata.map { ($0.0, JSONValue.string($0.1)) }))) }
        for e in entries {
            pairs.append((e.name, .object([("dtype", .string(e.dtype.rawValue)), ("shape", .array(e.shape.map { JSONValue.int($0) })),
                                           ("data_offsets", .array([.int(e.begin), .int(e.end)]))])))
        }
        return Array(JSONValue.object(pairs).serialized().utf8)
    }

    /// The header bytes: length prefix and JSON padded with spaces to a multiple of 8, or to exactly `size` bytes in
    /// all (nil if the JSON does not fit in `size`).
    public static func encode(_ entries: [Entry], metadata: [(String, String)], size: Int? = nil) -> [UInt8]? {
        var text = json(entries, metadata: metadata)
        if let size {
            guard 8 + text.count <= size else { return nil }
            text += [UInt8](repeating: 0x20, count: size - 8 - text.count)
        } else {
            while text.count % 8 != 0 { text.append(0x20) }
        }
        var out: [UInt8] = []
        out.reserveCapacity(8 + text.count)
        var n = UInt64(text.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        return out + text
    }
}
