import TesseraIO
/// The manifest: what git stores for a tracked file instead of its bytes.
///
/// Text, deterministic (the same file always yields the same bytes), one line per segment of the file in file
/// order, so that `git diff`, `git log -p` and `git blame` read naturally. It holds everything needed to rebuild the
/// file byte for byte: the format's header (as an object), every tensor's bytes (as objects) and any bytes between
/// them. See docs/manifest-format.md.
///
/// Version 2 (written now) gives segments lengths, not offsets: a tensor's line changes only when the tensor does
/// (version 1 lines carried byte offsets, so a header that grew by a byte shifted every line after it). Version 1
/// manifests are read, and kept as they are while the file they describe does not change.
///
///     tessera-manifest 2
///     format safetensors
///     size 497759232
///     header 18440 zstd <raw sha256> <object id> <object size>
///     tensor h.0.attn.c_attn.weight F32 [768,2304] bg4+zstd <raw sha256> <object id> <object size>
///     gap 4 inline 00000000
///     end
public struct Manifest: Equatable, Sendable {
    public static let magic = "tessera-manifest"
    /// The version `render` writes; `parse` reads 1 and 2.
    public static let version = 2
    public static let readableVersions = 1...2

    public enum Format: String, Sendable {
        case safetensors
        /// Any file that is not a recognised checkpoint: stored whole, as one object.
        case opaque
        /// A GGUF file: metadata runs (big arrays such as a vocabulary on their own), tensor infos, padding, tensors.
        case gguf
        /// A PyTorch zip checkpoint (`torch.save` since 1.6): zip records and the pickle as headers, storages as tensors.
        case pytorch
        /// A NumPy `.npz` archive: each stored `.npy` entry's headers, then its array; compressed entries whole.
        case npz
    }

    /// A stored run of bytes: its encoding, the SHA-256 of its raw bytes (the value's identity) and the object id
    /// (SHA-256 of the stored object's bytes: the address in the store and the Git LFS oid).
    public struct Stored: Equatable, Sendable {
        public var encoding: String
        public var rawSHA256: String
        public var objectID: String
        /// Size of the stored object in bytes (what a Git LFS pointer and transfer need).
        public var objectSize: Int
        public init(encoding: String, rawSHA256: String, objectID: String, objectSize: Int) {
            self.encoding = encoding
            self.rawSHA256 = rawSHA256
            self.objectID = objectID
            self.objectSize = objectSize
        }
        var text: String { "\(encoding) \(rawSHA256) \(objectID) \(objectSize)" }
    }

    public enum Segment: Equatable, Sendable {
        /// The format's header (for safetensors: the 8 length bytes and the JSON text).
        case header(begin: Int, end: Int, Stored)
        case tensor(name: String, dtype: DType, shape: [Int], begin: Int, end: Int, Stored)
        /// A block-quantised tensor (GGUF), its blocks kept as they are; the shape is in GGUF order.
        case blocks(name: String, type: BlockQuantization, shape: [Int], begin: Int, end: Int, Stored)
        /// Bytes not covered by the header or a tensor (alignment padding, trailing bytes). Small gaps inline.
        case gap(begin: Int, end: Int, GapContent)
        /// The whole file as one object (opaque files).
        case blob(begin: Int, end: Int, Stored)

        public var begin: Int {
            switch self {
            case let .header(b, _, _), let .tensor(_, _, _, b, _, _), let .blocks(_, _, _, b, _, _), let .gap(b, _, _), let .blob(b, _, _): return b
            }
        }
        public var end: Int {
            switch self {
            case let .header(_, e, _), let .tensor(_, _, _, _, e, _), let .blocks(_, _, _, _, e, _), let .gap(_, e, _), let .blob(_, e, _): return e
            }
        }
        public var stored: Stored? {
            switch self {
            case let .header(_, _, s), let .tensor(_, _, _, _, _, s), let .blocks(_, _, _, _, _, s), let .blob(_, _, s): return s
            case .gap(_, _, .object(let s)): return s
            case .gap: return nil
            }
        }
        /// The tensor's name, for tensor and block-quantised tensor segments.
        public var tensorName: String? {
            switch self {
            case let .tensor(n, _, _, _, _, _), let .blocks(n, _, _, _, _, _): return n
            default: return nil
            }
        }
    }

    public enum GapContent: Equatable, Sendable {
        case inline([UInt8])
        case object(Stored)
    }

    public static let inlineGapLimit = 64

    public var format: Format
    public var size: Int
    public var segments: [Segment]

    public init(format: Format, size: Int, segments: [Segment]) {
        self.format = format
        self.size = size
        self.segments = segments
    }

    /// Every object the manifest refers to (what a checkout needs and what a push must carry), in order, unique.
    /// Objects that an object depends on (delta bases) are named in the encoding field after '@'.
    public var objectIDs: [String] { objects.map(\.id) }

    /// Object ids with their sizes.
    public var objects: [(id: String, size: Int)] {
        var seen = Set<String>()
        var out: [(String, Int)] = []
        for s in segments {
            guard let st = s.stored else { continue }
            if seen.insert(st.objectID).inserted { out.append((st.objectID, st.objectSize)) }
            for (id, size) in Manifest.baseObjects(encoding: st.encoding) where seen.insert(id).inserted { out.append((id, size)) }
        }
        return out
    }

    /// Delta encodings name their base object and its size: "xor+bg4+zstd@<object id>:<object size>".
    public static func baseObjects(encoding: String) -> [(id: String, size: Int)] {
        (try? ManifestEncoding(encoding))?.dependencies ?? []
    }

    /// The codec name of an encoding field, without its dependencies ("xor+bg4+zstd@..." → "xor+bg4+zstd").
    public static func encodingName(_ encoding: String) -> String {
        String(encoding.split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
    }

    public var tensors: [(name: String, dtype: DType, shape: [Int], begin: Int, end: Int, stored: Stored)] {
        segments.compactMap {
            if case let .tensor(n, d, s, b, e, st) = $0 { return (n, d, s, b, e, st) }
            return nil
        }
    }

    /// Every tensor segment with its element type: `tensors` plus the block-quantised ones (GGUF).
    public var typedTensors: [(name: String, type: TensorElementType, shape: [Int], begin: Int, end: Int, stored: Stored)] {
        segments.compactMap {
            switch $0 {
            case let .tensor(n, d, s, b, e, st): return (n, .dtype(d), s, b, e, st)
            case let .blocks(n, q, s, b, e, st): return (n, .blocks(q), s, b, e, st)
            default: return nil
            }
        }
    }

    // MARK: - Text form

    public func render(version: Int = Manifest.version) -> String {
        var out = "\(Manifest.magic) \(version)\nformat \(format.rawValue)\nsize \(size)\n"
        // Version 1 writes each segment's byte range; version 2 only the lengths it cannot derive (a tensor's length
        // is its dtype times its shape).
        func range(_ b: Int, _ e: Int) -> String { version == 1 ? "\(b) \(e)" : "\(e - b)" }
        for s in segments {
            switch s {
            case let .header(b, e, st):
                out += "header \(range(b, e)) \(st.text)\n"
            case let .tensor(name, dtype, shape, b, e, st):
                let extent = version == 1 ? " \(b) \(e)" : ""
                out += "tensor \(Manifest.escapeName(name)) \(dtype.rawValue) [\(shape.map(String.init).joined(separator: ","))]\(extent) \(st.text)\n"
            case let .blocks(name, type, shape, b, e, st):
                let extent = version == 1 ? " \(b) \(e)" : ""
                out += "tensor \(Manifest.escapeName(name)) \(type.name) [\(shape.map(String.init).joined(separator: ","))]\(extent) \(st.text)\n"
            case let .gap(b, e, .inline(bytes)):
                out += "gap \(range(b, e)) inline \(bytes.hexString)\n"
            case let .gap(b, e, .object(st)):
                out += "gap \(range(b, e)) \(st.text)\n"
            case let .blob(b, e, st):
                out += "blob \(range(b, e)) \(st.text)\n"
            }
        }
        out += "end\n"
        return out
    }

    /// Whether bytes begin like a manifest (used to tell manifests from raw files git may hand the filter).
    public static func looksLikeManifest<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        let prefix = Array((magic + " ").utf8)
        return bytes.count >= prefix.count && zip(bytes, prefix).allSatisfy { $0 == $1 }
    }

    public static func parse(_ text: String, file: String = "manifest") throws -> Manifest {
        func bad(_ line: Int, _ why: String) -> TesseraError {
            TesseraError(.invalidManifest, "\(file): manifest line \(line): \(why)",
                         hint: "the manifest was edited or damaged; restore it with `git checkout -- \(file)`")
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let first = lines.first.map(String.init) ?? ""
        guard first.hasPrefix(magic + " ") else { throw bad(1, "not a tessera manifest") }
        guard let version = Int(first.dropFirst(magic.count + 1)), version >= 1 else { throw bad(1, "not a tessera manifest") }
        guard readableVersions.contains(version) else {
            throw TesseraError(.invalidManifest, "\(file): manifest \(first) is newer than this tessera understands",
                               hint: "upgrade tessera")
        }
        guard lines.count >= 4 else { throw bad(lines.count, "missing 'end': the manifest is truncated") }
        guard lines[1].hasPrefix("format "), let format = Format(rawValue: String(lines[1].dropFirst(7))) else {
            throw bad(2, "unknown format")
        }
        guard lines[2].hasPrefix("size "), let size = Int(lines[2].dropFirst(5)), size >= 0 else { throw bad(3, "invalid size") }
        var segments: [Segment] = []
        var ended = false
        var position = 0
        for (k, raw) in lines.enumerated().dropFirst(3) {
            let n = k + 1
            if ended {
                guard raw.isEmpty, k == lines.count - 1 else { throw bad(n, "text after 'end'") }
                continue
            }
            let f = raw.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard let kind = f.first else { throw bad(n, "empty line") }
            func stored(_ at: Int) throws -> Stored {
                guard f.count == at + 4, isHex64(f[at + 1]), isHex64(f[at + 2]), let size = Int(f[at + 3]), size >= 0 else {
                    throw bad(n, "invalid object reference")
                }
                do {
                    // Objects with several dependencies came with version 2.
                    let e = try ManifestEncoding(f[at])
                    if version == 1 && e.dependencies.count > 1 { throw bad(n, "several dependencies in a version 1 manifest") }
                } catch let e as TesseraError where e.code == .invalidManifest && !e.message.contains("manifest line") { throw bad(n, e.message) }
                return Stored(encoding: f[at], rawSHA256: f[at + 1], objectID: f[at + 2], objectSize: size)
            }
            /// The next segment's byte range, from `[begin end]` (version 1) or `length` (version 2) at field `a`;
            /// returns the range and the index of the field after it.
            func range(_ a: Int, length derived: Int? = nil) throws -> (Int, Int, Int) {
                var b = position, e = position, next = a
                if version == 1 {
                    guard f.count > a + 1, let b1 = Int(f[a]), let e1 = Int(f[a + 1]), b1 >= 0, e1 >= b1 else { throw bad(n, "invalid byte range") }
                    guard b1 == position else { throw bad(n, "segments do not tile the file (expected offset \(position))") }
                    (b, e, next) = (b1, e1, a + 2)
                } else if let derived {
                    e = position + derived
                } else {
                    guard f.count > a, let length = Int(f[a]), length >= 0 else { throw bad(n, "invalid length") }
                    e = position + length
                    next = a + 1
                }
                guard e <= size else { throw bad(n, "the segment ends at byte \(e), after the file's \(size) bytes") }
                position = e
                return (b, e, next)
            }
            switch kind {
            case "end": ended = true
            case "header":
                let (b, e, at) = try range(1)
                segments.append(.header(begin: b, end: e, try stored(at)))
            case "blob":
                let (b, e, at) = try range(1)
                segments.append(.blob(begin: b, end: e, try stored(at)))
            case "gap":
                let (b, e, at) = try range(1)
                if f.count == at + 2, f[at] == "inline" {
                    guard let bytes = [UInt8](hex: f[at + 1]), bytes.count == e - b else { throw bad(n, "invalid inline bytes") }
                    segments.append(.gap(begin: b, end: e, .inline(bytes)))
                } else {
                    segments.append(.gap(begin: b, end: e, .object(try stored(at))))
                }
            case "tensor":
                guard f.count == (version == 1 ? 10 : 8) else { throw bad(n, "a tensor line has \(version == 1 ? 10 : 8) fields") }
                let name = try unescapeName(f[1], line: n, file: file)
                // Block-quantised types came with version 2 (GGUF).
                guard let type = TensorElementType(manifestName: f[2]) else { throw bad(n, "unknown dtype \(f[2])") }
                if case .blocks = type, version == 1 { throw bad(n, "unknown dtype \(f[2])") }
                guard f[3].hasPrefix("["), f[3].hasSuffix("]") else { throw bad(n, "invalid shape") }
                let dims = f[3].dropFirst().dropLast()
                var shape: [Int] = []
                for part in dims.split(separator: ",", omittingEmptySubsequences: false) where !dims.isEmpty {
                    guard let d = Int(part), d >= 0 else { throw bad(n, "invalid shape") }
                    shape.append(d)
                }
                guard let bytes = type.byteCount(shape: shape) else {
                    if case .blocks = type { throw bad(n, "tensor '\(name)' cannot be \(type) \(shape): not whole blocks") }
                    throw bad(n, "tensor '\(name)' is \(type) \(shape), larger than the file")
                }
                guard bytes <= size else {
                    throw bad(n, "tensor '\(name)' is \(type) \(shape), larger than the file")
                }
                let (b, e, at) = try range(4, length: version == 1 ? nil : bytes)
                guard bytes == e - b else {
                    throw bad(n, "tensor '\(name)' is \(type) \(shape) but spans \(e - b) bytes")
                }
                switch type {
                case let .dtype(dtype): segments.append(.tensor(name: name, dtype: dtype, shape: shape, begin: b, end: e, try stored(at)))
                case let .blocks(q): segments.append(.blocks(name: name, type: q, shape: shape, begin: b, end: e, try stored(at)))
                }
            default:
                throw bad(n, "unknown line kind '\(kind)'")
            }
        }
        guard ended else { throw bad(lines.count, "missing 'end': the manifest is truncated") }
        guard position == size else { throw bad(lines.count, "segments cover \(position) of \(size) bytes") }
        return Manifest(format: format, size: size, segments: segments)
    }

    /// Names are written with '%', ' ' and non-ASCII-printable bytes percent-encoded, so a line always splits on spaces.
    public static func escapeName(_ name: String) -> String {
        String(decoding: escapeBytes(name), as: UTF8.self)
    }

    private static func escapeBytes(_ name: String) -> [UInt8] {
        var out: [UInt8] = []
        for b in name.utf8 {
            if b == UInt8(ascii: "%") || b == UInt8(ascii: " ") || b < 0x21 || b == 0x7F {
                out += Array("%\(String(format2: b))".utf8)
            } else {
                out.append(b)
            }
        }
        return out
    }

    static func unescapeName(_ s: String, line: Int, file: String) throws -> String {
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%") {
                guard bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else {
                    throw TesseraError(.invalidManifest, "\(file): manifest line \(line): invalid escape in tensor name")
                }
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The encoding field of a manifest line: a codec name, then the objects it depends on with their sizes:
/// `zstd`, `bg4+zstd`, `xor+bg4+zstd@<base id>:<base size>`, and in version 2 manifests any number of dependencies
/// (`NAME@ID:SIZE,ID:SIZE`). Parsed strictly: dependency ids become paths in the store, so nothing but a well-formed
/// id may come out of it. Which names exist is the store's codec registry's business (an unknown one is read from
/// its object's trailer, which says "upgrade tessera").
public struct ManifestEncoding: Equatable, Sendable {
    public var name: String
    public var dependencies: [(id: String, size: Int)]

    /// The first dependency (a delta's base).
    public var base: (id: String, size: Int)? { dependencies.first }

    public static func == (a: ManifestEncoding, b: ManifestEncoding) -> Bool {
        a.name == b.name && a.dependencies.map(\.id) == b.dependencies.map(\.id) && a.dependencies.map(\.size) == b.dependencies.map(\.size)
    }

    public init<S: StringProtocol>(_ text: S, maximumDependencies: Int = 16) throws {
        func bad() -> TesseraError {
            TesseraError(.invalidManifest, "invalid encoding \(String(reflecting: String(text.prefix(160))))",
                         hint: "the manifest was damaged, or written by a newer tessera (upgrade)")
        }
        let s = String(text)
        let parts = s.split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false)
        let name = String(parts[0])
        // A name is words of lower-case letters and digits joined by '+'.
        let words = name.split(separator: "+", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= 64, words.allSatisfy({ w in
            !w.isEmpty && w.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) }
        }) else { throw bad() }
        var dependencies: [(String, Int)] = []
        if parts.count == 2 {
            let refs = parts[1].split(separator: ",", omittingEmptySubsequences: false)
            guard refs.count <= maximumDependencies else { throw bad() }
            for ref in refs {
                let f = ref.split(separator: ":", omittingEmptySubsequences: false)
                guard f.count == 2, isHex64(String(f[0])), !f[1].isEmpty, f[1].count <= 18,
                      f[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let size = Int(f[1]) else { throw bad() }
                dependencies.append((String(f[0]), size))
            }
        }
        self.name = name
        self.dependencies = dependencies
    }
}

@inline(__always) func isHex64(_ s: String) -> Bool {
    s.utf8.count == 64 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
}

extension String {
    init(format2 b: UInt8) {
        let digits = Array("0123456789ABCDEF".utf8)
        self = String(decoding: [digits[Int(b >> 4)], digits[Int(b & 15)]], as: UTF8.self)
    }
}

extension Array where Element == UInt8 {
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](repeating: 0, count: count * 2)
        for (k, b) in enumerated() {
            out[2 * k] = digits[Int(b >> 4)]
            out[2 * k + 1] = digits[Int(b & 15)]
        }
        return String(decoding: out, as: UTF8.self)
    }

    public init?(hex: String) {
        let u = Array(hex.utf8)
        guard u.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(u.count / 2)
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        var i = 0
        while i < u.count {
            guard let hi = v(u[i]), let lo = v(u[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        self = out
    }
}
