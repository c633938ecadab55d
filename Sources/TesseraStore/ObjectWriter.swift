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
/// Nothing is flushed object by object: `commit` flushes every file of the batch with one `syncfs` (file by file
/// only where that call is missing), then renames them into place and records them in the raw-value index. A sync
/// per object cost a journal commit each (a GGUF of 270 tensors waited for 270 of them), and one flush before the
/// renames gives the same guarantee: no object becomes visible before its bytes are on disk. So that the flush at
/// the end does not find all the data still in memory, the disk write of each large object is started (not waited
/// for) on a background queue as soon as it is written, while the next one is compressed. Until `commit`, nothing is
/// visible in `objects/`; `abandon` removes the temporary files.
public final class ObjectBatch: @unchecked Sendable {
    // @unchecked: all state is guarded by `lock` (objects are added from the encoding thread).
    private let store: ObjectStore
    private let lock = NSLock()
    private var pending: [(tmp: String, id: String)] = []
    private var byRaw: [String: Manifest.Stored] = [:]
    private var committed = false
    private let writeBehindQueue = DispatchQueue(label: "tessera.write-behind")

    public init(store: ObjectStore) { self.store = store }

    deinit { if !committed { abandon() } }

    /// Objects from this size on have their disk write started as soon as they are complete.
    static let writeBehindThreshold = 256 << 10

    /// Linux `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`: starts writing a file's dirty pages, returns without
    /// waiting for them. Looked up at run time (nil where the C library lacks it: the flush at commit then does it all).
    private static let startWriteback: (@convention(c) (Int32, Int64, Int64, UInt32) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sync_file_range") else { return nil }  // RTLD_DEFAULT
        return unsafeBitCast(symbol, to: (@convention(c) (Int32, Int64, Int64, UInt32) -> Int32).self)
    }()

    func add(tmpPath: String, objectID: String, size: Int) {
        lock.lock()
        pending.append((tmpPath, objectID))
        lock.unlock()
        guard size >= ObjectBatch.writeBehindThreshold, let startWriteback = ObjectBatch.startWriteback else { return }
        writeBehindQueue.async {
            // Only a head start for the flush at commit, which is what makes the object durable: a failure here
            // changes nothing (the flush reports it).
            guard let f = try? FileDescriptor.open(tmpPath, flags: O_RDONLY) else { return }
            _ = startWriteback(f.fd, 0, 0, 2)  // SYNC_FILE_RANGE_WRITE
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
        writeBehindQueue.sync {}
        lock.lock()
        let items = pending
        let stored = Array(byRaw.values)
        lock.unlock()
        if !items.isEmpty {
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
        // The renames are made durable by one flush as well: a directory fsync is a journal commit of its own, and a
        // GGUF's 270 objects in 165 fan-out directories waited 0.35 s for them (a third of its `git add`).
        if !directories.isEmpty, (try? FileSystem.syncFileSystem(containing: store.objectsDirectory)) != true {
            for d in directories { FileSystem.fsyncDirectory(d) }
        }
        for s in stored { try store.recordRaw(s) }
        lock.lock(); committed = true; pending.removeAll(); lock.unlock()
    }

    public func abandon() {
        writeBehindQueue.sync {}
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
