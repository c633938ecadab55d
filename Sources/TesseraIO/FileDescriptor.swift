#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One owner per open file descriptor, closed in deinit (swift-system's pattern, without the dependency).
/// Errors carry errno's text and map ENOSPC/EDQUOT to `.noSpace` so that a full disk reads as such.
public final class FileDescriptor {
    public let fd: Int32
    public let path: String

    public init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o644) throws -> FileDescriptor {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw posixError("cannot open \(path)") }
        return FileDescriptor(fd: fd, path: path)
    }

    /// Opens an existing regular file for reading. A FIFO, socket or device where a file is expected (a hostile
    /// store, a mistyped path) would block `open` or a read for ever; it is refused instead, without blocking.
    public static func openRegularFile(_ path: String) throws -> FileDescriptor {
        let fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw posixError("cannot open \(path)") }
        let file = FileDescriptor(fd: fd, path: path)
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw posixError("cannot stat \(path)") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw TesseraError(.io, "\(path) is not a regular file", hint: "remove it or name a file")
        }
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        return file
    }

    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < buffer.count {
            let n = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw FileDescriptor.posixError("cannot write \(path)")
            }
            offset += n
        }
    }

    public func writeAll(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try writeAll($0) } }

    /// Reads up to `buffer.count` bytes; 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw FileDescriptor.posixError("cannot read \(path)")
            }
            return n
        }
    }

    /// Reads exactly `buffer.count` bytes or throws at a short read.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws {
        var offset = 0
        while offset < buffer.count {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]))
            if n == 0 { throw TesseraError(.io, "\(path): unexpected end of file") }
            offset += n
        }
    }

    public func pread(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws -> Int {
        while true {
            let n = Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n < 0 {
                if errno == EINTR { continue }
                throw FileDescriptor.posixError("cannot read \(path)")
            }
            return n
        }
    }

    public func sync() throws {
        if fsync(fd) != 0 { throw FileDescriptor.posixError("cannot flush \(path) to disk") }
    }

    public func size() throws -> Int {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FileDescriptor.posixError("cannot stat \(path)") }
        return Int(st.st_size)
    }

    /// The open file's stat data (size, times, inode, device): the file this descriptor reads, whatever its path
    /// names now.
    public func fileStat() throws -> FileSystem.Stat {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FileDescriptor.posixError("cannot stat \(path)") }
        return FileSystem.Stat(st)
    }

    public static func posixError(_ what: String, _ code: Int32 = errno) -> TesseraError {
        let text = String(cString: strerror(code))
        if code == ENOSPC || code == EDQUOT || code == EFBIG {
            return TesseraError(.noSpace, "\(what): \(text)", hint: "free disk space (or raise the quota), then run the command again")
        }
        return TesseraError(.io, "\(what): \(text)")
    }
}

public enum FileSystem {
    /// Grows the pipe behind `fd` to `bytes` (Linux's F_SETPIPE_SZ; the kernel caps it at
    /// /proc/sys/fs/pipe-max-size, 1 MiB by default). Returns whether it did: a file, a socket or another system
    /// leaves it as it is. A checkpoint streamed through git's filter protocol otherwise crosses a 64 KiB pipe, one
    /// context switch per 64 KiB each way.
    @discardableResult
    public static func growPipe(_ fd: Int32, to bytes: Int) -> Bool {
        #if os(Linux)
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFIFO else { return false }
        return fcntl(fd, 1031 /* F_SETPIPE_SZ */, Int32(clamping: bytes)) >= 0
        #else
        return false
        #endif
    }

    public static func exists(_ path: String) -> Bool {
        var st = Glibc.stat()
        return fstatat(AT_FDCWD, path, &st, 0) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = Glibc.stat()
        return fstatat(AT_FDCWD, path, &st, 0) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// mkdir -p.
    public static func makeDirectories(_ path: String) throws {
        if isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw FileDescriptor.posixError("cannot create directory \(prefix)")
            }
        }
    }

    public static func rename(_ from: String, _ to: String) throws {
        if Glibc.rename(from, to) != 0 { throw FileDescriptor.posixError("cannot rename \(from) to \(to)") }
    }

    public static func remove(_ path: String) { unlink(path) }

    /// Flushes every file of the file system that holds `path` to disk in one call (Linux `syncfs`), for many small
    /// files written together: one flush instead of one per file (200,000 tiny tensors took 220 s with an fsync each).
    /// Returns false where the call is not available; callers then flush file by file.
    public static func syncFileSystem(containing path: String) throws -> Bool {
        typealias SyncFS = @convention(c) (Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syncfs") else { return false }  // RTLD_DEFAULT
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FileDescriptor.posixError("cannot open \(path)") }
        defer { close(fd) }
        if unsafeBitCast(symbol, to: SyncFS.self)(fd) != 0 { throw FileDescriptor.posixError("cannot flush \(path) to disk") }
        return true
    }

    public static func fsyncDirectory(_ path: String) {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { fsync(fd); close(fd) }
    }

    /// Reads a whole regular file (refusing FIFOs and devices, and files larger than `limit`).
    public static func readFile(_ path: String, limit: Int = 1 << 30) throws -> [UInt8] {
        let f = try FileDescriptor.openRegularFile(path)
        let n = try f.size()
        guard n <= limit else {
            throw TesseraError(.io, "\(path) is \(n) bytes, more than the \(limit) expected here", hint: "the file is not what it should be; remove it")
        }
        var out = [UInt8](repeating: 0, count: n)
        try out.withUnsafeMutableBytes { try f.readExactly(into: $0) }
        return out
    }

    /// Writes a small file atomically: temporary file in `tmpDir`, fsync (unless `durable` is false: caches that are
    /// rebuilt when lost need no flush), rename.
    public static func writeAtomically(_ bytes: [UInt8], to path: String, tmpDir: String, durable: Bool = true) throws {
        let tmp = "\(tmpDir)/\(uniqueName())"
        do {
            let f = try FileDescriptor.open(tmp, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
            try f.writeAll(bytes)
            if durable { try f.sync() }
            try rename(tmp, path)
        } catch {
            remove(tmp)
            throw error
        }
    }

    /// Copies a regular file to `path` through a temporary file in `tmpDir` (fsync, rename), in 1 MiB pieces.
    public static func copyAtomically(_ source: String, to path: String, tmpDir: String) throws {
        let input = try FileDescriptor.openRegularFile(source)
        let tmp = "\(tmpDir)/\(uniqueName())"
        do {
            let out = try FileDescriptor.open(tmp, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o444)
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let n = try buffer.withUnsafeMutableBytes { try input.read(into: $0) }
                if n == 0 { break }
                try buffer.withUnsafeBytes { try out.writeAll(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
            try out.sync()
            try rename(tmp, path)
        } catch {
            remove(tmp)
            throw error
        }
    }

    public static func uniqueName() -> String {
        var r = SystemRandomNumberGenerator()
        return "tmp-\(getpid())-\(String(r.next() as UInt64, radix: 36))"
    }

    /// Names of the entries of a directory (not . and ..), or [] if it does not exist.
    public static func list(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) { p in
                p.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }

    public struct Stat: Equatable, Sendable {
        public var size: Int
        public var mtimeNanoseconds: Int
        public var ctimeNanoseconds: Int
        public var inode: UInt64
        public var device: UInt64
        public init(size: Int, mtimeNanoseconds: Int, ctimeNanoseconds: Int, inode: UInt64, device: UInt64) {
            self.size = size
            self.mtimeNanoseconds = mtimeNanoseconds
            self.ctimeNanoseconds = ctimeNanoseconds
            self.inode = inode
            self.device = device
        }

        init(_ st: Glibc.stat) {
            self.init(size: Int(st.st_size),
                      mtimeNanoseconds: Int(st.st_mtim.tv_sec) * 1_000_000_000 + Int(st.st_mtim.tv_nsec),
                      ctimeNanoseconds: Int(st.st_ctim.tv_sec) * 1_000_000_000 + Int(st.st_ctim.tv_nsec),
                      inode: UInt64(st.st_ino), device: UInt64(st.st_dev))
        }
    }

    public static func fileStat(_ path: String) -> Stat? {
        var st = Glibc.stat()
        guard fstatat(AT_FDCWD, path, &st, 0) == 0 else { return nil }
        return Stat(st)
    }
}
