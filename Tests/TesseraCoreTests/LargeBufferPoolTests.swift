import Foundation
import Testing
import TesseraIO

@Suite struct LargeBufferPoolTests {
    /// A buffer given back is the one the next take of its size returns (same pages), and only of that size.
    @Test func reusesBuffersOfTheSameSize() throws {
        let pool = LargeBufferPool(limit: 1 << 20)
        let a = try pool.take(count: 100_000)
        let address = a.bytes.baseAddress
        pool.give(a)
        #expect(pool.heldBytes == 100_000)
        let other = try pool.take(count: 100_001)
        #expect(other.bytes.baseAddress != address)
        #expect(other.count == 100_001)
        #expect(pool.heldBytes == 100_000)
        let again = try pool.take(count: 100_000)
        #expect(again.bytes.baseAddress == address)
        #expect(again.count == 100_000)
        #expect(pool.heldBytes == 0)
    }

    /// Free buffers never hold more than the limit: the oldest go first; a buffer larger than the limit is not kept.
    @Test func freeBytesStayWithinTheLimit() throws {
        let pool = LargeBufferPool(limit: 300_000)
        let buffers = try (0..<4).map { _ in try pool.take(count: 100_000) }
        let addresses = buffers.map(\.bytes.baseAddress)
        for b in buffers { pool.give(b) }
        #expect(pool.heldBytes == 300_000)
        // The first one given back was dropped; the three later ones come back, newest first.
        let taken = try (0..<3).map { _ in try pool.take(count: 100_000) }
        #expect(Set(taken.map(\.bytes.baseAddress)) == Set(addresses[1...]))
        #expect(pool.heldBytes == 0)
    }

    /// A take larger than the limit empties the pool (a pipeline's peak is its largest values: free small buffers
    /// would only add to it), and that buffer is not kept when given back.
    @Test func aBufferLargerThanTheLimitEmptiesThePool() throws {
        let pool = LargeBufferPool(limit: 300_000)
        for b in try (0..<2).map({ _ in try pool.take(count: 100_000) }) { pool.give(b) }
        #expect(pool.heldBytes == 200_000)
        let small = try pool.take(count: 50_000)  // within the limit: the pool keeps what it has
        #expect(pool.heldBytes == 200_000)
        let large = try pool.take(count: 400_000)
        #expect(pool.heldBytes == 0)
        pool.give(large)
        #expect(pool.heldBytes == 0)
        pool.give(small)
        #expect(pool.heldBytes == 50_000)
    }

    /// Pipes grow to 1 MiB (F_SETPIPE_SZ); files are left alone.
    @Test func growsPipesOnly() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(FileSystem.growPipe(fds[1], to: 1 << 20))
        #expect(fcntl(fds[0], 1032 /* F_GETPIPE_SZ */) >= 1 << 20)
        let path = NSTemporaryDirectory() + "/tessera-pipe-\(getpid())"
        let file = open(path, O_CREAT | O_WRONLY, 0o600)
        defer { close(file); unlink(path) }
        #expect(!FileSystem.growPipe(file, to: 1 << 20))
    }
}
