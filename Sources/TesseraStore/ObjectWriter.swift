#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
import TesseraCore
import TesseraIO

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

    /// Completes the object and returns its id and size. With a batch, the object is handed over to the batch (its
    /// disk write started, not waited for) and becomes visible when the batch commits.
    public func finish(trailer: ObjectTrailer, batch: ObjectBatch? = nil) throws -> (id: String, size: Int) {
        let t = trailer.encoded()
        try t.withUnsafeBytes { try write($0) }
        try flush()
        let id = hasher.finalizeHex()
        if let batch {
            batch.add(tmpPath: tmpPath, objectID: id, size: written)
            done = true
            return (id, written)
        }
        try file.sync()
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

/// Objects written while cleaning one file, made durable and visible together before the manifest goes to git.
///
/// Waiting for the disk after every object serialised compression with I/O (it doubled the time of a first add);
/// instead each object is fsynced on a background queue as soon as it is written, while the next one is compressed,
/// and `commit` waits for those, renames every file into place and records them in the raw-value index. Until
/// `commit`, nothing is visible in `objects/`; `abandon` removes the temporary files.
public final class ObjectBatch: @unchecked Sendable {
    // @unchecked: all state is guarded by `lock` (objects are added from the encoding thread).
    private let store: ObjectStore
    private let lock = NSLock()
    private var pending: [(tmp: String, id: String)] = []
    private var byRaw: [String: Manifest.Stored] = [:]
    private var committed = false
    private var syncFailure: (any Error)?
    private let syncQueue = DispatchQueue(label: "tessera.fsync")

    public init(store: ObjectStore) { self.store = store }

    deinit { if !committed { abandon() } }

    /// Objects below this size are not flushed one by one: `commit` flushes them all with one `syncfs`.
    static let individualSyncThreshold = 256 << 10
    private var unsyncedSmallObjects = 0

    func add(tmpPath: String, objectID: String, size: Int) {
        lock.lock()
        pending.append((tmpPath, objectID))
        let small = size < ObjectBatch.individualSyncThreshold
        if small { unsyncedSmallObjects += 1 }
        lock.unlock()
        if small { return }
        syncQueue.async { [self] in
            do {
                try FileDescriptor.open(tmpPath, flags: O_RDONLY).sync()
            } catch {
                lock.lock(); if syncFailure == nil { syncFailure = error }; lock.unlock()
            }
        }
    }

    func record(_ stored: Manifest.Stored) {
        lock.lock(); byRaw[stored.rawSHA256] = stored; lock.unlock()
    }

    /// A value already written in this batch (a tensor that appears twice in one file).
    public func lookup(rawSHA256: String) -> Manifest.Stored? {
        lock.lock(); defer { lock.unlock() }
        return byRaw[rawSHA256]
    }

    public func commit() throws {
        syncQueue.sync {}
        lock.lock()
        let items = pending
        let stored = Array(byRaw.values)
        let failure = syncFailure
        let small = unsyncedSmallObjects
        lock.unlock()
        if let failure { abandon(); throw failure }
        if small > 0 {
            do {
                if !(try FileSystem.syncFileSystem(containing: store.tmpDirectory)) {
                    for item in items { try FileDescriptor.open(item.tmp, flags: O_RDONLY).sync() }
                }
            } catch { abandon(); throw error }
        }
        var directories = Set<String>()
        for item in items {
            let final = store.objectPath(item.id)
            if FileSystem.exists(final) { FileSystem.remove(item.tmp); continue }
            let dir = "\(store.objectsDirectory)/\(item.id.prefix(2))"
            try FileSystem.makeDirectories(dir)
            try FileSystem.rename(item.tmp, final)
            directories.insert(dir)
        }
        for d in directories { FileSystem.fsyncDirectory(d) }
        for s in stored { try store.recordRaw(s) }
        lock.lock(); committed = true; pending.removeAll(); lock.unlock()
    }

    public func abandon() {
        syncQueue.sync {}
        lock.lock()
        for item in pending { FileSystem.remove(item.tmp) }
        pending.removeAll()
        committed = true
        lock.unlock()
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
            let trailer = ObjectTrailer(rawSHA256: [UInt8](hex: rawSHA)!, rawLength: UInt64(length), codec: ZstdCodec.code, width: 1)
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
