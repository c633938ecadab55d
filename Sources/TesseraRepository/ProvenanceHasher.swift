import Foundation
import TesseraStore

/// Hashes the tensors a merge reads, for its provenance record, on worker threads beside the merge, two at a time
/// where it can: a merge reads the same tensor from every input, so jobs arrive in groups of equal length, and
/// `SHA256Hasher.hexPair` hashes two buffers in about the time OpenSSL takes for 1.6 of them.
///
/// At most `maximumQueued` jobs wait (the submitter blocks beyond that), so memory stays bounded: each job holds its
/// tensor (an array or a file mapping) until it is hashed.
final class ProvenanceHasher: @unchecked Sendable {
    // @unchecked Sendable: every mutable field is guarded by `condition`.

    /// Calls its argument with the tensor's bytes, which stay valid for that call.
    typealias ByteAccess = @Sendable (_ body: (UnsafeRawBufferPointer) -> Void) -> Void

    private struct Job {
        let count: Int
        let bytes: ByteAccess
        let done: @Sendable (String) -> Void
    }

    /// A worker holding one job at least this large waits briefly for a second of the same length to hash with it:
    /// the same tensor of the next input is usually a few milliseconds behind (the time to map or read it), and
    /// hashing a large tensor alone costs more than that. Jobs with no partner go through OpenSSL alone.
    static let pairingThreshold = 1 << 20
    static let partnerWait = 0.01

    private let condition = NSCondition()
    private var queued: [Job] = []
    private var inFlight = 0
    private var stopped = false
    private var workersStarted = false
    private var threads: [pthread_t] = []
    /// No worker thread could be started: `submit` hashes on the caller.
    private var inline = false
    /// The length a worker holding one large job waits for a partner of (pairs are of equal length, so both chains
    /// run to the end together); the other workers leave jobs of that length to it.
    private var partnerWanted: Int? = nil
    private let workers: Int
    private let maximumQueued: Int

    init(workers: Int = max(1, min(2, ProcessInfo.processInfo.activeProcessorCount)), maximumQueued: Int = 4) {
        self.workers = workers
        self.maximumQueued = maximumQueued
    }

    /// Queues a tensor's bytes; `done` receives the hex digest on a worker thread. Does nothing once stopped.
    func submit(count: Int, _ bytes: @escaping ByteAccess, done: @escaping @Sendable (String) -> Void) {
        condition.lock()
        defer { condition.unlock() }
        if !workersStarted {
            workersStarted = true
            for _ in 0..<workers {
                // POSIX threads, so that `stop` can join them: a worker still exiting when the process exits tears
                // down its OpenSSL thread state while `exit`'s OPENSSL_cleanup frees the same state ("double free
                // or corruption" at the end of a merge, a few runs in a hundred on a loaded machine).
                var thread = pthread_t()
                let context = Unmanaged.passRetained(self).toOpaque()
                let started = pthread_create(&thread, nil, { context in
                    guard let context else { return nil }
                    Unmanaged<ProvenanceHasher>.fromOpaque(context).takeRetainedValue().work()
                    return nil
                }, context)
                if started == 0 {
                    threads.append(thread)
                } else {
                    Unmanaged<ProvenanceHasher>.fromOpaque(context).release()
                }
            }
            if threads.isEmpty {
                // No thread could be started: hash on the submitting thread (stopped stays false; jobs run inline).
                inline = true
            }
        }
        if inline {
            condition.unlock()
            bytes { done(SHA256Hasher.hex($0)) }
            condition.lock()
            return
        }
        while queued.count >= maximumQueued && !stopped { condition.wait() }
        if stopped { return }
        queued.append(Job(count: count, bytes: bytes, done: done))
        condition.broadcast()
    }

    /// Waits until every queued job is hashed.
    func waitUntilIdle() {
        condition.lock()
        while !(queued.isEmpty && inFlight == 0) { condition.wait() }
        condition.unlock()
    }

    /// Drops the queued jobs, waits for the ones being hashed, and ends the workers (joined: none is left running
    /// when this returns).
    func stop() {
        condition.lock()
        stopped = true
        queued.removeAll()
        condition.broadcast()
        while inFlight > 0 { condition.wait() }
        let ending = threads
        threads = []
        condition.unlock()
        for thread in ending { pthread_join(thread, nil) }
    }

    /// The first queued job a worker may take: any, except one another worker is waiting to pair with.
    private func takeableIndex() -> Int? {
        queued.firstIndex { $0.count != partnerWanted }
    }

    private func work() {
        while true {
            condition.lock()
            while takeableIndex() == nil && !stopped { condition.wait() }
            guard let index = takeableIndex() else {  // stopped, and nothing left to take
                condition.unlock()
                return
            }
            let first = queued.remove(at: index)
            var second = queued.firstIndex { $0.count == first.count }.map { queued.remove(at: $0) }
            inFlight += second == nil ? 1 : 2
            if second == nil && first.count >= Self.pairingThreshold && partnerWanted == nil {
                partnerWanted = first.count
                let deadline = Date(timeIntervalSinceNow: Self.partnerWait)
                while !queued.contains(where: { $0.count == first.count }) && !stopped && condition.wait(until: deadline) {}
                partnerWanted = nil
                if let k = queued.firstIndex(where: { $0.count == first.count }) {
                    second = queued.remove(at: k)
                    inFlight += 1
                }
            }
            condition.broadcast()  // room in the queue
            condition.unlock()

            if let second {
                first.bytes { a in
                    second.bytes { b in
                        let (ha, hb) = SHA256Hasher.hexPair(a, b)
                        first.done(ha)
                        second.done(hb)
                    }
                }
            } else {
                first.bytes { first.done(SHA256Hasher.hex($0)) }
            }

            condition.lock()
            inFlight -= second == nil ? 1 : 2
            condition.broadcast()
            condition.unlock()
        }
    }
}
