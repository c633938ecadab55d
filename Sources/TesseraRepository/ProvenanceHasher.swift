import Foundation
import TesseraIO
import TesseraMerge
import TesseraStore

/// Hashes the tensors a merge reads, for its provenance record, on worker threads beside the merge, two at a time
/// where it can: a merge reads the same tensor from every input, so jobs arrive in groups of equal length, and
/// `SHA256PairStream` hashes two messages in about the time OpenSSL takes for 1.6 of them.
///
/// A job is a range of an open input file, read again from the page cache (the merge has just read it) in windows
/// mapped one at a time. The hasher holds none of the merge's arrays: holding them until they were hashed made every
/// method that writes task vectors in place write them into fresh memory instead (a third more page faults and up
/// to 0.3 GB more peak memory in a three-model TIES merge of GPT-2), and waiting for the hasher to let go put the
/// hashing on the merge's path. Reading the file again costs a mapping, not a copy.
///
/// At most `maximumQueued` jobs wait (the submitter blocks beyond that).
final class ProvenanceHasher: @unchecked Sendable {
    // @unchecked Sendable: every mutable field is guarded by `condition`; a job's file is only read with mappings.

    private struct Job {
        let file: FileDescriptor
        let offset: Int
        let count: Int
        /// The merge's own read-only mapping of those bytes, when it maps them: hashed from there (mapping them a
        /// second time would only cost page-table work), and held until then.
        let mapped: MappedFloat32?
        let done: @Sendable (String) -> Void
    }

    /// The bytes mapped at a time per job: large enough that mapping costs nothing beside the hashing, small enough
    /// that two jobs' windows add little to the process's resident memory.
    static let window = 8 << 20

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

    /// Queues `count` bytes of `file` at `offset`; `done` receives their hex digest on a worker thread. Does nothing
    /// once stopped; `done` is never called when the bytes cannot be read (the file shrank, say).
    func submit(file: FileDescriptor, offset: Int, count: Int, mapped: MappedFloat32? = nil, done: @escaping @Sendable (String) -> Void) {
        precondition(mapped == nil || mapped!.values.count * 4 == count)
        let job = Job(file: file, offset: offset, count: count, mapped: mapped, done: done)
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
            Self.hash(job)
            condition.lock()
            return
        }
        while queued.count >= maximumQueued && !stopped { condition.wait() }
        if stopped { return }
        queued.append(job)
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
                Self.hash(first, second)
            } else {
                Self.hash(first)
            }

            condition.lock()
            inFlight -= second == nil ? 1 : 2
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Calls `body` with a function that maps the job's bytes `start..<start + count` (valid until its next call).
    private static func withWindows(_ job: Job, _ body: (_ window: (_ start: Int, _ count: Int) throws -> UnsafeRawBufferPointer) throws -> Void) throws {
        if let mapped = job.mapped {
            let bytes = UnsafeRawBufferPointer(mapped.values)
            try body { start, count in UnsafeRawBufferPointer(rebasing: bytes[start..<(start + count)]) }
            withExtendedLifetime(mapped) {}
            return
        }
        var current: MappedRegion? = nil
        try body { start, count in
            current = nil  // unmapped before the next window is mapped
            let region = try MappedRegion(file: job.file, offset: job.offset + start, count: count, populate: true)
            current = region
            return region.bytes
        }
        withExtendedLifetime(current) {}
    }

    private static func hash(_ job: Job) {
        let hasher = SHA256Hasher()
        do {
            try withWindows(job) { window in
                var start = 0
                while start < job.count {
                    let n = min(Self.window, job.count - start)
                    hasher.update(try window(start, n))
                    start += n
                }
            }
        } catch {
            return  // unreadable now: the digest stays unknown, and the provenance reads the tensor again or omits it
        }
        job.done(hasher.finalizeHex())
    }

    /// Two jobs of equal length, hashed together window by window.
    private static func hash(_ a: Job, _ b: Job) {
        precondition(a.count == b.count)
        let stream = SHA256PairStream()
        do {
            try withWindows(a) { windowA in
                try withWindows(b) { windowB in
                    var start = 0
                    while start < a.count {
                        let n = min(Self.window, a.count - start)
                        stream.update(try windowA(start, n), try windowB(start, n))
                        start += n
                    }
                }
            }
        } catch {
            hash(a)  // one of the two is unreadable: each on its own, so the other's digest is still known
            hash(b)
            return
        }
        let (ha, hb) = stream.finalizeHex()
        a.done(ha)
        b.done(hb)
    }
}
