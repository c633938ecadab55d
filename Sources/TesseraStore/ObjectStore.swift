#if canImport(Glibc)
import Glibc
#endif
import TesseraCore

/// The content-addressed object store, inside the repository's common git directory (shared by all worktrees):
///
///     tessera/objects/ab/cdef…   objects, named by the SHA-256 of their bytes (= Git LFS oid)
///     tessera/raw/ab/cdef…       raw-value index: SHA-256 of raw bytes → "object-id encoding" (for dedup)
///     tessera/tmp/               objects being written; renamed into place only when complete and fsynced
///
/// Writes are atomic, so a reader never sees half an object; every read is verified against the object id and
/// against the raw hash recorded in the object's trailer.
public final class ObjectStore: @unchecked Sendable {
    // @unchecked: every stored property is an immutable path; all shared state is in the file system, where
    // concurrent writers of the same object race harmlessly (both rename identical bytes into place).
    public let root: String
    public let objectsDirectory: String
    public let rawIndexDirectory: String
    public let tmpDirectory: String

    public init(root: String) throws {
        self.root = root
        objectsDirectory = root + "/objects"
        rawIndexDirectory = root + "/raw"
        tmpDirectory = root + "/tmp"
        for d in [objectsDirectory, rawIndexDirectory, tmpDirectory] { try FileSystem.makeDirectories(d) }
    }

    public func objectPath(_ id: String) -> String {
        "\(objectsDirectory)/\(id.prefix(2))/\(id.dropFirst(2))"
    }

    public func contains(_ id: String) -> Bool { FileSystem.exists(objectPath(id)) }

    private func rawIndexPath(_ rawSHA256: String) -> String {
        "\(rawIndexDirectory)/\(rawSHA256.prefix(2))/\(rawSHA256.dropFirst(2))"
    }

    /// The stored object for a raw value, if the store has one (dedup within and across commits).
    public func lookup(rawSHA256: String) -> Manifest.Stored? {
        guard let bytes = try? FileSystem.readFile(rawIndexPath(rawSHA256)) else { return nil }
        let parts = String(decoding: bytes, as: UTF8.self).split(separator: " ")
        guard parts.count == 3, let size = Int(parts[2]), contains(String(parts[0])) else { return nil }
        return Manifest.Stored(encoding: String(parts[1]), rawSHA256: rawSHA256, objectID: String(parts[0]), objectSize: size)
    }

    public func recordRaw(_ stored: Manifest.Stored) throws {
        let path = rawIndexPath(stored.rawSHA256)
        try FileSystem.makeDirectories(String(path.dropLast(path.count - path.lastIndex(of: "/")!.utf16Offset(in: path))))
        try FileSystem.writeAtomically(Array("\(stored.objectID) \(stored.encoding) \(stored.objectSize)".utf8), to: path, tmpDir: tmpDirectory)
    }

    // MARK: Writing

    /// Encodes and stores raw bytes as one object (unless an object for the same raw value already exists).
    /// `width` is the element size for byte grouping (1 disables it); `base`, when given, is the raw value of the
    /// same tensor's previous version, for an XOR delta.
    public func put(raw: UnsafeRawBufferPointer, rawSHA256: String, width: Int, encoder: ObjectEncoder,
                    base: (objectID: String, raw: UnsafeRawBufferPointer)? = nil, batch: ObjectBatch? = nil) throws -> Manifest.Stored {
        if let existing = batch?.lookup(rawSHA256: rawSHA256) ?? lookup(rawSHA256: rawSHA256) { return existing }
        let writer = try ObjectWriter(store: self)
        do {
            let encoding: ObjectEncoding
            if let base, base.raw.count == raw.count, width > 1 {
                encoding = .xorByteGroupedZstd
            } else if width > 1 {
                encoding = .byteGroupedZstd
            } else {
                encoding = .zstd
            }
            try encoder.encode(raw: raw, encoding: encoding, width: width, base: encoding == .xorByteGroupedZstd ? base?.raw : nil) {
                try writer.write($0)
            }
            let trailer = ObjectTrailer(rawSHA256: [UInt8](hex: rawSHA256)!, baseObject: base.flatMap { encoding == .xorByteGroupedZstd ? [UInt8](hex: $0.objectID) : nil },
                                        rawLength: UInt64(raw.count), encoding: encoding, width: UInt8(width))
            let (id, size) = try writer.finish(trailer: trailer, batch: batch)
            let stored = Manifest.Stored(
                encoding: encoding.manifestName(width: width, base: encoding == .xorByteGroupedZstd
                    ? base.map { "\($0.objectID):\(FileSystem.fileStat(objectPath($0.objectID))?.size ?? 0)" } : nil),
                rawSHA256: rawSHA256, objectID: id, objectSize: size)
            if let batch { batch.record(stored) } else { try recordRaw(stored) }
            return stored
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// Starts an object whose raw bytes arrive in pieces (opaque files of any size): compressed as they come.
    public func beginStreamingObject() throws -> StreamingObjectWriter {
        try StreamingObjectWriter(store: self)
    }

    // MARK: Reading

    public func trailer(of id: String) throws -> ObjectTrailer {
        let f = try openObject(id)
        let size = try f.size()
        guard size >= ObjectTrailer.size else { throw corrupt(id, "it is shorter than its trailer") }
        var t = [UInt8](repeating: 0, count: ObjectTrailer.size)
        _ = try t.withUnsafeMutableBytes { try f.pread(into: $0, at: size - ObjectTrailer.size) }
        return try ObjectTrailer.decode(t, object: id)
    }

    private func openObject(_ id: String) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open(objectPath(id), flags: O_RDONLY)
        } catch {
            throw TesseraError(.objectMissing, "object \(id.prefix(12)) is missing from the store",
                               hint: "fetch it with `git tessera fetch` (or `git pull`) from a remote that has it")
        }
    }

    func corrupt(_ id: String, _ why: String) -> TesseraError {
        TesseraError(.objectCorrupt, "object \(id.prefix(12)) is corrupt: \(why)",
                     hint: "delete \(objectPath(id)) and fetch it again (`git tessera fetch`), or run `tessera fsck`")
    }

    /// Decodes an object, handing its raw bytes to `sink` in order, piece by piece. Verification (object id and raw
    /// hash) completes only when the call returns without throwing: a caller that must not act on unverified bytes
    /// must not commit to them before then (the filter reports failure to git, which then discards the output).
    public func read(_ id: String, decoder: ObjectDecoder, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let f = try openObject(id)
        let size = try f.size()
        guard size >= ObjectTrailer.size else { throw corrupt(id, "it is shorter than its trailer") }
        var t = [UInt8](repeating: 0, count: ObjectTrailer.size)
        _ = try t.withUnsafeMutableBytes { try f.pread(into: $0, at: size - ObjectTrailer.size) }
        let trailer = try ObjectTrailer.decode(t, object: id)
        var baseBytes: LargeBuffer? = nil
        if trailer.encoding == .xorByteGroupedZstd {
            guard let baseID = trailer.baseObjectID else { throw corrupt(id, "its delta base is not recorded") }
            do {
                baseBytes = try readAll(baseID, into: LargeBuffer(count: Int(trailer.rawLength)))
            } catch let e as TesseraError where e.code == .objectCorrupt && !e.message.contains(baseID.prefix(12)) {
                throw corrupt(id, "its delta base has a different length")
            }
        }
        let stored = SHA256Hasher()
        let raw = SHA256Hasher()
        var produced = 0
        try decoder.decode(file: f, payloadLength: size - ObjectTrailer.size, trailer: trailer, base: baseBytes,
                           storedHasher: stored, objectID: id) { piece in
            raw.update(piece)
            produced += piece.count
            try sink(piece)
        }
        stored.update(t)
        guard stored.finalizeHex() == id else { throw corrupt(id, "its bytes do not match its SHA-256") }
        guard produced == Int(trailer.rawLength), raw.finalizeHex() == trailer.rawSHA256.hexString else {
            throw corrupt(id, "its decoded bytes do not match the recorded raw SHA-256")
        }
    }

    /// Decodes a whole object into memory (verified).
    public func readAll(_ id: String, decoder: ObjectDecoder = ObjectDecoder()) throws -> [UInt8] {
        var out: [UInt8] = []
        if let t = try? trailer(of: id) { out.reserveCapacity(Int(t.rawLength)) }
        try read(id, decoder: decoder) { out += $0 }
        return out
    }

    /// Decodes a whole object into a buffer of exactly its raw length (verified); throws if the length differs.
    public func readAll(_ id: String, into buffer: LargeBuffer, decoder: ObjectDecoder = ObjectDecoder()) throws -> LargeBuffer {
        try readAll(id, into: buffer.bytes, decoder: decoder)
        return buffer
    }

    /// Decodes a whole object into `destination`, which must be exactly its raw length (verified; throws otherwise).
    public func readAll(_ id: String, into destination: UnsafeMutableRawBufferPointer, decoder: ObjectDecoder = ObjectDecoder()) throws {
        var at = 0
        let capacity = destination.count
        try read(id, decoder: decoder) { piece in
            guard at + piece.count <= capacity else { throw corrupt(id, "it is longer than expected") }
            if piece.count == 0 { return }
            (destination.baseAddress! + at).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            at += piece.count
        }
        guard at == capacity else { throw corrupt(id, "it is shorter than expected") }
    }

    /// Checks an object fully (as a read does) without keeping its bytes.
    public func verify(_ id: String, decoder: ObjectDecoder = ObjectDecoder()) throws {
        try read(id, decoder: decoder) { _ in }
    }

    /// Every object id in the store.
    public func allObjectIDs() -> [String] {
        var out: [String] = []
        for d in FileSystem.list(objectsDirectory) where d.count == 2 {
            for rest in FileSystem.list("\(objectsDirectory)/\(d)") where rest.count == 62 { out.append(d + rest) }
        }
        return out.sorted()
    }

    public func remove(_ id: String) { FileSystem.remove(objectPath(id)) }
}

/// Per-thread encoding state: a zstd context and chunk scratch buffers, reused across objects.
public final class ObjectEncoder {
    private let compressor: ZstdCompressor
    private var grouped: [UInt8] = []
    private var delta: [UInt8] = []

    public init(level: Int32 = 1) { compressor = ZstdCompressor(level: level) }

    public func encode(raw: UnsafeRawBufferPointer, encoding: ObjectEncoding, width: Int, base: UnsafeRawBufferPointer?,
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        switch encoding {
        case .raw:
            try sink(raw)
        case .zstd:
            try compressor.compress(raw, end: true, sink: sink)
        case .byteGroupedZstd, .xorByteGroupedZstd:
            let chunk = ObjectTrailer.chunkBytes(width: width)
            if grouped.count < chunk { grouped = [UInt8](repeating: 0, count: chunk) }
            if base != nil, delta.count < chunk { delta = [UInt8](repeating: 0, count: chunk) }
            var offset = 0
            if raw.count == 0 { try compressor.compress(UnsafeRawBufferPointer(start: nil, count: 0), end: true, sink: sink) }
            while offset < raw.count {
                let n = min(chunk, raw.count - offset)
                let elements = n / width
                let tailBytes = n - elements * width
                var src = raw.baseAddress! + offset
                if let base {
                    delta.withUnsafeMutableBytes { d in
                        ByteGrouping.xor(src, base.baseAddress! + offset, d.baseAddress!, byteCount: n)
                    }
                    src = delta.withUnsafeBytes { $0.baseAddress! }
                }
                let last = offset + n == raw.count
                try grouped.withUnsafeMutableBytes { g in
                    ByteGrouping.group(src, g.baseAddress!, count: elements, width: width)
                    // A length that is not a multiple of the width (packed types) keeps its tail as is.
                    if tailBytes > 0 { (g.baseAddress! + elements * width).copyMemory(from: src + elements * width, byteCount: tailBytes) }
                    try compressor.compress(UnsafeRawBufferPointer(start: g.baseAddress, count: n), end: last, sink: sink)
                }
                offset += n
            }
        }
    }
}

/// Per-thread decoding state.
public final class ObjectDecoder {
    private let decompressor = ZstdDecompressor()
    private var input = [UInt8](repeating: 0, count: 1 << 20)
    private var grouped: [UInt8] = []
    private var plain: [UInt8] = []

    public init() {}

    func decode(file: FileDescriptor, payloadLength: Int, trailer: ObjectTrailer, base: LargeBuffer?,
                storedHasher: SHA256Hasher, objectID: String, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let rawLength = Int(trailer.rawLength)
        var remaining = payloadLength
        func corrupt(_ why: String) -> TesseraError {
            TesseraError(.objectCorrupt, "object \(objectID.prefix(12)) is corrupt: \(why)",
                         hint: "delete it and fetch it again (`git tessera fetch`), or run `tessera fsck`")
        }
        // Reads the next block of payload into `input`; returns its length (0 at the end).
        func nextBlock() throws -> Int {
            let n = min(remaining, input.count)
            guard n > 0 else { return 0 }
            try input.withUnsafeMutableBytes { try file.readExactly(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n])) }
            input.withUnsafeBytes { storedHasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            remaining -= n
            return n
        }
        switch trailer.encoding {
        case .raw:
            guard payloadLength == rawLength else { throw corrupt("its length does not match its trailer") }
            while true {
                let n = try nextBlock()
                if n == 0 { break }
                try input.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        case .zstd, .byteGroupedZstd, .xorByteGroupedZstd:
            let width = Int(trailer.width)
            let chunk = trailer.encoding == .zstd ? (1 << 20) : trailer.chunkBytes
            if grouped.count < chunk { grouped = [UInt8](repeating: 0, count: chunk) }
            if plain.count < chunk { plain = [UInt8](repeating: 0, count: chunk) }
            decompressor.reset()
            var produced = 0
            var blockLength = try nextBlock()
            var inPos = 0
            var finished = false
            while produced < rawLength || !finished {
                let want = min(chunk, rawLength - produced)
                var outPos = 0
                while outPos < want || (want == 0 && !finished) {
                    if inPos == blockLength {
                        blockLength = try nextBlock()
                        inPos = 0
                        if blockLength == 0 {
                            if finished && outPos == want { break }
                            throw corrupt("its compressed data ends early")
                        }
                    }
                    finished = try input.withUnsafeBytes { inp in
                        try grouped.withUnsafeMutableBytes { out in
                            try decompressor.step(input: UnsafeRawBufferPointer(rebasing: inp[0..<blockLength]), inputPosition: &inPos,
                                                  output: UnsafeMutableRawBufferPointer(rebasing: out[0..<want]), outputPosition: &outPos)
                        }
                    }
                    if finished && outPos < want { throw corrupt("its compressed data is shorter than recorded") }
                    if finished { break }
                }
                if want == 0 { break }
                if trailer.encoding == .zstd {
                    try grouped.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<want])) }
                } else {
                    let elements = want / width
                    let tail = want - elements * width
                    try grouped.withUnsafeBytes { g in
                        try plain.withUnsafeMutableBytes { p in
                            ByteGrouping.ungroup(g.baseAddress!, p.baseAddress!, count: elements, width: width)
                            if tail > 0 { (p.baseAddress! + elements * width).copyMemory(from: g.baseAddress! + elements * width, byteCount: tail) }
                            if let base {
                                ByteGrouping.xor(p.baseAddress!, base.bytes.baseAddress! + produced, p.baseAddress!, byteCount: want)
                            }
                            try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(p)[0..<want]))
                        }
                    }
                }
                produced += want
            }
            // Anything left after the frame is corruption.
            if inPos < blockLength || remaining > 0 { throw corrupt("it has data after its compressed frame") }
        }
    }
}
