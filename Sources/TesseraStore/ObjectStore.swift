#if canImport(Glibc)
import Glibc
#endif
import TesseraCore
import TesseraIO

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

    /// The file of an object. Only for ids that are valid (`ObjectID.isValid`): every id read from a manifest, a
    /// trailer or a remote is checked before it gets here, so no id can name a path outside the store.
    public func objectPath(_ id: String) -> String {
        // Defence in depth: an unchecked id still cannot leave the store (no object is ever named "invalid-id").
        guard ObjectID.isValid(id) else { return "\(objectsDirectory)/invalid-id" }
        return "\(objectsDirectory)/\(id.prefix(2))/\(id.dropFirst(2))"
    }

    public func contains(_ id: String) -> Bool { ObjectID.isValid(id) && FileSystem.exists(objectPath(id)) }

    /// Marks an object as in use now: a `git add` that reuses an object which nothing reachable names yet (found in
    /// the raw-value index, or in the previous version of the file) refreshes its time, so that a `tessera gc`
    /// running meanwhile sees a young object and keeps it (its grace period).
    public func touch(_ id: String) {
        guard ObjectID.isValid(id) else { return }
        _ = utimensat(AT_FDCWD, objectPath(id), nil, 0)
    }

    private func rawIndexPath(_ rawSHA256: String) -> String {
        "\(rawIndexDirectory)/\(rawSHA256.prefix(2))/\(rawSHA256.dropFirst(2))"
    }

    /// The stored object for a raw value, if the store has one (dedup within and across commits).
    /// The index is a cache: an entry that does not check out (a damaged file, an object that is gone or holds
    /// another value) is ignored, and the value is stored afresh. A hit is touched (see `touch`).
    public func lookup(rawSHA256: String) -> Manifest.Stored? {
        guard ObjectID.isValid(rawSHA256), let bytes = try? FileSystem.readFile(rawIndexPath(rawSHA256), limit: 4096) else { return nil }
        let parts = String(decoding: bytes, as: UTF8.self).split(separator: " ")
        guard parts.count == 3, let size = Int(parts[2]), size >= ObjectTrailer.size, ObjectID.isValid(parts[0]),
              (try? ManifestEncoding(parts[1])) != nil else { return nil }
        let id = String(parts[0])
        guard let t = try? trailer(of: id), t.rawSHA256.hexString == rawSHA256 else { return nil }
        touch(id)
        return Manifest.Stored(encoding: String(parts[1]), rawSHA256: rawSHA256, objectID: id, objectSize: size)
    }

    public func recordRaw(_ stored: Manifest.Stored) throws {
        let path = rawIndexPath(stored.rawSHA256)
        try FileSystem.makeDirectories(String(path.dropLast(path.count - path.lastIndex(of: "/")!.utf16Offset(in: path))))
        // A cache: an entry lost in a crash only costs storing that value again, so it is not flushed.
        try FileSystem.writeAtomically(Array("\(stored.objectID) \(stored.encoding) \(stored.objectSize)".utf8), to: path,
                                       tmpDir: tmpDirectory, durable: false)
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

    /// Whether an object is in the store and readable, and if not, why (for `fsck` and fetches, which must tell a
    /// missing object from one that is there but cannot be read).
    public enum Presence: Equatable, Sendable {
        case present
        case missing
        case unreadable(String)
    }

    public func presence(_ id: String) -> Presence {
        guard ObjectID.isValid(id) else { return .unreadable("\(String(reflecting: String(id.prefix(80)))) is not an object id") }
        do {
            _ = try FileDescriptor.openRegularFile(objectPath(id))
            return .present
        } catch let e as TesseraError {
            return FileSystem.exists(objectPath(id)) ? .unreadable(e.message) : .missing
        } catch {
            return .unreadable("\(error)")
        }
    }

    /// An object file opened for reading, with its trailer read and validated (see `ObjectTrailer.decode`).
    public struct OpenedObject {
        let file: FileDescriptor
        let trailerBytes: [UInt8]
        public let payloadLength: Int
        public let trailer: ObjectTrailer
    }

    public func open(_ id: String) throws -> OpenedObject {
        try ObjectID.check(id)
        let path = objectPath(id)
        let f: FileDescriptor
        do {
            f = try FileDescriptor.openRegularFile(path)
        } catch let e as TesseraError {
            if !FileSystem.exists(path) {
                throw TesseraError(.objectMissing, "object \(id.prefix(12)) is missing from the store",
                                   hint: "fetch it with `tessera fetch` (or `tessera pull`) from a remote that has it")
            }
            throw TesseraError(.io, "cannot read object \(id.prefix(12)): \(e.message)",
                               hint: "check the permissions of \(path) (or delete it and fetch it again)")
        }
        let size = try f.size()
        guard size >= ObjectTrailer.size else { throw corrupt(id, "it is shorter than its trailer") }
        var t = [UInt8](repeating: 0, count: ObjectTrailer.size)
        let n = try t.withUnsafeMutableBytes { try f.pread(into: $0, at: size - ObjectTrailer.size) }
        guard n == ObjectTrailer.size else { throw corrupt(id, "its trailer cannot be read") }
        let trailer = try ObjectTrailer.decode(t, object: id, payloadLength: size - ObjectTrailer.size)
        return OpenedObject(file: f, trailerBytes: t, payloadLength: size - ObjectTrailer.size, trailer: trailer)
    }

    public func trailer(of id: String) throws -> ObjectTrailer { try open(id).trailer }

    func corrupt(_ id: String, _ why: String) -> TesseraError {
        TesseraError(.objectCorrupt, "object \(id.prefix(12)) is corrupt: \(why)",
                     hint: "delete \(objectPath(id)) and fetch it again (`tessera fetch`), or run `tessera fsck`")
    }

    /// Decodes an object, handing its raw bytes to `sink` in order, piece by piece. Verification (object id and raw
    /// hash) completes only when the call returns without throwing: a caller that must not act on unverified bytes
    /// must not commit to them before then (the filter reports failure to git, which then discards the output).
    /// `expectedLength`, when the caller knows it (a manifest's segment), is checked against the trailer before any
    /// byte is decoded.
    public func read(_ id: String, expectedLength: Int? = nil, expectedRawSHA256: String? = nil, decoder: ObjectDecoder,
                     sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let object = try open(id)
        let trailer = object.trailer
        if let expectedLength, expectedLength != trailer.rawCount {
            throw corrupt(id, "it holds \(trailer.rawLength) bytes where \(expectedLength) are expected")
        }
        if let expectedRawSHA256, expectedRawSHA256 != trailer.rawSHA256.hexString {
            throw corrupt(id, "it holds another value than the manifest names (raw SHA-256 \(trailer.rawSHA256.hexString.prefix(12)), expected \(expectedRawSHA256.prefix(12)))")
        }
        var baseBytes: LargeBuffer? = nil
        if trailer.encoding == .xorByteGroupedZstd {
            guard let baseID = trailer.baseObjectID else { throw corrupt(id, "its delta base is not recorded") }
            // Delta chains have depth one, and the base has exactly this object's length: checked on the base's
            // trailer before its length is allocated.
            let base = try open(baseID)
            guard base.trailer.encoding != .xorByteGroupedZstd else { throw corrupt(id, "its delta base is itself a delta") }
            guard base.trailer.rawLength == trailer.rawLength else { throw corrupt(id, "its delta base has a different length") }
            let buffer = try LargeBuffer(count: trailer.rawCount)
            try readAll(baseID, into: buffer.bytes, decoder: ObjectDecoder())
            baseBytes = buffer
        }
        let stored = SHA256Hasher()
        let raw = SHA256Hasher()
        var produced = 0
        try decoder.decode(file: object.file, payloadLength: object.payloadLength, trailer: trailer, base: baseBytes,
                           storedHasher: stored, objectID: id) { piece in
            raw.update(piece)
            produced += piece.count
            try sink(piece)
        }
        stored.update(object.trailerBytes)
        guard stored.finalizeHex() == id else { throw corrupt(id, "its bytes do not match its SHA-256") }
        guard produced == trailer.rawCount, raw.finalizeHex() == trailer.rawSHA256.hexString else {
            throw corrupt(id, "its decoded bytes do not match the recorded raw SHA-256")
        }
    }

    /// Decodes a whole object into memory (verified).
    public func readAll(_ id: String, expectedLength: Int? = nil, expectedRawSHA256: String? = nil,
                        decoder: ObjectDecoder = ObjectDecoder()) throws -> [UInt8] {
        var out: [UInt8] = []
        // The array grows with what is decoded: a trailer's length is a claim, not a reservation.
        if let expectedLength { out.reserveCapacity(min(expectedLength, 1 << 26)) }
        try read(id, expectedLength: expectedLength, expectedRawSHA256: expectedRawSHA256, decoder: decoder) { out += $0 }
        return out
    }

    /// Decodes a whole object into a buffer of exactly its raw length (verified); throws if the length differs.
    public func readAll(_ id: String, into buffer: LargeBuffer, decoder: ObjectDecoder = ObjectDecoder()) throws -> LargeBuffer {
        try readAll(id, into: buffer.bytes, decoder: decoder)
        return buffer
    }

    /// Decodes a whole object into `destination`, which must be exactly its raw length (verified; throws otherwise).
    public func readAll(_ id: String, into destination: UnsafeMutableRawBufferPointer, expectedRawSHA256: String? = nil,
                        decoder: ObjectDecoder = ObjectDecoder()) throws {
        var at = 0
        let capacity = destination.count
        try read(id, expectedLength: capacity, expectedRawSHA256: expectedRawSHA256, decoder: decoder) { piece in
            guard at + piece.count <= capacity else { throw corrupt(id, "it is longer than expected") }
            if piece.count == 0 { return }
            (destination.baseAddress! + at).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            at += piece.count
        }
        guard at == capacity else { throw corrupt(id, "it is shorter than expected") }
    }

    /// Checks an object fully (as a read does) without keeping its bytes.
    public func verify(_ id: String, expectedLength: Int? = nil, expectedRawSHA256: String? = nil,
                       decoder: ObjectDecoder = ObjectDecoder()) throws {
        try read(id, expectedLength: expectedLength, expectedRawSHA256: expectedRawSHA256, decoder: decoder) { _ in }
    }

    /// Every object id in the store.
    public func allObjectIDs() -> [String] {
        var out: [String] = []
        for d in FileSystem.list(objectsDirectory) where d.count == 2 {
            for rest in FileSystem.list("\(objectsDirectory)/\(d)") where rest.count == 62 {
                let id = d + rest
                if ObjectID.isValid(id) { out.append(id) }
            }
        }
        return out.sorted()
    }

    public func remove(_ id: String) {
        guard ObjectID.isValid(id) else { return }
        FileSystem.remove(objectPath(id))
    }
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

    /// Decodes a payload whose trailer has been validated (`ObjectTrailer.decode`): every length below derives from
    /// the trailer's bounded raw length and the file's real size, and the zstd stream must produce exactly the
    /// recorded number of bytes and then end.
    func decode(file: FileDescriptor, payloadLength: Int, trailer: ObjectTrailer, base: LargeBuffer?,
                storedHasher: SHA256Hasher, objectID: String, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let rawLength = trailer.rawCount
        var remaining = payloadLength
        func corrupt(_ why: String) -> TesseraError {
            TesseraError(.objectCorrupt, "object \(objectID.prefix(12)) is corrupt: \(why)",
                         hint: "delete it and fetch it again (`tessera fetch`), or run `tessera fsck`")
        }
        if let base, base.count != rawLength { throw corrupt("its delta base has a different length") }
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
            if trailer.encoding != .zstd, plain.count < chunk { plain = [UInt8](repeating: 0, count: chunk) }
            decompressor.reset()
            var blockLength = try nextBlock()
            var inPos = 0
            var finished = false
            // Fills `out` from the zstd stream, reading payload blocks as needed; stops early only if the frame ends.
            // Every step either consumes input, produces output, reads a block or ends the frame, so it terminates.
            func pump(_ out: UnsafeMutableRawBufferPointer) throws -> Int {
                var outPos = 0
                while outPos < out.count && !finished {
                    if inPos == blockLength {
                        blockLength = try nextBlock()
                        inPos = 0
                        if blockLength == 0 { throw corrupt("its compressed data ends early") }
                    }
                    finished = try input.withUnsafeBytes { inp in
                        try decompressor.step(input: UnsafeRawBufferPointer(rebasing: inp[0..<blockLength]), inputPosition: &inPos,
                                              output: out, outputPosition: &outPos)
                    }
                }
                return outPos
            }
            var produced = 0
            while produced < rawLength {
                let want = min(chunk, rawLength - produced)
                let got = try grouped.withUnsafeMutableBytes { try pump(UnsafeMutableRawBufferPointer(rebasing: $0[0..<want])) }
                guard got == want else { throw corrupt("its compressed data is shorter than recorded") }
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
            // The frame must end here: one more byte of output means the data is longer than recorded.
            var probe: UInt8 = 0
            let extra = try withUnsafeMutableBytes(of: &probe) { try pump($0) }
            if extra > 0 { throw corrupt("its compressed data is longer than recorded") }
            // Anything left after the frame is corruption.
            if inPos < blockLength || remaining > 0 { throw corrupt("it has data after its compressed frame") }
        }
    }
}

/// A lock on the store that keeps `tessera gc` from deleting objects while a command may be about to reference them.
///
/// Writers (the filter, the merge driver, fetches) hold it shared for as long as they run: an object a writer reuses
/// (found in the raw-value index) or writes is named only by a manifest git has not recorded yet, so no reachability
/// walk can see it. `tessera gc` takes it exclusively, and so waits for them. The lock is `flock(2)` on
/// `<store>/lock`, released by the kernel when the process ends, however it ends.
public final class StoreLock {
    private let fd: Int32

    public enum Mode { case shared, exclusive }

    /// Takes the lock, waiting for it. With `wait: false`, returns nil at once if it is held the other way.
    public init?(store: ObjectStore, mode: Mode, wait: Bool = true) throws {
        let path = store.root + "/lock"
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileDescriptor.posixError("cannot open \(path)") }
        var operation = mode == .shared ? LOCK_SH : LOCK_EX
        if !wait { operation |= LOCK_NB }
        while flock(fd, operation) != 0 {
            if errno == EINTR { continue }
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { return nil }
            throw FileDescriptor.posixError("cannot lock \(path)", code)
        }
        self.fd = fd
    }

    deinit { close(fd) }
}
