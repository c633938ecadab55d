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
    // @unchecked Sendable: the descriptor is only read with pread (no shared file offset), and the layout is immutable.
    public let path: String
    public let layout: SafetensorsLayout
    private let fd: Int32
    private let index: [ExactName: SafetensorsTensor]
    /// Each tensor's successor in file order (for read-ahead).
    private let followingTensor: [ExactName: SafetensorsTensor]

    public init(path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw TesseraError(.io, "\(path): cannot open the file", hint: "check that it exists and is readable")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            close(fd)
            throw TesseraError(.io, "\(path): cannot stat the file", hint: "check that it exists and is readable")
        }
        let size = Int(st.st_size)
        do {
            let prefix = try Self.read(fd, offset: 0, count: min(8, size), path: path)
            let n = try SafetensorsLayout.headerLength(prefix: prefix, fileSize: size, file: path)
            let header = try Self.read(fd, offset: 0, count: 8 + n, path: path)
            layout = try SafetensorsLayout.parse(headerBytes: header, fileSize: size, file: path)
        } catch {
            close(fd)
            throw error
        }
        var idx: [ExactName: SafetensorsTensor] = [:]
        for t in layout.tensors { idx[ExactName(t.name)] = t }
        index = idx
        let inFileOrder = layout.tensors.sorted { $0.begin < $1.begin }
        var following: [ExactName: SafetensorsTensor] = [:]
        for (a, b) in zip(inFileOrder, inFileOrder.dropFirst()) { following[ExactName(a.name)] = b }
        followingTensor = following
    }

    deinit { close(fd) }

    static func read(_ fd: Int32, offset: Int, count: Int, path: String) throws -> [UInt8] {
        var failed = false
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
            var done = 0
            while done < count {
                let r = pread(fd, buf.baseAddress! + done, count - done, off_t(offset + done))
                if r < 0 && errno == EINTR { continue }
                if r <= 0 { failed = true; break }
                done += r
            }
            if failed { for k in done..<count { buf[k] = 0 } }
            initialized = count
        }
        if failed {
            throw TesseraError(.io, "\(path): read failed at byte \(offset)", hint: "the file may be truncated or unreadable")
        }
        return bytes
    }

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
        var failedAt: Int? = nil
        let values = [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            let raw = UnsafeMutableRawPointer(buf.baseAddress!)
            let count = t.byteCount, offset = layout.dataStart + t.begin
            var done = 0
            while done < count {
                let r = pread(fd, raw + done, count - done, off_t(offset + done))
                if r < 0 && errno == EINTR { continue }
                if r <= 0 { failedAt = offset + done; break }
                done += r
            }
            if failedAt != nil { raw.initializeMemory(as: UInt8.self, repeating: 0, count: count) }
            initialized = n
        }
        if let failedAt {
            throw TesseraError(.io, "\(path): read failed at byte \(failedAt) (tensor '\(name)')", hint: "the file may be truncated or unreadable")
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
        // Reading a mapped page past the end of the file is a SIGBUS, not an error: check the file is still whole.
        var st = stat()
        guard fstat(fd, &st) == 0, Int(st.st_size) >= offset + t.byteCount else {
            throw TesseraError(.io, "\(path): the file ends before tensor '\(name)' does (byte \(offset + t.byteCount))",
                               hint: "the file may be truncated or unreadable")
        }
        // Pages not in the page cache would be read one fault-sized piece at a time while the mapping is populated;
        // asking for the whole range first reads it in large requests (a no-op when it is cached). The tensor after
        // it in the file is asked for too, so that its reading overlaps this one's merge.
        _ = posix_fadvise(fd, off_t(offset), off_t(t.byteCount), POSIX_FADV_WILLNEED)
        if let next = followingTensor[ExactName(name)] {
            _ = posix_fadvise(fd, off_t(layout.dataStart + next.begin), off_t(next.byteCount), POSIX_FADV_WILLNEED)
        }
        return MappedFloat32(fd: fd, offset: offset, count: t.elementCount)
        #else
        return nil
        #endif
    }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = index[ExactName(name)] else {
            throw TesseraError(.notFound, "\(path): no tensor named '\(name)'", hint: "`tessera ls \(path)` lists the tensors")
        }
        let bytes = t.byteCount == 0 ? [] : try Self.read(fd, offset: layout.dataStart + t.begin, count: t.byteCount, path: path)
        return RawTensor(dtype: t.dtype, shape: t.shape, bytes: bytes)
    }
}


/// A source that can map F32 tensors read-only instead of reading them (see `StreamingSafetensorsSource.mapFloat32`).
public protocol Float32Mapping {
    func mapFloat32(_ name: String) throws -> MappedFloat32?
}

/// F32 values mapped read-only from a file; unmapped when the last reference goes. The pages are populated when the
/// mapping is made (MAP_POPULATE), so the loops that read them take no page faults.
///
/// A mapped file that another process truncates while it is read would end the process with SIGBUS; the first
/// mapping installs a handler that says so in one line and exits with status 1 (the output's temporary file is never
/// renamed into place, so no half-written output is left under the output's name).
public final class MappedFloat32: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; the pages are only read.
    private let base: UnsafeMutableRawPointer
    private let length: Int
    public let values: UnsafeBufferPointer<Float>

    init?(fd: Int32, offset: Int, count: Int) {
        _ = MappedFloat32.busErrorHandler
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        length = offset - start + 4 * count
        let flags = MAP_SHARED | MappedFloat32.populate
        guard let p = mmap(nil, length, PROT_READ, flags, fd, off_t(start)), p != MAP_FAILED else { return nil }
        base = p
        values = UnsafeBufferPointer(start: (p + (offset - start)).assumingMemoryBound(to: Float.self), count: count)
    }

    deinit { munmap(base, length) }

    #if canImport(Glibc)
    private static let populate = Int32(MAP_POPULATE)
    #else
    private static let populate: Int32 = 0
    #endif

    private static let busErrorHandler: Void = {
        signal(SIGBUS) { _ in
            // Only async-signal-safe calls here: a static string, write and _exit.
            let message: StaticString = "tessera: an input file changed (truncated or rewritten in place) while it was being merged; nothing was written. Run the merge again.\n"
            _ = write(2, message.utf8Start, message.utf8CodeUnitCount)
            _exit(1)
        }
    }()
}
