#if canImport(Glibc)
import Glibc
#endif

/// A read-only mapping of part of a regular file, unmapped when the last reference goes: the file's bytes without a
/// copy out of the page cache and without fresh memory.
///
/// Reading a mapped page that lies past the end of the file is a SIGBUS, not an error. The file's size is checked
/// when the region is mapped; a file that another process truncates while it is read afterwards ends the process
/// through a handler that says so in one line (exit 1), installed with the first mapping. Writers write to temporary
/// names, so no half-written output is left under an output's name.
public final class MappedRegion: @unchecked Sendable {
    // @unchecked: immutable after init; the pages are only read.
    private let base: UnsafeMutableRawPointer?
    private let length: Int
    public let bytes: UnsafeRawBufferPointer

    /// Maps `count` bytes at `offset`. `populate` asks the kernel to fault the pages in at once (the loops reading
    /// them then take no page faults).
    public init(file: FileDescriptor, offset: Int, count: Int, populate: Bool = false) throws {
        _ = MappedRegion.busErrorHandler
        precondition(offset >= 0 && count >= 0)
        let size = try file.size()
        let (end, overflow) = offset.addingReportingOverflow(count)
        guard !overflow, end <= size else {
            throw TesseraError(.io, "\(file.path): the file ends at byte \(size), before byte \(end)",
                               hint: "the file may be truncated or still being written")
        }
        guard count > 0 else {
            base = nil
            length = 0
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        length = offset - start + count
        var flags = MAP_SHARED
        #if canImport(Glibc)
        if populate { flags |= Int32(MAP_POPULATE) }
        #endif
        guard let p = mmap(nil, length, PROT_READ, flags, file.fd, off_t(start)), p != MAP_FAILED else {
            throw FileDescriptor.posixError("cannot map \(file.path)")
        }
        base = p
        bytes = UnsafeRawBufferPointer(start: p + (offset - start), count: count)
    }

    deinit { if let base { munmap(base, length) } }

    /// Asks the kernel to read a range ahead (a mapped read of pages that are not in the page cache would otherwise
    /// go one fault at a time).
    public static func willNeed(_ file: FileDescriptor, offset: Int, count: Int) {
        _ = posix_fadvise(file.fd, off_t(offset), off_t(count), POSIX_FADV_WILLNEED)
    }

    private static let busErrorHandler: Void = {
        signal(SIGBUS) { _ in
            // Only async-signal-safe calls here: a static string, write and _exit.
            let message: StaticString = "tessera: an input file changed (truncated or rewritten in place) while it was being read; nothing was written. Run the command again.\n"
            _ = write(2, message.utf8Start, message.utf8CodeUnitCount)
            _exit(1)
        }
    }()
}

extension FileDescriptor {
    /// Reads exactly `buffer.count` bytes at `offset` (no shared file position: safe from several threads), or
    /// throws naming the byte where the file ended.
    public func preadExactly(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < buffer.count {
            let n = try pread(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), at: offset + done)
            guard n > 0 else {
                throw TesseraError(.io, "\(path): read failed at byte \(offset + done)", hint: "the file may be truncated or unreadable")
            }
            done += n
        }
    }
}
