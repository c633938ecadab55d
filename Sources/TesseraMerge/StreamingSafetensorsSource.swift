#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TesseraCore
import TesseraIO

/// A safetensors file read with `pread`, one tensor at a time, instead of memory-mapped.
///
/// A merge touches every byte of every input once; with a mapping those pages stay in the process's resident set
/// (three 500 MB inputs would put 1.5 GB in RSS), while reads into a buffer that is freed after the tensor is merged
/// keep resident memory to the tensors in flight. Use this for merges of large checkpoints.
public final class StreamingSafetensorsSource: TensorSource, Float32Reading, Float32Mapping, @unchecked Sendable {
    // @unchecked Sendable: the file is only read with pread (no shared file offset), and the layout is immutable.
    public let path: String
    public let layout: SafetensorsLayout
    private let file: FileDescriptor
    private let index: [ExactName: SafetensorsTensor]
    /// Each tensor's successor in file order (for read-ahead).
    private let followingTensor: [ExactName: SafetensorsTensor]

    public init(path: String) throws {
        self.path = path
        do {
            file = try FileDescriptor.openRegularFile(path)
        } catch let e as TesseraError {
            throw TesseraError(.io, "\(path): cannot open the file (\(e.message))", hint: "check that it exists and is readable")
        }
        let size = try file.size()
        let prefix = try Self.read(file, offset: 0, count: min(8, size))
        let n = try SafetensorsLayout.headerLength(prefix: prefix, fileSize: size, file: path)
        let header = try Self.read(file, offset: 0, count: 8 + n)
        layout = try SafetensorsLayout.parse(headerBytes: header, fileSize: size, file: path)
        var idx: [ExactName: SafetensorsTensor] = [:]
        for t in layout.tensors { idx[ExactName(t.name)] = t }
        index = idx
        let inFileOrder = layout.tensors.sorted { $0.begin < $1.begin }
        var following: [ExactName: SafetensorsTensor] = [:]
        for (a, b) in zip(inFileOrder, inFileOrder.dropFirst()) { following[ExactName(a.name)] = b }
        followingTensor = following
    }

    static func read(_ file: FileDescriptor, offset: Int, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try file.preadExactly(into: $0, at: offset) }
        return out
    }

    /// The open file and the range of a tensor's bytes in it, for a reader that hashes them without being handed
    /// the merge's arrays (the provenance hasher).
    package func dataLocation(_ name: String) -> (file: FileDescriptor, offset: Int, count: Int)? {
        index[ExactName(name)].map { (file, layout.dataStart + $0.begin, $0.byteCount) }
    }

    /// The stat data of the file this source reads (the open file, not whatever its path names now).
    public func fileStat() throws -> FileSystem.Stat { try file.fileStat() }

    public var sourceName: String { path }
    /// pread has no shared file offset, and the layout is immutable.
    public var allowsConcurrentReads: Bool { true }
    public var tensorNames: [String] { layout.tensors.map(\.name) }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { index[ExactName(name)].map { ($0.dtype, $0.shape) } }
    public var metadata: [(String, String)] { layout.metadata }

    /// F32 tensors read straight into float32 storage (one copy fewer than `rawTensor` + decode); nil for other dtypes.
    public func readFloat32(_ name: String) throws -> [Float]? {
        guard let t = index[ExactName(name)], t.dtype == .f32, t.byteCount == 4 * t.elementCount else { return nil }
        let n = t.elementCount
        if n == 0 { return [] }
        var failure: (any Error)? = nil
        let values = [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            let raw = UnsafeMutableRawBufferPointer(buf)
            do {
                try file.preadExactly(into: raw, at: layout.dataStart + t.begin)
            } catch {
                failure = error
                raw.initializeMemory(as: UInt8.self, repeating: 0)
            }
            initialized = n
        }
        if let failure {
            throw TesseraError(.io, "\(path): tensor '\(name)': \((failure as? TesseraError)?.message ?? "\(failure)")",
                               hint: "the file may be truncated or unreadable")
        }
        #if _endian(big)
        return values.map { Float(bitPattern: UInt32(littleEndian: $0.bitPattern)) }
        #else
        return values
        #endif
    }

    /// An F32 tensor mapped read-only from the file, for methods that only read their inputs (`MergeMethod.readsViews`):
    /// no copy out of the page cache and no fresh memory. Nil when the tensor is not F32, its data is not 4-byte
    /// aligned in the file, the machine is big-endian, or the mapping fails (callers then read it).
    public func mapFloat32(_ name: String) throws -> MappedFloat32? {
        #if _endian(little)
        guard let t = index[ExactName(name)], t.dtype == .f32, t.byteCount == 4 * t.elementCount, t.elementCount > 0 else { return nil }
        let offset = layout.dataStart + t.begin
        guard offset % 4 == 0 else { return nil }
        // Pages not in the page cache would be read one fault-sized piece at a time while the mapping is populated;
        // asking for the whole range first reads it in large requests (a no-op when it is cached). The tensor after
        // it in the file is asked for too, so that its reading overlaps this one's merge.
        MappedRegion.willNeed(file, offset: offset, count: t.byteCount)
        if let next = followingTensor[ExactName(name)] {
            MappedRegion.willNeed(file, offset: layout.dataStart + next.begin, count: next.byteCount)
        }
        let region = try MappedRegion(file: file, offset: offset, count: t.byteCount, populate: true)
        return MappedFloat32(region: region, count: t.elementCount)
        #else
        return nil
        #endif
    }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = index[ExactName(name)] else {
            throw TesseraError(.notFound, "\(path): no tensor named '\(name)'", hint: "`tessera ls \(path)` lists the tensors")
        }
        let bytes = t.byteCount == 0 ? [] : try Self.read(file, offset: layout.dataStart + t.begin, count: t.byteCount)
        return RawTensor(dtype: t.dtype, shape: t.shape, bytes: bytes)
    }
}


/// A source that can map F32 tensors read-only instead of reading them (see `StreamingSafetensorsSource.mapFloat32`).
public protocol Float32Mapping {
    func mapFloat32(_ name: String) throws -> MappedFloat32?
}

/// F32 values mapped read-only from a file (a `MappedRegion`), unmapped when the last reference goes.
public final class MappedFloat32: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; the pages are only read.
    private let region: MappedRegion
    public let values: UnsafeBufferPointer<Float>

    init(region: MappedRegion, count: Int) {
        self.region = region
        values = UnsafeBufferPointer(start: region.bytes.baseAddress?.assumingMemoryBound(to: Float.self), count: count)
    }
}
