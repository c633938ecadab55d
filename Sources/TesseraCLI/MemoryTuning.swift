#if canImport(Glibc)
import Glibc
#endif

/// glibc malloc tuning for commands that allocate and free one tensor-sized buffer after another (merges, task
/// vectors). By default each large buffer is mapped fresh and unmapped on free, so every tensor pays its page faults
/// again (measured: 2.2 of 3.0 s of a two-model linear merge were system time). Keeping freed memory in the heap lets
/// the next tensor reuse pages that are already resident; peak memory stays what the largest tensors need.
/// `mallopt` is reached through dlsym because malloc.h is not part of Swift's Glibc module.
enum MemoryTuning {
    static func reuseLargeBuffers() {
        #if canImport(Glibc)
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }  // RTLD_DEFAULT
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        _ = mallopt(-3, Int32.max)  // M_MMAP_THRESHOLD: serve large blocks from the heap
        _ = mallopt(-1, Int32.max)  // M_TRIM_THRESHOLD: do not give the heap's top back after each free
        #endif
    }
}
