import TesseraCore
import TesseraIO

/// PyTorch zip checkpoints (`torch.save` since 1.6) and NumPy `.npz` archives: ZIP archives read record by record
/// as they stream past.
///
/// - PyTorch: `PREFIX/data.pkl` comes first; it is read by `TorchPickle` (which executes nothing and refuses any
///   callable but the tensor rebuilders). Each storage `PREFIX/data/KEY` is then a tensor segment named after the
///   tensor(s) it backs (one tensor viewing the whole storage: its name and shape; else the names joined with ','
///   and the storage's element count). torch writes its entries with data descriptors (sizes after the data): a
///   storage's size comes from the pickle, the pickle's from its STOP opcode, a small entry's from the descriptor.
/// - NumPy: each STORED `NAME.npy` is a header segment (zip record and .npy header) and a tensor `NAME`; compressed
///   entries (`np.savez_compressed`), Fortran-order or non-little-endian arrays are stored whole (`blob` lines).
///
/// The central directory is checked against the local headers it follows: an archive whose records disagree is
/// refused. Anything this reader does not follow after the first record is kept as one trailing gap (still
/// byte-exact); an archive that is neither format is stored whole.
final class ZipCheckpointLayout: CheckpointLayout {
    let fileName: String
    init(fileName: String) { self.fileName = fileName }

    private enum Kind { case undecided, torch(prefix: String), npz }
    private var kind = Kind.undecided
    var format: Manifest.Format {
        if case .npz = kind { return .npz }
        return .pytorch
    }

    /// Entries seen, in order: what the central directory must repeat.
    private var seen: [(offset: Int, name: String, size: Int, method: Int)] = []
    /// The length of the entry whose data descriptor comes next, if any.
    private var descriptorFor: Int?
    private var pickle: TorchPickle?
    private var storageTensors: [String: [(name: String, tensor: TorchPickle.Tensor)]] = [:]
    private var sawCentralDirectory = false

    static let maximumPickleBytes = 256 << 20
    static let maximumSmallEntryBytes = 1 << 20
    static let maximumDirectoryBytes = 64 << 20

    static func detects(prefix: [UInt8]) -> Bool { prefix.starts(with: [0x50, 0x4B, 0x03, 0x04]) }

    private func refuse(_ why: String) -> TesseraError {
        TesseraError(.invalidCheckpoint, "\(fileName): invalid zip archive: \(why)", hint: "the archive is corrupt or truncated; re-save it")
    }

    /// Gives up splitting: before anything was stored the file is stored whole, after that the rest is one gap.
    private func giveUp(_ offset: Int, _ why: String) -> LayoutScan {
        offset == 0 ? .storeWhole(why) : .parsed(pieces: [], items: [], next: .trailing)
    }

    /// Doubles what is asked for, up to `cap`.
    private func more(_ have: Int, cap: Int) -> Int { min(cap, max(4096, have * 2)) }

    func scan(_ bytes: [UInt8], at offset: Int, atEnd: Bool) throws -> LayoutScan {
        var start = 0
        // State changes only with a `.parsed` result: a scan that needs more bytes is repeated from the same start.
        if let size = descriptorFor {
            guard bytes.count >= 24 || atEnd else { return .needMore(24) }
            guard let n = ZipRecords.dataDescriptorLength(bytes[...], size: size) else {
                if atEnd && bytes.count < 24 { throw refuse("the archive ends inside the data descriptor after '\(seen.last?.name ?? "?")' (truncated)") }
                throw refuse("the data descriptor after '\(seen.last?.name ?? "?")' (at byte \(offset)) does not give its \(size) bytes")
            }
            start = n
        }
        guard bytes.count - start >= 4 else {
            if atEnd { throw refuse("the archive ends at byte \(offset + bytes.count) without its central directory (truncated)") }
            return .needMore(start + 4)
        }
        let signature = ZipRecords.u32(bytes, start)
        if signature == ZipRecords.centralSignature {
            return try centralDirectory(bytes, start: start, at: offset, atEnd: atEnd)
        }
        guard signature == ZipRecords.localSignature else {
            return giveUp(offset, "a zip record of unknown kind at byte \(offset + start)")
        }
        let header: ZipRecords.LocalHeader
        switch try ZipRecords.localHeader(bytes[start...], file: fileName) {
        case let .needMore(n):
            if atEnd { throw refuse("the archive ends inside a local header at byte \(offset + start) (truncated)") }
            return .needMore(start + n)
        case let .parsed(h): header = h
        }
        let dataStart = start + header.length
        if case .undecided = kind {
            if header.name.hasSuffix("/data.pkl") || header.name == "data.pkl" {
                kind = .torch(prefix: String(header.name.dropLast("data.pkl".count)))
            } else if header.name.hasSuffix(".npy") {
                kind = .npz
            } else {
                return .storeWhole("a zip archive that is neither a PyTorch checkpoint nor a NumPy .npz")
            }
        }
        guard !header.isEncrypted else { return giveUp(offset, "encrypted entries") }
        /// The entry is `size` bytes: remembered for the central directory, and for its data descriptor.
        func entry(_ size: Int, _ pieces: [LayoutPiece], _ items: [LayoutItem]) -> LayoutScan {
            seen.append((offset + start, header.name, size, header.method))
            descriptorFor = header.hasDataDescriptor ? size : nil
            return .parsed(pieces: pieces, items: items, next: .scan)
        }
        func range(_ size: Int) throws -> (Int, Int) {
            let (end, o) = (offset + dataStart).addingReportingOverflow(size)
            guard !o, size <= ZipRecords.maximumSize else { throw refuse("entry '\(header.name)' declares \(size) bytes") }
            return (offset + dataStart, end)
        }

        if header.method != 0 {
            // Compressed: stored whole, when its size is known.
            guard let size = header.compressedSize else { return giveUp(offset, "compressed entries with data descriptors") }
            let (b, e) = try range(size)
            return entry(size, [.header(dataStart)], [.blob(begin: b, end: e)])
        }
        if let c = header.compressedSize, let u = header.uncompressedSize, c != u {
            throw refuse("STORED entry '\(header.name)' declares \(c) stored and \(u) uncompressed bytes")
        }
        switch kind {
        case .npz:
            guard let size = header.compressedSize else { return giveUp(offset, "entries with data descriptors") }
            let (b, e) = try range(size)
            let whole = [LayoutItem.blob(begin: b, end: e)]
            guard header.name.hasSuffix(".npy") else { return entry(size, [.header(dataStart)], whole) }
            switch NumpyArrayHeader.parse(bytes[dataStart...].prefix(size)) {
            case let .needMore(n):
                if n > size { return entry(size, [.header(dataStart)], whole) }
                if atEnd { throw refuse("the archive ends inside the .npy header of '\(header.name)' (truncated)") }
                return .needMore(dataStart + n)
            case .notArray:
                return entry(size, [.header(dataStart)], whole)
            case let .parsed(npy):
                let arrayBytes = size - npy.length
                guard let dtype = npy.dtype, !npy.fortranOrder, let count = elementCount(npy.shape),
                      dtype.byteCount(elements: count) == arrayBytes else {
                    return entry(size, [.header(dataStart)], whole)
                }
                let t = LayoutTensor(name: String(header.name.dropLast(4)), type: .dtype(dtype), shape: npy.shape, begin: b + npy.length, end: e)
                return entry(size, [.header(dataStart + npy.length)], [.tensor(t)])
            }
        case let .torch(prefix):
            if header.name == prefix + "data.pkl" {
                guard pickle == nil else { throw refuse("two data.pkl entries") }
                let body = Array(bytes[dataStart...])
                let length: Int
                if let size = header.compressedSize {
                    guard size <= ZipCheckpointLayout.maximumPickleBytes else { return giveUp(offset, "a pickle larger than 256 MiB") }
                    guard body.count >= size else {
                        if atEnd { throw refuse("the archive ends inside data.pkl (truncated)") }
                        return .needMore(dataStart + size)
                    }
                    length = size
                } else {
                    guard let n = try TorchPickle.length(of: body, file: fileName) else {
                        if atEnd { throw refuse("the archive ends inside data.pkl (truncated)") }
                        guard body.count < ZipCheckpointLayout.maximumPickleBytes else { return giveUp(offset, "a pickle larger than 256 MiB") }
                        return .needMore(dataStart + more(body.count, cap: ZipCheckpointLayout.maximumPickleBytes))
                    }
                    length = n
                }
                do {
                    let p = try TorchPickle(Array(body[0..<length]), file: fileName)
                    pickle = p
                    for (name, t) in p.tensors { storageTensors[t.storage.key, default: []].append((name, t)) }
                } catch let e as TesseraError where e.code == .unsupported {
                    return giveUp(offset, e.message)
                }
                return entry(length, [.header(dataStart + length)], [])
            }
            if header.name.hasPrefix(prefix + "data/"), pickle != nil {
                let key = String(header.name.dropFirst(prefix.count + 5))
                if let views = storageTensors[key], let storage = views.first?.tensor.storage,
                   let expected = storage.dtype.byteCount(elements: storage.count) {
                    if let size = header.compressedSize, size != expected {
                        throw refuse("storage '\(key)' holds \(size) bytes, but the pickle declares \(storage.count) \(storage.dtype.rawValue) elements")
                    }
                    let (b, e) = try range(expected)
                    let t: LayoutTensor
                    if views.count == 1, views[0].tensor.coversStorageContiguously {
                        t = LayoutTensor(name: views[0].name, type: .dtype(storage.dtype), shape: views[0].tensor.shape, begin: b, end: e)
                    } else {
                        t = LayoutTensor(name: views.map(\.name).joined(separator: ","), type: .dtype(storage.dtype), shape: [storage.count], begin: b, end: e)
                    }
                    return entry(expected, [.header(dataStart)], [.tensor(t)])
                }
            }
            // Any other entry (version, byteorder, serialization id, an unreferenced storage): kept with its record.
            if let size = header.compressedSize {
                if size <= ZipCheckpointLayout.maximumSmallEntryBytes {
                    guard bytes.count - dataStart >= size else {
                        if atEnd { throw refuse("the archive ends inside '\(header.name)' (truncated)") }
                        return .needMore(dataStart + size)
                    }
                    return entry(size, [.header(dataStart + size)], [])
                }
                let (b, e) = try range(size)
                return entry(size, [.header(dataStart)], [.blob(begin: b, end: e)])
            }
            // Size only in the descriptor after the data: found by its signature and the size it repeats.
            let body = bytes[dataStart...]
            var k = body.startIndex
            while k + 16 <= body.endIndex {
                if ZipRecords.u32(body, k - body.startIndex) == ZipRecords.descriptorSignature,
                   ZipRecords.dataDescriptorLength(body[k...], size: k - body.startIndex) != nil {
                    return entry(k - body.startIndex, [.header(dataStart + k - body.startIndex)], [])
                }
                k += 1
            }
            if atEnd { throw refuse("entry '\(header.name)' has no data descriptor (truncated?)") }
            guard body.count < ZipCheckpointLayout.maximumSmallEntryBytes else { return giveUp(offset, "an entry with a data descriptor larger than 1 MiB") }
            return .needMore(dataStart + more(body.count + 24, cap: ZipCheckpointLayout.maximumSmallEntryBytes + 24))
        case .undecided:
            return giveUp(offset, "undecided")
        }
    }

    /// The central directory and end records: the rest of the file, one header segment, checked against the
    /// local headers.
    private func centralDirectory(_ bytes: [UInt8], start: Int, at offset: Int, atEnd: Bool) throws -> LayoutScan {
        guard atEnd else {
            guard bytes.count <= ZipCheckpointLayout.maximumDirectoryBytes else { throw refuse("a central directory larger than 64 MiB") }
            return .needMore(ZipCheckpointLayout.maximumDirectoryBytes + 1)
        }
        let (entries, end) = try ZipRecords.centralDirectory(bytes[start...], file: fileName)
        guard entries.count == seen.count else {
            throw refuse("the central directory lists \(entries.count) entries, the archive holds \(seen.count)")
        }
        for (c, l) in zip(entries, seen) {
            guard c.name == l.name, c.localHeaderOffset == l.offset, c.compressedSize == l.size, c.method == l.method else {
                throw refuse("the local header and the central directory disagree about '\(l.name)' (offset \(l.offset), \(l.size) bytes)")
            }
        }
        let (cd, _) = try ZipRecords.locateCentralDirectory(tail: bytes[...], tailOffset: offset, fileSize: offset + bytes.count, file: fileName)
        guard cd == offset + start else { throw refuse("the end record places the central directory at byte \(cd), not \(offset + start)") }
        _ = end
        sawCentralDirectory = true
        return .parsed(pieces: [.header(bytes.count)], items: [], next: .trailing)
    }

    func finish(segments: inout [Manifest.Segment]) throws {
        if case .torch = kind, pickle == nil { throw refuse("no data.pkl") }
    }
}
