import Dispatch
import Foundation
import TesseraCore
import TesseraIO

/// Stores values on a thread of its own while the caller computes the next ones: hashing, encoding and writing a
/// merged tensor (about as much work as merging it) then overlap with the merge instead of following it. Used by the
/// git merge driver and `tessera resolve`, whose merged tensors go to the store rather than to a file.
///
/// Values wait in order, bounded by a byte budget (the caller blocks in `store` while the limit is held), and two are
/// stored at a time: hashing the raw bytes, encoding and hashing the stored bytes of a 498 MB checkpoint is about a
/// second of CPU, and on one thread the merge driver finished merging well before its writer finished storing. The
/// first failure stops the pipeline: later values are dropped and `finish` throws it.
public final class BackgroundObjectWriter: @unchecked Sendable {
    // @unchecked: `results`, `failure` and `encoders` are guarded by `lock`.
    private let store: ObjectStore
    private let queue = DispatchQueue(label: "tessera.background-object-writer", attributes: .concurrent)
    private let group = DispatchGroup()
    private let budget: ByteBudget
    /// Values being stored at once.
    private let inFlight = DispatchSemaphore(value: 2)
    /// Encoders not in use (each keeps its scratch between objects).
    private var encoders: [ObjectEncoder] = []
    /// Objects are flushed to disk on the batch's queue as they are written, and made visible together by `finish`.
    private let batch: ObjectBatch
    private let lock = NSLock()
    private var results: [Int: Manifest.Stored] = [:]
    private var failure: (any Error)?

    /// `limit`: bytes of values waiting or being stored at once.
    public init(store: ObjectStore, limit: Int = 256 << 20) {
        self.store = store
        budget = ByteBudget(limit: limit)
        batch = ObjectBatch(store: store)
    }

    /// Queues `bytes` (elements of `width` bytes: the byte grouping's width; 1 for anything else) under `key`.
    /// `values` are stored as their bytes (a merge's float32 results go in without a copy to bytes).
    public func store<Element: BitwiseCopyable & Sendable>(_ values: [Element], width: Int, key: Int) {
        let byteCount = values.count * MemoryLayout<Element>.stride
        guard budget.reserve(byteCount) else {
            budget.release(byteCount)
            return
        }
        inFlight.wait()
        queue.async(group: group) { [self] in
            defer {
                budget.release(byteCount)
                inFlight.signal()
            }
            guard !budget.isStopped else { return }
            let encoder = lock.withLock { encoders.popLast() } ?? ObjectEncoder()
            defer { lock.withLock { encoders.append(encoder) } }
            do {
                let stored = try values.withUnsafeBytes { raw in
                    try store.put(raw: raw, rawSHA256: SHA256Hasher.hex(raw), width: width, encoder: encoder, batch: batch)
                }
                lock.withLock { results[key] = stored }
            } catch {
                lock.withLock { if failure == nil { failure = error } }
                budget.stop()
            }
        }
    }

    /// Waits for every queued value; the stored objects by key, or the first failure.
    public func finish() throws -> [Int: Manifest.Stored] {
        group.wait()
        let (results, failure) = lock.withLock { (self.results, self.failure) }
        if let failure {
            batch.abandon()
            throw failure
        }
        try batch.commit()
        return results
    }

    /// Stops storing (after a failure of the caller's own): waits for the value in hand, drops the rest and removes
    /// what was written and not yet committed (nothing, after `finish`).
    public func cancel() {
        budget.stop()
        group.wait()
        batch.abandon()
    }
}
