import Dispatch
import Foundation
import TesseraCore
import TesseraIO

/// Turns a file's bytes, arriving in pieces (git's filter stream), into a manifest plus objects in the store.
///
/// The format is detected from the first bytes (see `CheckpointLayouts`): safetensors, GGUF, a PyTorch zip
/// checkpoint or a NumPy .npz archive are split into segments (headers, tensors, gaps); an existing manifest is passed
/// through unchanged (so cleaning is idempotent); anything else is stored whole as one object. Memory is bounded by
/// the largest tensor plus the largest header: one tensor is filled while the previous one is hashed, compressed and
/// written on a second core.
public final class CheckpointCleaner: @unchecked Sendable {
    // @unchecked: driven by one thread; the only state the encoding thread touches, `segments`, is guarded by `lock`.
    /// Where the cleaner is in the file. Bytes being collected (the detection prefix, a header, manifest text) live in
    /// `collected`, not in the state's payload: appending to an array held by an enum case copies it on every packet,
    /// which made a 99 MB header quadratic.
    private enum State {
        case detecting
        case manifestText
        /// Collecting a metadata run that starts at `scanBegin`, until `collected` holds `want` bytes.
        case scanning(want: Int)
        case data
        case opaque(StreamingObjectWriter, length: Int)
        case finished
    }

    private let store: ObjectStore
    private let fileName: String
    private var state: State = .detecting
    private var collected: [UInt8] = []
    private let pipeline: EncodePipeline
    /// The manifest git has staged for this path, if any: the only manifest text passed through unchanged.
    private let stagedManifest: [UInt8]?

    private var layout: CheckpointLayout?
    /// What follows the current metadata run; `planIndex` is the item being read.
    private var plan: [(item: LayoutItem, segment: Int)] = []
    private var planIndex = 0
    private var next: LayoutNext = .trailing
    private var scanBegin = 0
    private var position = 0          // absolute offset of the next byte in the file
    private var segments: [Manifest.Segment?] = []
    private var current: TensorBuffer?
    private let hasher = SHA256Hasher()
    private var gapBytes: [UInt8] = []
    private var gapWriter: StreamingObjectWriter?
    /// Where the trailing gap begins, once the layout has said that the rest of the file is one.
    private var trailingBegin: Int?
    /// Why the file was stored whole although its format was recognised (nil otherwise).
    public private(set) var storedWholeReason: String?

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
    static let detectionLength = CheckpointLayouts.detectionLength

    public func consume(_ piece: UnsafeRawBufferPointer) throws {
        var piece = piece
        while true {
            // Bytes a header scan collected but did not use come first: they precede `piece` in the file. A loop,
            // not recursion: an archive may hold any number of small entries.
            if !pending.isEmpty {
                let bytes = pending
                pending = []
                try bytes.withUnsafeBytes { buffer in
                    var b = buffer
                    while b.count > 0 {
                        let used = try step(b)
                        b = UnsafeRawBufferPointer(rebasing: b[used...])
                        if !pending.isEmpty { pending += b; break }
                    }
                }
                continue
            }
            guard piece.count > 0 else { return }
            let used = try step(piece)
            piece = UnsafeRawBufferPointer(rebasing: piece[used...])
        }
    }

    /// Bytes collected for a header and not part of it, still to be read as what follows.
    private var pending: [UInt8] = []

    /// Consumes the start of `piece` in the current state; returns how many bytes were used.
    private func step(_ piece: UnsafeRawBufferPointer) throws -> Int {
        switch state {
        case .detecting:
            let take = min(CheckpointCleaner.detectionLength - collected.count, piece.count)
            collected += UnsafeRawBufferPointer(rebasing: piece[0..<take])
            if collected.count == CheckpointCleaner.detectionLength { try decide(atEnd: false) }
            return take
        case .manifestText:
            let limit = stagedManifest.map { $0.count } ?? 0
            if collected.count + piece.count > limit {
                // Longer than the staged manifest: not it. Stored whole, like any file.
                try becomeOpaque()
                return 0
            }
            collected += piece
            return piece.count
        case let .scanning(want):
            let take = min(max(0, want - collected.count), piece.count)
            collected += UnsafeRawBufferPointer(rebasing: piece[0..<take])
            if collected.count >= want { try scan(atEnd: false) }
            return take
        case .data:
            return try consumeData(piece)
        case let .opaque(writer, length):
            try writer.append(piece)
            state = .opaque(writer, length: length + piece.count)
            return piece.count
        case .finished:
            throw TesseraError(.io, "\(fileName): data after the end of the file")
        }
    }

    /// Switches to storing the file whole, starting with the bytes collected so far.
    private func becomeOpaque() throws {
        let w = try store.beginStreamingObject()
        try collected.withUnsafeBytes { try w.append($0) }
        state = .opaque(w, length: collected.count)
        collected = []
    }

    private func decide(atEnd: Bool) throws {
        if Manifest.looksLikeManifest(collected), stagedManifest != nil {
            state = .manifestText
        } else if let layout = CheckpointLayouts.detect(prefix: collected, fileName: fileName) {
            self.layout = layout
            scanBegin = 0
            state = .scanning(want: 0)
            try scan(atEnd: atEnd)
        } else {
            try becomeOpaque()
        }
    }

    /// Asks the layout about the metadata run collected so far; stores its pieces and plans what follows.
    private func scan(atEnd: Bool) throws {
        guard let layout else { return }
        switch try layout.scan(collected, at: scanBegin, atEnd: atEnd) {
        case let .needMore(n):
            guard !atEnd, n > collected.count else {
                throw TesseraError(.invalidCheckpoint, "\(fileName): truncated: the file ends at byte \(scanBegin + collected.count), inside a \(layout.format.rawValue) header",
                                   hint: "the file is incomplete; re-save or re-download it")
            }
            state = .scanning(want: n)
        case let .storeWhole(reason):
            guard scanBegin == 0 else {
                throw TesseraError(.io, "\(fileName): internal error: a layout gave up after storing part of the file")
            }
            storedWholeReason = reason
            self.layout = nil
            try becomeOpaque()
        case let .parsed(pieces, items, next):
            let run = collected
            collected = []
            var at = 0
            for piece in pieces {
                let n = piece.length
                guard n >= 0, n <= run.count - at else {
                    throw TesseraError(.io, "\(fileName): internal error: a header piece beyond the bytes read")
                }
                let bytes = run[at..<(at + n)]
                switch piece {
                case .header:
                    let stored = try bytes.withUnsafeBytes {
                        try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 1, encoder: pipeline.mainEncoder, batch: pipeline.batch)
                    }
                    segments.append(.header(begin: scanBegin + at, end: scanBegin + at + n, stored))
                case .gap:
                    if n <= Manifest.inlineGapLimit {
                        segments.append(.gap(begin: scanBegin + at, end: scanBegin + at + n, .inline(Array(bytes))))
                    } else {
                        let stored = try bytes.withUnsafeBytes {
                            try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 1, encoder: pipeline.mainEncoder, batch: pipeline.batch)
                        }
                        segments.append(.gap(begin: scanBegin + at, end: scanBegin + at + n, .object(stored)))
                    }
                }
                at += n
            }
            position = scanBegin + at
            // The items must tile the file from here on; a layout that says otherwise is a bug, not a bad input.
            var expected = position
            plan = []
            planIndex = 0
            for item in items {
                let begin: Int
                switch item {
                case let .tensor(t): begin = t.begin
                case let .gap(b, _), let .blob(b, _): begin = b
                }
                guard begin == expected, item.end >= begin else {
                    throw TesseraError(.io, "\(fileName): internal error: layout items do not tile the file at byte \(expected)")
                }
                expected = item.end
                plan.append((item, segments.count))
                segments.append(nil)
                // Declared sizes only set the pipeline's accounting; memory is taken as bytes arrive (TensorBuffer).
                // A tensor and its base; twice that when bases may be chained (a chain decodes through two buffers).
                if case let .tensor(t) = item {
                    let (budget, overflow) = t.byteCount.multipliedReportingOverflow(by: pipeline.basesMayBeChained ? 4 : 2)
                    if overflow || budget > pipeline.budget.limit { pipeline.budget.limit = overflow ? Int.max : budget }
                }
            }
            guard at > 0 || !items.isEmpty || next == .trailing else {
                throw TesseraError(.io, "\(fileName): internal error: a header scan made no progress at byte \(scanBegin)")
            }
            self.next = next
            state = .data
            pending = Array(run[at...])
            try beginPlanItems()
        }
    }

    /// Starts the next plan item, and completes at once every zero-length item in a row (a loop, not recursion: a
    /// header may declare any number of them). When the plan is done, moves on to what the layout said comes next.
    private func beginPlanItems() throws {
        while planIndex < plan.count {
            switch plan[planIndex].item {
            case let .tensor(t):
                pipeline.reserve(t.byteCount)
                current = TensorBuffer(declared: t.byteCount)
                if t.byteCount > 0 { return }
                try completeTensor()
            case let .gap(b, e), let .blob(b, e):
                gapBytes.removeAll()
                gapWriter = nil
                if e > b { return }
                record(index: plan[planIndex].segment, try finishGap(begin: b, end: e))
                planIndex += 1
            }
        }
        switch next {
        case .scan:
            scanBegin = position
            state = .scanning(want: 0)
            try scan(atEnd: false)
        case .trailing:
            if trailingBegin == nil {
                trailingBegin = position
                gapBytes.removeAll()
                gapWriter = nil
            }
        }
    }

    /// Consumes bytes of the data region; returns how many were used.
    private func consumeData(_ piece: UnsafeRawBufferPointer) throws -> Int {
        if planIndex >= plan.count {
            // Bytes after the last item: kept as a trailing gap.
            try appendGap(piece)
            position += piece.count
            return piece.count
        }
        let (item, index) = plan[planIndex]
        switch item {
        case let .tensor(t):
            let take = min(t.end - position, piece.count)
            let part = UnsafeRawBufferPointer(rebasing: piece[0..<take])
            try current!.append(part)
            hasher.update(part)
            position += take
            if position == t.end {
                try completeTensor()
                try beginPlanItems()
            }
            return take
        case let .gap(begin, end), let .blob(begin, end):
            let take = min(end - position, piece.count)
            try appendGap(UnsafeRawBufferPointer(rebasing: piece[0..<take]), wholeObject: { if case .blob = item { return true } else { return false } }())
            position += take
            if position == end {
                var seg = try finishGap(begin: begin, end: end)
                if case .blob = item, case let .gap(b, e, .object(st)) = seg { seg = .blob(begin: b, end: e, st) }
                record(index: index, seg)
                planIndex += 1
                try beginPlanItems()
            }
            return take
        }
    }

    private func appendGap(_ bytes: UnsafeRawBufferPointer, wholeObject: Bool = false) throws {
        if let gapWriter { try gapWriter.append(bytes); return }
        gapBytes += bytes
        if gapBytes.count > Manifest.inlineGapLimit || (wholeObject && !gapBytes.isEmpty) {
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
        guard case let .tensor(t) = plan[planIndex].item, let buffer = current else { return }
        let rawSHA = hasher.finalizeHex()
        let index = plan[planIndex].segment
        current = nil
        planIndex += 1
        try pipeline.submit(buffer: buffer, rawSHA256: rawSHA, tensor: t.pipelineTensor) { [weak self] stored in
            self?.record(index: index, t.segment(stored))
        }
    }

    private let lock = NSLock()
    private func record(index: Int, _ segment: Manifest.Segment) {
        lock.lock(); segments[index] = segment; lock.unlock()
    }

    /// Completes the file and returns its manifest text. Throws if the file ended early.
    public func finish() throws -> [UInt8] {
        // A loop, not recursion: each turn either ends or moves the state forward.
        while true {
            try consume(UnsafeRawBufferPointer(start: nil, count: 0))
            switch state {
            case .detecting:
                // A whole file shorter than the detection prefix (the empty safetensors checkpoint, 16 bytes).
                try decide(atEnd: true)
                if case .detecting = state { try becomeOpaque() }
                continue
            case .manifestText:
                if let stagedManifest, collected == stagedManifest { state = .finished; return collected }
                try becomeOpaque()
                continue
            case .scanning:
                let (begin, count) = (scanBegin, collected.count)
                do {
                    try scan(atEnd: true)
                    try consume(UnsafeRawBufferPointer(start: nil, count: 0))
                } catch { pipeline.cancel(); throw error }
                if case .scanning = state, scanBegin == begin, collected.count == count {
                    pipeline.cancel()
                    throw TesseraError(.invalidCheckpoint, "\(fileName): truncated: the file ends inside a header at byte \(begin)",
                                       hint: "the file is incomplete; re-save or re-download it")
                }
                continue
            default:
                break
            }
            break
        }
        defer { state = .finished }
        switch state {
        case .detecting, .manifestText, .scanning:
            throw TesseraError(.io, "\(fileName): internal error: unfinished")
        case let .opaque(w, length):
            return try opaqueManifest(w, length: length)
        case .data:
            guard let layout else { throw TesseraError(.invalidCheckpoint, "\(fileName): no header") }
            if planIndex < plan.count {
                pipeline.cancel()
                var name = "?"
                if case let .tensor(t) = plan[planIndex].item { name = t.name }
                else if let t = plan[planIndex...].lazy.compactMap({ if case let .tensor(t) = $0.item { return t } else { return nil } }).first { name = t.name }
                let declaredEnd = plan.last?.item.end ?? position
                throw TesseraError(.invalidCheckpoint,
                                   "\(fileName): truncated: the file ends at byte \(position) inside \(name == "?" ? "the data" : "tensor '\(name)'"), which the header places up to byte \(declaredEnd)",
                                   hint: "the file is incomplete; re-save or re-download it")
            }
            try pipeline.wait()
            var all = segments.compactMap { $0 }
            guard all.count == segments.count else {
                throw TesseraError(.io, "\(fileName): internal error: a tensor was not stored")
            }
            if let trailingBegin, position > trailingBegin {
                all.append(try finishGap(begin: trailingBegin, end: position))
            }
            try layout.finish(segments: &all)
            return keepingStagedForm(Manifest(format: layout.format, size: position, segments: all))
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
    private let baseDecoder = ObjectDecoder()
    /// Delta bases' buffers, reused across tensors of the same size (a model's layers repeat their shapes): a fresh
    /// buffer's pages are faulted in and zeroed, which took 8% of a dense fine-tune's `git add`. At most
    /// `ObjectStore.reusedBufferLimit` bytes are kept beyond the budget.
    private let basePool = LargeBufferPool(limit: ObjectStore.reusedBufferLimit)
    let mainEncoder = ObjectEncoder()
    /// Tensors smaller than this are encoded on the reading thread.
    static let inlineEncodingLimit = 64 << 10
    /// Tensors' objects, made durable and visible together when the file is complete.
    let batch: ObjectBatch
    private let deltaBases: [String: Manifest.Stored]
    private let previousByRawHash: [String: Manifest.Stored]
    private let policy = EncodingPolicy()
    /// Whether a delta base may itself be a delta (its manifest line names dependencies): the memory budget then
    /// makes room for decoding its chain.
    let basesMayBeChained: Bool

    init(store: ObjectStore, fileName: String, deltaBases: [String: Manifest.Stored]) {
        self.store = store
        self.fileName = fileName
        self.deltaBases = deltaBases
        batch = ObjectBatch(store: store)
        basesMayBeChained = deltaBases.values.contains { !Manifest.baseObjects(encoding: $0.encoding).isEmpty }
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
        // A base that is itself a delta is decoded through its chain: its buffer, plus two more while its own bases
        // are decoded (see `ObjectStore.read`).
        let baseBuffers = base.map { Manifest.baseObjects(encoding: $0.encoding).isEmpty ? 1 : 3 } ?? 0
        if baseBuffers > 0 { reserve(tensor.byteCount * baseBuffers) }
        queue.async { [self] in
            defer { release(tensor.byteCount * (1 + baseBuffers)) }
            lock.lock(); let stop = cancelled || failure != nil; lock.unlock()
            if stop { return }
            do {
                // A base that cannot be read (damaged, say) only costs the delta: the value is stored whole. Its raw
                // hash proves the decoded bytes (as in any read that names the value it expects); its buffer comes
                // from, and goes back to, the pool.
                let baseBytes = base.flatMap { readBase($0, byteCount: tensor.byteCount) }
                defer { if let baseBytes { basePool.give(baseBytes) } }
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

    /// The decoded value of a delta base, or nil if it cannot be read.
    private func readBase(_ base: Manifest.Stored, byteCount: Int) -> LargeBuffer? {
        guard let buffer = try? basePool.take(count: byteCount) else { return nil }
        do {
            try store.readAll(base.objectID, into: buffer.bytes, expectedRawSHA256: base.rawSHA256, decoder: baseDecoder, pool: basePool)
            return buffer
        } catch {
            // Every user of a pooled buffer overwrites it whole first: what a failed decode left in it is harmless.
            basePool.give(buffer)
            return nil
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
