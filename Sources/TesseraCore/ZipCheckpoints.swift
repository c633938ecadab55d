import Foundation
import TesseraIO

/// A ZIP archive on disk read through its central directory: entries by name, STORED entries' bytes.
struct ZipArchiveFile {
    let path: String
    let data: Data
    let entries: [ZipRecords.CentralEntry]

    /// `name`, when given, is what messages call the file (a `REV:path` rebuilt into a temporary file).
    init(path: String, name: String? = nil) throws {
        self.path = name ?? path
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw TesseraError(.io, "\(self.path): cannot read the file", hint: "check that it exists and is readable", underlying: error)
        }
        let tailStart = max(0, data.count - (65_536 + 22 + 56 + 20))
        let tail = Array(data[(data.startIndex + tailStart)...])
        let (offset, size) = try ZipRecords.locateCentralDirectory(tail: tail[...], tailOffset: tailStart, fileSize: data.count, file: self.path)
        let directory = Array(data[(data.startIndex + offset)..<(data.startIndex + offset + size)])
        let (entries, end) = try ZipRecords.centralDirectory(directory[...], file: self.path)
        guard end == size else {
            throw TesseraError(.invalidCheckpoint, "\(self.path): invalid zip central directory: it holds something else than entries", hint: "the archive is corrupt; re-save it")
        }
        self.entries = entries
    }

    /// The byte range of a STORED entry's data, checked against its local header and the file.
    func storedRange(_ entry: ZipRecords.CentralEntry) throws -> Range<Int> {
        func bad(_ why: String) -> TesseraError {
            TesseraError(.invalidCheckpoint, "\(path): zip entry '\(entry.name)': \(why)", hint: "the archive is corrupt; re-save it")
        }
        guard entry.method == 0 else { throw bad("compressed (method \(entry.method)); only stored entries are read") }
        guard entry.compressedSize == entry.uncompressedSize else { throw bad("its sizes disagree") }
        let at = entry.localHeaderOffset
        guard at <= data.count - 30 else { throw bad("its local header lies outside the file") }
        let prefix = Array(data[(data.startIndex + at)..<(data.startIndex + min(data.count, at + 30 + 65_535 * 2))])
        guard case let .parsed(local) = try ZipRecords.localHeader(prefix[...], file: path) else { throw bad("its local header is cut short") }
        guard local.name == entry.name else { throw bad("the local header names '\(local.name)'") }
        if let c = local.compressedSize, c != entry.compressedSize { throw bad("the local header and the central directory disagree on its size") }
        let (begin, o1) = at.addingReportingOverflow(local.length)
        let (end, o2) = begin.addingReportingOverflow(entry.compressedSize)
        guard !o1, !o2, end <= data.count else { throw bad("its data lies outside the file") }
        return begin..<end
    }

    func bytes(_ range: Range<Int>) -> [UInt8] { Array(data[(data.startIndex + range.lowerBound)..<(data.startIndex + range.upperBound)]) }
}

/// A PyTorch zip checkpoint (`torch.save` since 1.6) read as tensors, without executing its pickle (`TorchPickle`):
/// what `tessera ls`, merges and the adapters code (`adapter_model.bin`) read. Tensors are served in their stored
/// dtype, row-major, views of shared storages copied out.
public final class TorchCheckpoint: TensorSource, @unchecked Sendable {
    // @unchecked: immutable after init.
    public let path: String
    public var sourceName: String { path }
    private let archive: ZipArchiveFile
    private let pickle: TorchPickle
    private let storageRanges: [String: Range<Int>]
    private let index: [String: Int]

    /// Whether the zip archive at `path` holds a `data.pkl` (a torch.save checkpoint, not an .npz). Throws if it is
    /// not a readable zip archive.
    public static func isTorchArchive(path: String) throws -> Bool {
        try ZipArchiveFile(path: path).entries.contains(where: isPickleEntry)
    }

    static func isPickleEntry(_ e: ZipRecords.CentralEntry) -> Bool { e.name == "data.pkl" || e.name.hasSuffix("/data.pkl") }

    /// `name`, when given, is what messages and `sourceName` call the file (a `REV:path` rebuilt into a temporary file).
    public init(path: String, name: String? = nil) throws {
        self.path = name ?? path
        archive = try ZipArchiveFile(path: path, name: name)
        guard let pkl = archive.entries.first(where: TorchCheckpoint.isPickleEntry) else {
            throw TesseraError(.invalidCheckpoint, "\(self.path): a zip archive without data.pkl: not a PyTorch checkpoint", hint: "name a torch.save file")
        }
        let prefix = String(pkl.name.dropLast("data.pkl".count))
        pickle = try TorchPickle(archive.bytes(try archive.storedRange(pkl)), file: self.path)
        var byName: [String: ZipRecords.CentralEntry] = [:]
        for e in archive.entries where byName[e.name] == nil { byName[e.name] = e }
        var ranges: [String: Range<Int>] = [:]
        for s in pickle.storages {
            guard let e = byName[prefix + "data/" + s.key] else {
                throw TesseraError(.invalidCheckpoint, "\(self.path): storage \(s.key) is missing from the archive", hint: "the checkpoint is incomplete; re-save it")
            }
            let r = try archive.storedRange(e)
            guard r.count == s.dtype.byteCount(elements: s.count) else {
                throw TesseraError(.invalidCheckpoint, "\(self.path): storage \(s.key) holds \(r.count) bytes, but the pickle declares \(s.count) \(s.dtype.rawValue) elements",
                                   hint: "the checkpoint is corrupt; re-save it")
            }
            ranges[s.key] = r
        }
        storageRanges = ranges
        index = Dictionary(pickle.tensors.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    public var tensorNames: [String] { pickle.tensors.map(\.name) }
    public var metadata: [(String, String)] { [] }
    public var allowsConcurrentReads: Bool { true }

    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        index[name].map { (pickle.tensors[$0].tensor.storage.dtype, pickle.tensors[$0].tensor.shape) }
    }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let k = index[name], let range = storageRanges[pickle.tensors[k].tensor.storage.key] else {
            throw TesseraError(.notFound, "\(path): no tensor named '\(name)'", hint: "`tessera ls \(path)` lists the tensors")
        }
        let t = pickle.tensors[k].tensor
        let width = t.storage.dtype.byteWidth
        guard t.storage.dtype.bitWidth % 8 == 0 else {
            throw TesseraError(.unsupported, "\(path): tensor '\(name)' has a packed dtype", hint: "convert it to safetensors")
        }
        let count = elementCount(t.shape) ?? 0
        // The view was checked to lie within its storage when the pickle was read.
        if t.isContiguous {
            let begin = range.lowerBound + t.offset * width
            return RawTensor(dtype: t.storage.dtype, shape: t.shape, bytes: archive.bytes(begin..<(begin + count * width)))
        }
        var out = [UInt8](repeating: 0, count: count * width)
        var indices = [Int](repeating: 0, count: t.shape.count)
        archive.data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            for n in 0..<count {
                var element = t.offset
                for (i, s) in zip(indices, t.stride) { element += i * s }
                let from = range.lowerBound + element * width
                for b in 0..<width { out[n * width + b] = raw[from + b] }
                var d = t.shape.count - 1
                while d >= 0 {
                    indices[d] += 1
                    if indices[d] < t.shape[d] { break }
                    indices[d] = 0
                    d -= 1
                }
            }
        }
        return RawTensor(dtype: t.storage.dtype, shape: t.shape, bytes: out)
    }
}

/// A NumPy `.npz` archive (`np.savez`) read as tensors: its STORED, C-order, little-endian arrays of plain types.
/// Other entries (compressed ones, Fortran order, big-endian, structured or object arrays) are refused by name when
/// asked for.
public final class NumpyArchive: TensorSource, @unchecked Sendable {
    // @unchecked: immutable after init.
    public let path: String
    public var sourceName: String { path }
    private let archive: ZipArchiveFile
    private var arrays: [(name: String, dtype: DType, shape: [Int], range: Range<Int>)] = []
    private var index: [String: Int] = [:]
    /// Entries that are not served, with the reason.
    public private(set) var skipped: [(name: String, reason: String)] = []

    /// `name`, when given, is what messages and `sourceName` call the file (a `REV:path` rebuilt into a temporary file).
    public init(path: String, name: String? = nil) throws {
        self.path = name ?? path
        archive = try ZipArchiveFile(path: path, name: name)
        for e in archive.entries {
            let name = e.name.hasSuffix(".npy") ? String(e.name.dropLast(4)) : e.name
            guard e.method == 0 else { skipped.append((name, "compressed")); continue }
            let r = try archive.storedRange(e)
            let prefix = archive.bytes(r.lowerBound..<min(r.upperBound, r.lowerBound + (1 << 16) + 12))
            switch NumpyArrayHeader.parse(prefix[...]) {
            case .needMore: skipped.append((name, "its .npy header is cut short"))
            case let .notArray(why): skipped.append((name, why))
            case let .parsed(h):
                guard let dtype = h.dtype, !h.fortranOrder, let n = elementCount(h.shape), dtype.byteCount(elements: n) == r.count - h.length else {
                    skipped.append((name, h.fortranOrder ? "Fortran order" : "dtype \(h.descr) with shape \(h.shape)"))
                    continue
                }
                guard index[name] == nil else { continue }
                index[name] = arrays.count
                arrays.append((name, dtype, h.shape, (r.lowerBound + h.length)..<r.upperBound))
            }
        }
    }

    public var tensorNames: [String] { arrays.map(\.name) }
    public var metadata: [(String, String)] { [] }
    public var allowsConcurrentReads: Bool { true }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { index[name].map { (arrays[$0].dtype, arrays[$0].shape) } }
    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let k = index[name] else {
            if let s = skipped.first(where: { $0.name == name }) {
                throw TesseraError(.unsupported, "\(path): array '\(name)' is not read: \(s.reason)", hint: "re-save it with np.savez as a C-order little-endian array")
            }
            throw TesseraError(.notFound, "\(path): no array named '\(name)'", hint: "`tessera ls \(path)` lists the arrays")
        }
        let a = arrays[k]
        return RawTensor(dtype: a.dtype, shape: a.shape, bytes: archive.bytes(a.range))
    }
}
