import Foundation
import TesseraCore
import TesseraMerge

/// Hands a merge's output tensors to `OutputCheckpoint` on a thread of their own, one tensor behind the merge.
///
/// Writing a tensor is a copy into the page cache that costs about as much as merging it (for a passthrough or
/// slices merge, more: half of the wall time was the merging thread inside `write`). Done on the merging thread it
/// adds up; here the next tensor is read and merged while the previous one is written. At most one tensor waits or
/// is being written (`submit` blocks until the writer is free), so memory grows by one output tensor at most.
/// Tensors are written in the order they are submitted, so the file is the same byte for byte. A write error is
/// thrown by the next `submit` or by `drain`, which the caller runs before finishing the output.
final class BackgroundTensorWriter: @unchecked Sendable {
    // @unchecked Sendable: `failure` is guarded by `lock`; `output` is used by one job at a time (the queue is
    // serial and `free` admits one job), and the submitting thread touches it only after `drain`.
    private let output: OutputCheckpoint
    private let queue = DispatchQueue(label: "tessera.merge-writer")
    private let free = DispatchSemaphore(value: 1)
    private let lock = NSLock()
    private var failure: Error?

    init(_ output: OutputCheckpoint) { self.output = output }

    func append(_ name: String, float32 values: [Float], shape: [Int]) throws {
        try submit { out in try out.append(name, float32: values, shape: shape) }
    }

    /// A tensor taken unchanged from a file mapping: the job holds the mapping until the tensor is written.
    func append(_ name: String, mapped: MappedFloat32, shape: [Int]) throws {
        try submit { out in try out.append(name, float32: mapped.values, shape: shape) }
    }

    func append(_ name: String, _ tensor: RawTensor) throws {
        try submit { out in try out.append(name, tensor) }
    }

    /// Waits for the tensor being written; throws the first write error.
    func drain() throws {
        free.wait()
        free.signal()
        try rethrow()
    }

    private func submit(_ job: @escaping @Sendable (OutputCheckpoint) throws -> Void) throws {
        free.wait()
        do { try rethrow() } catch { free.signal(); throw error }
        let output = UncheckedOutput(output)
        queue.async { [self] in
            do { try job(output.value) } catch { lock.lock(); if failure == nil { failure = error }; lock.unlock() }
            free.signal()
        }
    }

    private func rethrow() throws {
        lock.lock(); let e = failure; lock.unlock()
        if let e { throw e }
    }
}

/// The output checkpoint, handed to the writer's queue (only one job uses it at a time).
private struct UncheckedOutput: @unchecked Sendable {
    let value: OutputCheckpoint
    init(_ value: OutputCheckpoint) { self.value = value }
}
