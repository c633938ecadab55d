#if canImport(Glibc)
import TesseraIO
import Glibc
#endif

/// glibc malloc tuning for commands that allocate and free one tensor-sized buffer after another (merges, task
/// vectors). By default each large buffer is mapped fresh and unmapped on free, so every tensor pays its page faults
/// again (measured: 2.2 of 3.0 s of a two-model linear merge were system time). Keeping freed memory in the heap lets
/// the next tensor reuse pages that are already resident; peak memory stays what the largest tensors need.
/// glibc refuses an mmap threshold above 32 MB, so the mapping of large blocks is turned off (M_MMAP_MAX = 0) rather
/// than pushed out of reach; GPT-2's 154 MB embedding would otherwise be mapped afresh for every input.
/// `mallopt` is reached through dlsym because malloc.h is not part of Swift's Glibc module.
enum MemoryTuning {
    static func reuseLargeBuffers() {
        #if canImport(Glibc)
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }  // RTLD_DEFAULT
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        _ = mallopt(-4, 0)  // M_MMAP_MAX: serve every block from the heap (M_MMAP_THRESHOLD cannot go above 32 MB)
        _ = mallopt(-1, Int32.max)  // M_TRIM_THRESHOLD: do not give the heap's top back after each free
        #endif
    }
}
