#if canImport(Glibc)
import Glibc
#endif

/// A buffer for a whole tensor, mapped directly from the kernel and unmapped on release.
///
/// glibc serves allocations below its adaptive mmap threshold (up to 32 MB) from heaps that it rarely gives back, so
/// tensors of a few megabytes passing through the filter one after another would leave the process's resident memory
/// well above what is live. Mapping them keeps resident memory equal to the buffers in use, which the filter's memory
/// bound (twice the largest tensor plus a constant) relies on.
///
/// Sizes often come from files (a header's offsets, a trailer's length): an allocation the kernel refuses is a thrown
/// `outOfMemory` error naming the size, never a crash.
public final class LargeBuffer: @unchecked Sendable {
    // @unchecked: owned by one thread at a time (handed over whole between the reading and encoding threads).
    public private(set) var bytes: UnsafeMutableRawBufferPointer
    private var mapped: Bool
    /// Memory someone else owns, lent for reading (a delta base the caller already holds): never freed, grown or
    /// pooled here.
    public let isBorrowed: Bool
    static let mappingThreshold = 1 << 16
    static let hugePageThreshold = 4 << 20

    public init(count: Int) throws {
        precondition(count >= 0)
        bytes = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        mapped = false
        isBorrowed = false
        if count == 0 { return }
        if count >= LargeBuffer.mappingThreshold {
            bytes = try LargeBuffer.map(count)
            mapped = true
        } else {
            bytes = .allocate(byteCount: count, alignment: 64)
        }
    }

    /// A buffer over `memory`, which the caller keeps alive, unchanged, for as long as this buffer is used. Only
    /// for readers of the bytes (the codecs read their delta bases and never write them).
    public init(borrowing memory: UnsafeRawBufferPointer) {
        bytes = UnsafeMutableRawBufferPointer(mutating: memory)
        mapped = false
        isBorrowed = true
    }

    public var count: Int { bytes.count }

    /// Grows the buffer to `newCount` bytes, keeping its contents (the mapping is moved by the kernel, not copied).
    public func grow(to newCount: Int) throws {
        precondition(!isBorrowed, "a borrowed buffer is not grown")
        guard newCount > bytes.count else { return }
        if mapped {
            if let remap = LargeBuffer.mremap {
                guard let p = remap(bytes.baseAddress, bytes.count, newCount, 1 /* MREMAP_MAYMOVE */), p != MAP_FAILED else {
                    throw LargeBuffer.allocationError(newCount)
                }
                bytes = UnsafeMutableRawBufferPointer(start: p, count: newCount)
                return
            }
            let next = try LargeBuffer.map(newCount)
            next.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            munmap(bytes.baseAddress, bytes.count)
            bytes = next
            return
        }
        let next: UnsafeMutableRawBufferPointer
        if newCount >= LargeBuffer.mappingThreshold {
            next = try LargeBuffer.map(newCount)
        } else {
            next = .allocate(byteCount: newCount, alignment: 64)
        }
        if bytes.count > 0 { next.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        bytes.deallocate()
        bytes = next
        mapped = newCount >= LargeBuffer.mappingThreshold
    }

    /// Linux's mremap (moves a mapping's pages instead of copying them); Swift's Glibc module does not export it.
    private typealias Remap = @convention(c) (UnsafeMutableRawPointer?, Int, Int, Int32) -> UnsafeMutableRawPointer?
    private static let mremap: Remap? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mremap") else { return nil }  // RTLD_DEFAULT
        return unsafeBitCast(symbol, to: Remap.self)
    }()

    private static func map(_ count: Int) throws -> UnsafeMutableRawBufferPointer {
        guard let p = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw allocationError(count)
        }
        // Transparent huge pages where the system offers them on request ("madvise", Debian's default): a tensor's
        // buffer is written whole right away, and one fault per 2 MiB instead of per 4 KiB took 8-12% off a
        // checkout's wall time here (GPT-2-small, whole and delta-encoded). A refusal leaves ordinary pages.
        if count >= LargeBuffer.hugePageThreshold { _ = madvise(p, count, 14 /* MADV_HUGEPAGE */) }
        return UnsafeMutableRawBufferPointer(start: p, count: count)
    }

    /// For memory Swift allocates itself (arrays), where a refusal would be a crash rather than an error: a size
    /// beyond the machine's physical memory is refused up front (sizes come from files and objects).
    public static func checkFitsInMemory(_ count: Int, what: String) throws {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return }
        let (total, overflow) = pages.multipliedReportingOverflow(by: pageSize)
        if !overflow, count > total {
            throw TesseraError(.outOfMemory, "\(what) needs \(count) bytes, more than this machine's memory (\(total) bytes)",
                               hint: "the size comes from the file or object being read; if it is genuine, use a machine with more memory")
        }
    }

    static func allocationError(_ count: Int) -> TesseraError {
        TesseraError(.outOfMemory, "cannot allocate \(count) bytes: the system refused the memory",
                     hint: "the size comes from the file or object being read; if it is genuine, free memory and try again")
    }

    deinit {
        if bytes.count == 0 || isBorrowed { return }
        if mapped { munmap(bytes.baseAddress, bytes.count) } else { bytes.deallocate() }
    }
}
