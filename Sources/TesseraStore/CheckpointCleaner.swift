import Dispatch
import Foundation
import TesseraCore
import TesseraIO

/// Turns a file's bytes, arriving in pieces (git's filter stream), into a manifest plus objects in the store.
///
/// The format is detected from the bytes: safetensors (a plausible header length followed by '{'), an existing
/// manifest (passed through unchanged, so cleaning is idempotent), or anything else, which is stored whole as one
/// object. Memory is bounded by the largest tensor plus a constant: one tensor is filled while the previous one is
/// hashed, compressed and written on a second core.
public final class CheckpointCleaner: @unchecked Sendable {
    // @unchecked: driven by one thread; the only state the encoding thread touches, `segments`, is guarded by `lock`.
    /// Where the cleaner is in the file. Bytes being collected (the detection prefix, a header, manifest text) live in
    /// `collected`, not in the state's payload: appending to an array held by an enum case copies it on every packet,
    /// which made a 99 MB header quadratic.
    private enum State {
        case detecting
        case manifestText
        case header(total: Int)
        case data
        case opaque(StreamingObjectWriter, length: Int)
        case finished
    }

    private enum PlanItem {
        case tensor(SafetensorsTensor)
        case gap(begin: Int, end: Int)
    }

    private let store: ObjectStore
    private let fileName: String
    private var state: State = .detecting
    private var collected: [UInt8] = []
    private let pipeline: EncodePipeline
    /// The manifest git has staged for this path, if any: the only manifest text passed through unchanged.
    private let stagedManifest: [UInt8]?

    // Safetensors progress.
    private var layout: SafetensorsLayout?
    private var plan: [PlanItem] = []
    private var planIndex = 0
    private var position = 0          // absolute offset of the next byte in the file
    private var segments: [Manifest.Segment?] = []
    private var current: TensorBuffer?
    private let hasher = SHA256Hasher()
    private var gapBytes: [UInt8] = []
    private var gapWriter: StreamingObjectWriter?
    private var trailingBegin = 0

    /// `deltaBases`: the previous manifest's tensors, XOR-delta bases for changed tensors. `stagedManifest`: the
    /// manifest currently staged for the path. Content that is manifest text is the manifest itself (git cleaning a
    /// file that was never smudged, e.g. in a clone made before `tessera install`) only when it is exactly the staged
    /// one; any other manifest text is a file like any other and is stored whole, so that a checkout gives back what
    /// was added.
    public init(store: ObjectStore, fileName: String, deltaBases: [String: Manifest.Stored] = [:], stagedManifest: [UInt8]? = nil) {
        self.store = store
        self.fileName = fileName
        self.stagedManifest = stagedManifest
        pipeline = EncodePipeline(store: store, fileName: fileName, deltaBases: deltaBases)
    }

    /// Manifest text longer than this is not a manifest git staged (those are 100-200 bytes per tensor).
    public static let manifestPassthroughLimit = 64 << 20
    static let detectionLength = 17

    public func consume(_ piece: UnsafeRawBufferPointer) throws {
        var piece = piece
        while piece.count > 0 {
            switch state {
            case .detecting:
                let take = min(CheckpointCleaner.detectionLength - collected.count, piece.count)
                collected += UnsafeRawBufferPointer(rebasing: piece[0..<take])
                piece = UnsafeRawBufferPointer(rebasing: piece[take...])
                if collected.count == CheckpointCleaner.detectionLength { try decide() }
            case .manifestText:
                let limit = stagedManifest.map { $0.count } ?? 0
                if collected.count + piece.count > limit {
                    // Longer than the staged manifest: not it. Stored whole, like any file.
                    try becomeOpaque()
                } else {
                    collected += piece
                    piece = UnsafeRawBufferPointer(start: nil, count: 0)
                }
            case let .header(total):
                let take = min(total - collected.count, piece.count)
                collected += UnsafeRawBufferPointer(rebasing: piece[0..<take])
                piece = UnsafeRawBufferPointer(rebasing: piece[take...])
                if collected.count == total {
                    let header = collected
                    collected = []
                    try startData(headerBytes: header)
                }
            case .data:
                let used = try consumeData(piece)
                piece = UnsafeRawBufferPointer(rebasing: piece[used...])
            case let .opaque(writer, length):
                try writer.append(piece)
                state = .opaque(writer, length: length + piece.count)
                piece = UnsafeRawBufferPointer(start: nil, count: 0)
            case .finished:
                throw TesseraError(.io, "\(fileName): data after the end of the file")
            }
        }
    }

    /// Switches to storing the file whole, starting with the bytes collected so far.
    private func becomeOpaque() throws {
        let w = try store.beginStreamingObject()
        try collected.withUnsafeBytes { try w.append($0) }
        state = .opaque(w, length: collected.count)
        collected = []
    }

    private func decide() throws {
        if Manifest.looksLikeManifest(collected), stagedManifest != nil {
            state = .manifestText
        } else if SafetensorsLayout.looksLikeSafetensors(prefix: collected) {
            let n = try SafetensorsLayout.headerLength(prefix: collected, fileSize: nil, file: fileName)
            let total = 8 + n
            state = .header(total: total)
            if collected.count >= total {
                let rest = Array(collected[total...])
                collected = Array(collected[0..<total])
                let header = collected
                collected = []
                try startData(headerBytes: header)
                try rest.withUnsafeBytes { try consume($0) }
            }
        } else {
            try becomeOpaque()
        }
    }

    private func startData(headerBytes: [UInt8]) throws {
        let layout = try SafetensorsLayout.parse(headerBytes: headerBytes, fileSize: nil, file: fileName)
        self.layout = layout
        let stored = try headerBytes.withUnsafeBytes {
            try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 1, encoder: pipeline.mainEncoder)
        }
        segments = [.header(begin: 0, end: layout.dataStart, stored)]
        var at = 0
        for t in layout.tensors {
            if t.begin > at { plan.append(.gap(begin: at, end: t.begin)) }
            plan.append(.tensor(t))
            at = max(at, t.end)
        }
        position = layout.dataStart
        trailingBegin = layout.dataStart + layout.dataEnd
        // Declared sizes only set the pipeline's accounting; memory is taken as bytes arrive (see TensorBuffer).
        let largest = layout.tensors.map(\.byteCount).max() ?? 0
        let (budget, overflow) = largest.multipliedReportingOverflow(by: 2)
        pipeline.budget.limit = overflow ? Int.max : budget
        segments += [Manifest.Segment?](repeating: nil, count: plan.count)
        state = .data
        try beginPlanItems()
    }

    /// Starts the next plan item, and completes at once every zero-length tensor in a row (a loop, not recursion:
    /// a header may declare any number of them).
    private func beginPlanItems() throws {
        while planIndex < plan.count {
            switch plan[planIndex] {
            case let .tensor(t):
                pipeline.reserve(t.byteCount)
                current = TensorBuffer(declared: t.byteCount)
                if t.byteCount > 0 { return }
                try completeTensor()
            case .gap:
                gapBytes.removeAll()
                gapWriter = nil
                return
            }
        }
    }

    /// Consumes bytes of the data region; returns how many were used.
    private func consumeData(_ piece: UnsafeRawBufferPointer) throws -> Int {
        guard let layout else { return 0 }
        if planIndex >= plan.count {
            // Bytes after the last tensor: kept as a trailing gap.
            try appendGap(piece)
            position += piece.count
            return piece.count
        }
        switch plan[planIndex] {
        case let .tensor(t):
            let end = layout.dataStart + t.end
            let take = min(end - position, piece.count)
            let part = UnsafeRawBufferPointer(rebasing: piece[0..<take])
            try current!.append(part)
            hasher.update(part)
            position += take
            if position == end {
                try completeTensor()
                try beginPlanItems()
            }
            return take
        case let .gap(_, gapEnd):
            let end = layout.dataStart + gapEnd
            let take = min(end - position, piece.count)
            try appendGap(UnsafeRawBufferPointer(rebasing: piece[0..<take]))
            position += take
            if position == end {
                let seg = try finishGap(begin: layout.dataStart + gapBegin(planIndex), end: end)
                record(index: 1 + planIndex, seg)
                planIndex += 1
                try beginPlanItems()
            }
            return take
        }
    }

    private func gapBegin(_ index: Int) -> Int {
        if case let .gap(b, _) = plan[index] { return b }
        return 0
    }

    private func appendGap(_ bytes: UnsafeRawBufferPointer) throws {
        if let gapWriter { try gapWriter.append(bytes); return }
        gapBytes += bytes
        if gapBytes.count > Manifest.inlineGapLimit {
            let w = try store.beginStreamingObject()
            try gapBytes.withUnsafeBytes { try w.append($0) }
            gapBytes.removeAll()
            gapWriter = w
        }
    }

    private func finishGap(begin: Int, end: Int) throws -> Manifest.Segment {
        defer { gapWriter = nil; gapBytes.removeAll() }
        if let gapWriter { return .gap(begin: begin, end: end, .object(try gapWriter.finish())) }
        return .gap(begin: begin, end: end, .inline(gapBytes))
    }

    /// Hands the tensor just read to the encoding pipeline and moves past it.
    private func completeTensor() throws {
        guard case let .tensor(t) = plan[planIndex], let layout, let buffer = current else { return }
        let rawSHA = hasher.finalizeHex()
        let index = 1 + planIndex
        current = nil
        planIndex += 1
        try pipeline.submit(buffer: buffer, rawSHA256: rawSHA, tensor: t) { [weak self] stored in
            self?.record(index: index, .tensor(name: t.name, dtype: t.dtype, shape: t.shape,
                                               begin: layout.dataStart + t.begin, end: layout.dataStart + t.end, stored))
        }
    }

    private let lock = NSLock()
    private func record(index: Int, _ segment: Manifest.Segment) {
        lock.lock(); segments[index] = segment; lock.unlock()
    }

    /// Completes the file and returns its manifest text. Throws if the file ended early.
    public func finish() throws -> [UInt8] {
        defer { state = .finished }
        switch state {
        case .detecting:
            if SafetensorsLayout.looksLikeSafetensors(prefix: collected) {
                // A whole checkpoint shorter than the detection prefix: the empty one (`save_file({})`, 16 bytes).
                let n = try SafetensorsLayout.headerLength(prefix: collected, fileSize: collected.count, file: fileName)
                let header = Array(collected[0..<(8 + n)]), rest = Array(collected[(8 + n)...])
                collected = []
                try startData(headerBytes: header)
                try rest.withUnsafeBytes { try consume($0) }
                return try finish()
            }
            try becomeOpaque()
            return try finish()
        case .manifestText:
            if let stagedManifest, collected == stagedManifest { return collected }
            try becomeOpaque()
            return try finish()
        case let .header(total):
            throw TesseraError(.invalidCheckpoint, "\(fileName): header length \(total - 8) is longer than the file (\(collected.count) bytes)",
                               hint: "the file is truncated or corrupt; re-save or re-download it")
        case let .opaque(w, length):
            return try opaqueManifest(w, length: length)
        case .data:
            guard let layout else { throw TesseraError(.invalidCheckpoint, "\(fileName): no header") }
            if planIndex < plan.count {
                pipeline.cancel()
                var name = "?"
                if case let .tensor(t) = plan[planIndex] { name = t.name }
                else if let t = layout.tensors.first(where: { layout.dataStart + $0.end > position }) { name = t.name }
                throw TesseraError(.invalidCheckpoint,
                                   "\(fileName): truncated: the file ends at byte \(position) inside tensor '\(name)', which the header places up to byte \(layout.dataStart + layout.dataEnd)",
                                   hint: "the file is incomplete; re-save or re-download it")
            }
            try pipeline.wait()
            var all = segments.compactMap { $0 }
            guard all.count == segments.count else {
                throw TesseraError(.io, "\(fileName): internal error: a tensor was not stored")
            }
            if position > trailingBegin {
                all.append(try finishGap(begin: trailingBegin, end: position))
            }
            return keepingStagedForm(Manifest(format: .safetensors, size: position, segments: all))
        case .finished:
            throw TesseraError(.io, "\(fileName): finished twice")
        }
    }

    private func opaqueManifest(_ w: StreamingObjectWriter, length: Int) throws -> [UInt8] {
        let stored = try w.finish()
        return keepingStagedForm(Manifest(format: .opaque, size: length, segments: [.blob(begin: 0, end: length, stored)]))
    }

    /// The manifest's text; the staged text itself when it describes exactly the same file (a repository written by
    /// an earlier version keeps its version 1 manifests until the files change, instead of every `git add` showing
    /// a change of format).
    private func keepingStagedForm(_ manifest: Manifest) -> [UInt8] {
        if let stagedManifest, let staged = try? Manifest.parse(String(decoding: stagedManifest, as: UTF8.self), file: fileName),
           staged == manifest {
            return stagedManifest
        }
        return Array(manifest.render().utf8)
    }

    /// Abandons the file (on error): temporary objects are removed; complete objects stay (they are valid).
    public func abandon() {
        pipeline.cancel()
        if case let .opaque(w, _) = state { w.abandon() }
        gapWriter?.abandon()
    }
}

/// A tensor's bytes while they arrive and until they are encoded.
///
/// The header declares the tensor's length, but a header is only a claim (a 192-byte file can declare a terabyte):
/// memory is taken as bytes actually arrive, doubling up to the declared length, so a lie costs nothing.
final class TensorBuffer: @unchecked Sendable {
    // @unchecked: filled by the reading thread, then handed over whole to the encoding thread; never shared.
    private var storage: LargeBuffer?
    let declared: Int
    var filled = 0

    init(declared: Int) { self.declared = declared }

    var bytes: UnsafeRawBufferPointer {
        guard let storage, filled > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(storage.bytes)[0..<filled])
    }

    func append(_ piece: UnsafeRawBufferPointer) throws {
        guard piece.count > 0 else { return }
        let needed = filled + piece.count
        precondition(needed <= declared, "the cleaner never feeds a tensor more than its declared length")
        if storage == nil || storage!.count < needed {
            let target = min(declared, max(needed, (storage?.count ?? 0) * 2, 1 << 16))
            if let storage { try storage.grow(to: target) } else { storage = try LargeBuffer(count: target) }
        }
        (storage!.bytes.baseAddress! + filled).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
        filled = needed
    }
}

/// Encodes tensors on a second thread while the next tensor is read.
///
/// Memory is accounted in bytes: the buffer being filled, the buffers waiting or being encoded, and the previous
/// versions loaded as XOR-delta bases all count against a budget of twice the largest tensor, so the filter's memory
/// stays within 2 × the largest tensor plus a constant whatever the file's size.
final class EncodePipeline: @unchecked Sendable {
    // @unchecked: `failure` and `cancelled` are guarded by `lock`; the queue serialises all use of `workerEncoder`.
    private let store: ObjectStore
    private let fileName: String
    private let queue = DispatchQueue(label: "tessera.encode")
    private let lock = NSLock()
    private var failure: (any Error)?
    private var cancelled = false
    /// Tensor bytes held between reading and encoding (and their delta bases).
    let budget = ByteBudget(limit: 1)
    private let workerEncoder = ObjectEncoder()
    let mainEncoder = ObjectEncoder()
    /// Tensors smaller than this are encoded on the reading thread.
    static let inlineEncodingLimit = 64 << 10
    /// Tensors' objects, made durable and visible together when the file is complete.
    let batch: ObjectBatch
    private let deltaBases: [String: Manifest.Stored]
    private let previousByRawHash: [String: Manifest.Stored]
    private let policy = EncodingPolicy()

    init(store: ObjectStore, fileName: String, deltaBases: [String: Manifest.Stored]) {
        self.store = store
        self.fileName = fileName
        self.deltaBases = deltaBases
        batch = ObjectBatch(store: store)
        previousByRawHash = Dictionary(deltaBases.values.map { ($0.rawSHA256, $0) }, uniquingKeysWith: { a, _ in a })
    }

    private func currentFailure() -> (any Error)? { lock.lock(); defer { lock.unlock() }; return failure }

    func reserve(_ bytes: Int) { budget.reserve(bytes) }
    func release(_ bytes: Int) { budget.release(bytes) }

    func submit(buffer: TensorBuffer, rawSHA256: String, tensor: SafetensorsTensor,
                completion: @escaping @Sendable (Manifest.Stored) -> Void) throws {
        if let f = currentFailure() { release(tensor.byteCount); throw f }
        // Unchanged tensors (the common case after a fine-tune of a few layers) cost only their hash. The previous
        // version's manifest is asked first: re-cleaning an unchanged file then yields the very same manifest, even
        // in a fresh clone whose raw-value index is still empty.
        if let previous = previousByRawHash[rawSHA256], store.contains(previous.objectID) {
            store.touch(previous.objectID)
            release(tensor.byteCount)
            completion(previous)
            return
        }
        if let existing = batch.lookup(rawSHA256: rawSHA256) ?? store.lookup(rawSHA256: rawSHA256) {
            release(tensor.byteCount)
            completion(existing)
            return
        }
        let base = policy.deltaCandidate(for: tensor, previous: deltaBases[tensor.name], store: store)
        let width = EncodingPolicy.width(for: tensor.dtype)
        if base == nil && tensor.byteCount < EncodePipeline.inlineEncodingLimit {
            // Small tensors are encoded right here: handing each to the encoding thread cost more in thread wake-ups
            // than the encoding itself (a checkpoint of 200,000 tiny tensors spent most of its time in futex waits).
            defer { release(tensor.byteCount) }
            do {
                completion(try store.put(raw: buffer.bytes, rawSHA256: rawSHA256, width: width, encoder: mainEncoder, batch: batch))
            } catch let e as TesseraError {
                throw TesseraError(e.code, "\(fileName): tensor '\(tensor.name)': \(e.message)", hint: e.hint)
            }
            return
        }
        if base != nil { reserve(tensor.byteCount) }
        queue.async { [self] in
            defer { release(tensor.byteCount * (base == nil ? 1 : 2)) }
            lock.lock(); let stop = cancelled || failure != nil; lock.unlock()
            if stop { return }
            do {
                // A base that cannot be read (damaged, say) only costs the delta: the value is stored whole.
                let baseBytes = base.flatMap { try? store.readAll($0.objectID, into: LargeBuffer(count: tensor.byteCount)) }
                let baseRaw = baseBytes.map { UnsafeRawBufferPointer($0.bytes) }
                let choice = policy.choose(raw: buffer.bytes, width: width, base: base, baseRaw: baseRaw, dtype: tensor.dtype, shape: tensor.shape)
                completion(try store.put(raw: buffer.bytes, rawSHA256: rawSHA256, choice: choice,
                                         dependencyRaw: choice.dependencies.isEmpty ? [] : baseRaw.map { [$0] } ?? [], encoder: workerEncoder, batch: batch))
            } catch {
                lock.lock()
                if failure == nil {
                    if let e = error as? TesseraError {
                        failure = TesseraError(e.code, "\(fileName): tensor '\(tensor.name)': \(e.message)", hint: e.hint)
                    } else {
                        failure = error
                    }
                }
                lock.unlock()
                budget.stop()
            }
        }
    }

    /// Waits for every tensor, then makes their objects durable and visible.
    func wait() throws {
        queue.sync {}
        if let f = currentFailure() { batch.abandon(); throw f }
        try batch.commit()
    }

    func cancel() {
        lock.lock(); cancelled = true; lock.unlock()
        budget.stop()
        queue.sync {}
        batch.abandon()
    }
}
