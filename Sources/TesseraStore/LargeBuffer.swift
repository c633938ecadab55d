#if canImport(Glibc)
import Glibc
#endif

/// A buffer for a whole tensor, mapped directly from the kernel and unmapped on release.
///
/// glibc serves allocations below its adaptive mmap threshold (up to 32 MB) from heaps that it rarely gives back, so
/// tensors of a few megabytes passing through the filter one after another would leave the process's resident memory
/// well above what is live. Mapping them keeps resident memory equal to the buffers in use, which the filter's memory
/// bound (twice the largest tensor plus a constant) relies on.
public final class LargeBuffer: @unchecked Sendable {
    // @unchecked: owned by one thread at a time (handed over whole between the reading and encoding threads).
    public let bytes: UnsafeMutableRawBufferPointer
    private let mapped: Bool
    private let allocated: UnsafeMutableRawBufferPointer?

    public init(count: Int) {
        if count == 0 {
            bytes = UnsafeMutableRawBufferPointer(start: nil, count: 0)
            mapped = false
            allocated = nil
        } else if count >= 1 << 16, let p = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED {
            bytes = UnsafeMutableRawBufferPointer(start: p, count: count)
            mapped = true
            allocated = nil
        } else {
            bytes = .allocate(byteCount: count, alignment: 64)
            mapped = false
            allocated = bytes
        }
    }

    deinit {
        if mapped { munmap(bytes.baseAddress, bytes.count) } else { allocated?.deallocate() }
    }
}
