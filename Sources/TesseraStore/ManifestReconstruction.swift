import Foundation
import TesseraCore
import TesseraIO

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
                    try read(stored.objectID, expectedLength: segment.end - segment.begin, expectedRawSHA256: stored.rawSHA256,
                             decoder: decoder) { piece in
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
public final class StoredCheckpoint: TensorSource, DeltaBaseSharing, @unchecked Sendable {
    // @unchecked: immutable after init; the store is itself safe to share.
    public let sourceName: String
    public let manifest: Manifest
    private let store: ObjectStore
    private let byName: [ExactName: (dtype: DType, shape: [Int], stored: Manifest.Stored)]
    public let metadata: [(String, String)]

    public init(manifest: Manifest, store: ObjectStore, name: String) throws {
        guard manifest.format == .safetensors else {
            throw TesseraError(.unsupported, "\(name) is not a safetensors checkpoint", hint: "only checkpoints can be read as tensors")
        }
        self.manifest = manifest
        self.store = store
        sourceName = name
        var map: [ExactName: (DType, [Int], Manifest.Stored)] = [:]
        for t in manifest.tensors { map[ExactName(t.name)] = (t.dtype, t.shape, t.stored) }
        byName = map
        // Metadata lives in the header object.
        var meta: [(String, String)] = []
        if case let .header(b, e, stored)? = manifest.segments.first {
            let bytes = try store.readAll(stored.objectID, expectedLength: e - b, expectedRawSHA256: stored.rawSHA256)
            meta = try SafetensorsLayout.parse(headerBytes: bytes, fileSize: nil, file: name).metadata
        }
        metadata = meta
    }

    public var tensorNames: [String] { manifest.tensors.map(\.name) }
    /// Immutable, and every read decodes with its own decoder.
    public var allowsConcurrentReads: Bool { true }

    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        byName[ExactName(name)].map { ($0.dtype, $0.shape) }
    }

    public func stored(_ name: String) -> Manifest.Stored? { byName[ExactName(name)]?.stored }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = byName[ExactName(name)] else {
            throw TesseraError(.notFound, "\(sourceName): no tensor named '\(name)'", hint: "`tessera ls \(sourceName)` lists the tensors")
        }
        // The manifest checked dtype × shape against the byte range, and the read checks the object against both.
        let length = t.dtype.byteCount(elements: elementCount(t.shape) ?? 0) ?? 0
        return RawTensor(dtype: t.dtype, shape: t.shape,
                         bytes: try store.readAll(t.stored.objectID, expectedLength: length, expectedRawSHA256: t.stored.rawSHA256))
    }

    public func storedObject(_ name: String) -> (id: String, bases: [String])? {
        guard let stored = byName[ExactName(name)]?.stored, let encoding = try? ManifestEncoding(stored.encoding) else { return nil }
        return (stored.objectID, encoding.dependencies.map(\.id))
    }

    /// An F32 tensor decoded from its object straight into float storage (no intermediate byte array: half the
    /// memory and one copy fewer for a merge of stored revisions).
    public func readFloat32(_ name: String) throws -> [Float]? {
        try readFloat32(name, lending: [:])
    }

    public func readFloat32(_ name: String, lending lent: [String: UnsafeRawBufferPointer]) throws -> [Float]? {
        #if _endian(little)
        guard let t = byName[ExactName(name)], t.dtype == .f32, let n = elementCount(t.shape), n > 0 else { return nil }
        // The object's trailer must agree with the manifest before n floats are allocated for it.
        let trailer = try store.trailer(of: t.stored.objectID)
        guard trailer.rawCount == 4 * n else {
            throw TesseraError(.objectCorrupt, "\(sourceName): tensor '\(name)': object \(t.stored.objectID.prefix(12)) holds \(trailer.rawLength) bytes, the manifest expects \(4 * n)",
                               hint: "run `tessera fsck`")
        }
        try LargeBuffer.checkFitsInMemory(4 * n, what: "\(sourceName): tensor '\(name)'")
        return try [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            try store.readAll(t.stored.objectID, into: UnsafeMutableRawBufferPointer(buffer), expectedRawSHA256: t.stored.rawSHA256,
                              lentBases: lent)
            initialized = n
        }
        #else
        return nil
        #endif
    }
}

extension ObjectStore {
    /// Segments longer than this are not decoded ahead into a buffer but streamed to the sink on the caller's thread
    /// when their turn comes: a 2 GB opaque file then costs a chunk of memory, not 2 GB, and a manifest's declared
    /// length (a claim) never sizes an allocation.
    public static let bufferedSegmentLimit = 64 << 20
    /// Free decode buffers a reconstruction keeps for reuse, at most (on top of its budget).
    public static let reusedBufferLimit = 64 << 20
    /// Objects a reconstruction decodes ahead of the writer, at most (two decoding, two ready). The byte budget alone
    /// (twice the largest tensor) let SmolLM2's GGUF, 272 tensors of 0.2-1 MB beside a 30 MB embedding, run 60 MB
    /// ahead: every buffer was a fresh mapping, faulted in and zeroed, and none came back to the pool in time to be
    /// decoded into again.
    static let segmentsDecodedAhead = 4

    /// Rebuilds a file like `reconstruct`, decoding up to two objects at once on other threads while the caller's
    /// thread hands finished ones to `sink` in file order. Decoded bytes waiting to be written, and delta bases, count
    /// against a budget of twice the largest buffered segment, so memory stays bounded whatever the file's size.
    public func reconstructConcurrently(_ manifest: Manifest, file: String, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let segments = manifest.segments
        final class Slot: @unchecked Sendable {
            // @unchecked: written once by a decoding thread before `ready` is signalled, read after by the writer.
            var buffer: LargeBuffer?
            var error: (any Error)?
            let ready = DispatchSemaphore(value: 0)
        }
        @Sendable func named(_ e: TesseraError, _ segment: Manifest.Segment) -> TesseraError {
            var what = file
            if case let .tensor(name, _, _, _, _, _) = segment { what += ": tensor '\(name)'" }
            return TesseraError(e.code, "\(what): \(e.message)", hint: e.hint)
        }
        let streamed = segments.map { $0.stored != nil && $0.end - $0.begin > ObjectStore.bufferedSegmentLimit }
        let slots = segments.map { _ in Slot() }
        let cost: [Int] = segments.enumerated().map { k, s in
            guard let st = s.stored, !streamed[k] else { return 0 }
            // A delta holds its base's buffer while it decodes; a base that is itself a delta holds two more while
            // its chain is decoded (see `ObjectStore.read`).
            let dependencies = Manifest.baseObjects(encoding: st.encoding).count
            return (s.end - s.begin) * (dependencies == 0 ? 1 : dependencies == 1 ? 2 : 4)
        }
        let budget = ByteBudget(limit: max(2 * (cost.max() ?? 0), 1))
        let ahead = ByteBudget(limit: ObjectStore.segmentsDecodedAhead)
        // Buffers the writer is done with are decoded into again (same size: a model's layers repeat their shapes),
        // so their pages are not faulted in, zeroed and unmapped once per tensor.
        let pool = LargeBufferPool(limit: ObjectStore.reusedBufferLimit)
        // Decoders (zstd contexts, codecs' scratch, the payload buffer) are reused across objects: a fresh one per
        // object faulted in and zeroed its buffers again, which was most of a 272-tensor GGUF checkout's system time.
        let decoders = DecoderPool()
        let workers = DispatchSemaphore(value: 2)
        let group = DispatchGroup()
        let store = self
        // The dispatcher starts decodes in file order as budget and workers allow.
        DispatchQueue.global().async(group: group) {
            for (k, segment) in segments.enumerated() {
                guard let stored = segment.stored, !streamed[k] else { slots[k].ready.signal(); continue }
                guard ahead.reserve(1) else {
                    ahead.release(1)
                    slots[k].error = CancellationError()
                    slots[k].ready.signal()
                    continue
                }
                guard budget.reserve(cost[k]) else {
                    budget.release(cost[k])
                    ahead.release(1)
                    slots[k].error = CancellationError()
                    slots[k].ready.signal()
                    continue
                }
                workers.wait()
                DispatchQueue.global().async(group: group) {
                    defer { workers.signal() }
                    do {
                        let buffer = try pool.take(count: segment.end - segment.begin)
                        let decoder = decoders.take()
                        defer { decoders.give(decoder) }
                        try store.readAll(stored.objectID, into: buffer.bytes, expectedRawSHA256: stored.rawSHA256, decoder: decoder, pool: pool)
                        slots[k].buffer = buffer
                    } catch let e as TesseraError {
                        slots[k].error = named(e, segment)
                    } catch {
                        slots[k].error = error
                    }
                    slots[k].ready.signal()
                }
            }
        }
        defer {
            budget.stop()
            ahead.stop()
            group.wait()
        }
        let decoder = ObjectDecoder()
        for (k, segment) in segments.enumerated() {
            slots[k].ready.wait()
            if let error = slots[k].error { throw error }
            switch segment {
            case let .gap(_, _, .inline(bytes)):
                try bytes.withUnsafeBytes { try sink($0) }
            default:
                if streamed[k], let stored = segment.stored {
                    do {
                        try read(stored.objectID, expectedLength: segment.end - segment.begin, expectedRawSHA256: stored.rawSHA256,
                                 decoder: decoder, sink: sink)
                    } catch let e as TesseraError { throw named(e, segment) }
                } else if let buffer = slots[k].buffer {
                    try sink(UnsafeRawBufferPointer(buffer.bytes))
                    slots[k].buffer = nil
                    pool.give(buffer)
                    ahead.release(1)
                }
                budget.release(cost[k])
            }
        }
    }
}

/// Decoders handed from one decode to the next: each is used by one thread at a time, taken and given back.
final class DecoderPool: @unchecked Sendable {
    // @unchecked: `free` is guarded by `lock`; a decoder taken is used by its taker alone until given back.
    private let lock = NSLock()
    private var free: [ObjectDecoder] = []

    func take() -> ObjectDecoder {
        lock.lock()
        defer { lock.unlock() }
        return free.popLast() ?? ObjectDecoder()
    }

    func give(_ decoder: ObjectDecoder) {
        lock.lock()
        free.append(decoder)
        lock.unlock()
    }
}
