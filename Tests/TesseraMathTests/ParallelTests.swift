import Testing
import TesseraMath

@Suite struct ParallelTests {
    /// Every index of a chunked loop is visited exactly once, whatever the split.
    @Test(arguments: [0, 1, 1000, 65535, 65536, 1 << 20])
    func forChunksVisitsEveryIndexOnce(count: Int) {
        var visits = [UInt8](repeating: 0, count: count)
        visits.withUnsafeMutableBufferPointer { v in
            guard let base = v.baseAddress else { return }
            let p = SharedMutablePointer(base)
            Parallel.forChunks(count) { _, r in for i in r { p[i] &+= 1 } }
        }
        #expect(visits.allSatisfy { $0 == 1 })
    }
}
