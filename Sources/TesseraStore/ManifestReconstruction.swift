import Foundation
import TesseraCore

extension ObjectStore {
    /// Objects a manifest needs that this store lacks (what a checkout must fetch first).
    public func missingObjects(of manifest: Manifest) -> [String] {
        manifest.objectIDs.filter { !contains($0) }
    }

    /// Rebuilds the file a manifest describes, byte for byte, handing the bytes to `sink` in file order.
    /// Every object is verified; on any error the caller must discard what it received.
    public func reconstruct(_ manifest: Manifest, file: String, decoder: ObjectDecoder = ObjectDecoder(),
                            sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var written = 0
        for segment in manifest.segments {
            guard segment.begin == written else {
                throw TesseraError(.invalidManifest, "\(file): manifest segments do not tile the file")
            }
            switch segment {
            case let .gap(_, _, .inline(bytes)):
                try bytes.withUnsafeBytes { try sink($0) }
            default:
                guard let stored = segment.stored else { continue }
                var n = 0
                do {
                    try read(stored.objectID, decoder: decoder) { piece in
                        n += piece.count
                        try sink(piece)
                    }
                } catch let e as TesseraError {
                    var what = "\(file)"
                    if case let .tensor(name, _, _, _, _, _) = segment { what += ": tensor '\(name)'" }
                    throw TesseraError(e.code, "\(what): \(e.message)", hint: e.hint)
                }
                guard n == segment.end - segment.begin else {
                    throw TesseraError(.objectCorrupt, "\(file): object \(stored.objectID.prefix(12)) has \(n) bytes, the manifest expects \(segment.end - segment.begin)",
                                       hint: "run `tessera fsck`")
                }
            }
            written = segment.end
        }
        guard written == manifest.size else { throw TesseraError(.invalidManifest, "\(file): manifest does not cover the whole file") }
    }
}

/// A checkpoint read through its manifest from the object store, with no checkout: what `REV:path` means to merge,
/// task vectors and the engine.
public final class StoredCheckpoint: TensorSource, Float32Reading, @unchecked Sendable {
    // @unchecked: immutable after init; the store is itself safe to share.
    public let sourceName: String
    public let manifest: Manifest
    private let store: ObjectStore
    private let byName: [String: (dtype: DType, shape: [Int], stored: Manifest.Stored)]
    public let metadata: [(String, String)]

    public init(manifest: Manifest, store: ObjectStore, name: String) throws {
        guard manifest.format == .safetensors else {
            throw TesseraError(.unsupported, "\(name) is not a safetensors checkpoint", hint: "only checkpoints can be read as tensors")
        }
        self.manifest = manifest
        self.store = store
        sourceName = name
        var map: [String: (DType, [Int], Manifest.Stored)] = [:]
        for t in manifest.tensors { map[t.name] = (t.dtype, t.shape, t.stored) }
        byName = map
        // Metadata lives in the header object.
        var meta: [(String, String)] = []
        if case let .header(_, _, stored)? = manifest.segments.first {
            let bytes = try store.readAll(stored.objectID)
            meta = try SafetensorsLayout.parse(headerBytes: bytes, fileSize: nil, file: name).metadata
        }
        metadata = meta
    }

    public var tensorNames: [String] { manifest.tensors.map(\.name) }
    /// Immutable, and every read decodes with its own decoder.
    public var allowsConcurrentReads: Bool { true }

    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        byName[name].map { ($0.dtype, $0.shape) }
    }

    public func stored(_ name: String) -> Manifest.Stored? { byName[name]?.stored }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = byName[name] else {
            throw TesseraError(.notFound, "\(sourceName): no tensor named '\(name)'", hint: "`tessera ls \(sourceName)` lists the tensors")
        }
        return RawTensor(dtype: t.dtype, shape: t.shape, bytes: try store.readAll(t.stored.objectID))
    }

    /// An F32 tensor decoded from its object straight into float storage (no intermediate byte array: half the
    /// memory and one copy fewer for a merge of stored revisions).
    public func readFloat32(_ name: String) throws -> [Float]? {
        #if _endian(little)
        guard let t = byName[name], t.dtype == .f32, let n = elementCount(t.shape), n > 0 else { return nil }
        return try [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            try store.readAll(t.stored.objectID, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = n
        }
        #else
        return nil
        #endif
    }
}

extension ObjectStore {
    /// Rebuilds a file like `reconstruct`, decoding up to two objects at once on other threads while the caller's
    /// thread hands finished ones to `sink` in file order. Decoded bytes waiting to be written, and delta bases, count
    /// against a budget of twice the largest segment, so memory stays bounded whatever the file's size.
    public func reconstructConcurrently(_ manifest: Manifest, file: String, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let segments = manifest.segments
        final class Slot: @unchecked Sendable {
            // @unchecked: written once by a decoding thread before `ready` is signalled, read after by the writer.
            var buffer: LargeBuffer?
            var error: (any Error)?
            let ready = DispatchSemaphore(value: 0)
        }
        final class Budget: @unchecked Sendable {
            // @unchecked: all state guarded by `condition`.
            let condition = NSCondition()
            var inFlight = 0
            var stopped = false
            let limit: Int
            init(limit: Int) { self.limit = limit }
            func reserve(_ n: Int) -> Bool {
                condition.lock(); defer { condition.unlock() }
                while inFlight > 0 && inFlight + n > limit && !stopped { condition.wait() }
                if stopped { return false }
                inFlight += n
                return true
            }
            func release(_ n: Int) { condition.lock(); inFlight -= n; condition.broadcast(); condition.unlock() }
            func stop() { condition.lock(); stopped = true; condition.broadcast(); condition.unlock() }
        }
        let slots = segments.map { _ in Slot() }
        let cost: [Int] = segments.map { s in
            guard let st = s.stored else { return 0 }
            return (s.end - s.begin) * (st.encoding.hasPrefix("xor") ? 2 : 1)
        }
        let budget = Budget(limit: max(2 * (cost.max() ?? 0), 1))
        let workers = DispatchSemaphore(value: 2)
        let group = DispatchGroup()
        let store = self
        // The dispatcher starts decodes in file order as budget and workers allow.
        DispatchQueue.global().async(group: group) {
            for (k, segment) in segments.enumerated() {
                guard let stored = segment.stored else { slots[k].ready.signal(); continue }
                guard budget.reserve(cost[k]) else { slots[k].error = CancellationError(); slots[k].ready.signal(); continue }
                workers.wait()
                DispatchQueue.global().async(group: group) {
                    defer { workers.signal() }
                    do {
                        slots[k].buffer = try store.readAll(stored.objectID, into: LargeBuffer(count: segment.end - segment.begin))
                    } catch let e as TesseraError {
                        var what = file
                        if case let .tensor(name, _, _, _, _, _) = segment { what += ": tensor '\(name)'" }
                        slots[k].error = TesseraError(e.code, "\(what): \(e.message)", hint: e.hint)
                    } catch {
                        slots[k].error = error
                    }
                    slots[k].ready.signal()
                }
            }
        }
        defer {
            budget.stop()
            group.wait()
        }
        for (k, segment) in segments.enumerated() {
            slots[k].ready.wait()
            if let error = slots[k].error { throw error }
            switch segment {
            case let .gap(_, _, .inline(bytes)):
                try bytes.withUnsafeBytes { try sink($0) }
            default:
                if let buffer = slots[k].buffer {
                    try sink(UnsafeRawBufferPointer(buffer.bytes))
                    slots[k].buffer = nil
                }
                budget.release(cost[k])
            }
        }
    }
}
