#if canImport(Glibc)
import Glibc
#endif
import TesseraCore

/// Writes one object: bytes go to a temporary file (buffered) while their SHA-256 is computed; `finish` appends the
/// trailer, fsyncs and renames the file to its content address. Until then nothing is visible in `objects/`, so a
/// killed process or a full disk leaves at most a temporary file, which `tessera gc` removes.
public final class ObjectWriter {
    private let store: ObjectStore
    private let tmpPath: String
    private let file: FileDescriptor
    private let hasher = SHA256Hasher()
    private var buffer: [UInt8] = []
    private static let bufferSize = 1 << 20
    private var done = false
    private var written = 0

    public init(store: ObjectStore) throws {
        self.store = store
        tmpPath = "\(store.tmpDirectory)/\(FileSystem.uniqueName())"
        file = try FileDescriptor.open(tmpPath, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o444)
        buffer.reserveCapacity(ObjectWriter.bufferSize)
    }

    deinit { if !done { FileSystem.remove(tmpPath) } }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        hasher.update(bytes)
        written += bytes.count
        if buffer.count + bytes.count > ObjectWriter.bufferSize { try flush() }
        if bytes.count >= ObjectWriter.bufferSize {
            try file.writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    private func flush() throws {
        if buffer.isEmpty { return }
        try file.writeAll(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Completes the object and returns its id and size.
    public func finish(trailer: ObjectTrailer) throws -> (id: String, size: Int) {
        let t = trailer.encoded()
        try t.withUnsafeBytes { try write($0) }
        try flush()
        try file.sync()
        let id = hasher.finalizeHex()
        let final = store.objectPath(id)
        if FileSystem.exists(final) {
            // Same bytes already stored (a concurrent writer or an earlier run): keep the existing file.
            FileSystem.remove(tmpPath)
        } else {
            let dir = "\(store.objectsDirectory)/\(id.prefix(2))"
            try FileSystem.makeDirectories(dir)
            try FileSystem.rename(tmpPath, final)
        }
        done = true
        return (id, written)
    }

    public func abandon() {
        if !done { FileSystem.remove(tmpPath); done = true }
    }
}

/// An object for a file that is not a recognised checkpoint, written as its bytes stream in: zstd, no grouping.
/// Memory stays constant whatever the file's size.
public final class StreamingObjectWriter {
    private let store: ObjectStore
    private let writer: ObjectWriter
    private let compressor = ZstdCompressor(level: 1)
    private let raw = SHA256Hasher()
    private var length = 0

    init(store: ObjectStore) throws {
        self.store = store
        writer = try ObjectWriter(store: store)
    }

    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        raw.update(bytes)
        length += bytes.count
        try compressor.compress(bytes, end: false) { try writer.write($0) }
    }

    public func finish() throws -> Manifest.Stored {
        do {
            try compressor.compress(UnsafeRawBufferPointer(start: nil, count: 0), end: true) { try writer.write($0) }
            let rawSHA = raw.finalizeHex()
            if let existing = store.lookup(rawSHA256: rawSHA) {
                writer.abandon()
                return existing
            }
            let trailer = ObjectTrailer(rawSHA256: [UInt8](hex: rawSHA)!, rawLength: UInt64(length), encoding: .zstd, width: 1)
            let (id, size) = try writer.finish(trailer: trailer)
            let stored = Manifest.Stored(encoding: "zstd", rawSHA256: rawSHA, objectID: id, objectSize: size)
            try store.recordRaw(stored)
            return stored
        } catch {
            writer.abandon()
            throw error
        }
    }

    public func abandon() { writer.abandon() }
}
