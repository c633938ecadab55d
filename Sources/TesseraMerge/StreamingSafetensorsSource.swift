#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import TesseraCore

/// A safetensors file read with `pread`, one tensor at a time, instead of memory-mapped.
///
/// A merge touches every byte of every input once; with a mapping those pages stay in the process's resident set
/// (three 500 MB inputs would put 1.5 GB in RSS), while reads into a buffer that is freed after the tensor is merged
/// keep resident memory to the tensors in flight. Use this for merges of large checkpoints.
public final class StreamingSafetensorsSource: TensorSource, Float32Reading, ConcurrentReading, @unchecked Sendable {
    // @unchecked Sendable: the descriptor is only read with pread (no shared file offset), and the layout is immutable.
    public let path: String
    public let layout: SafetensorsLayout
    private let fd: Int32
    private let index: [String: SafetensorsTensor]

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
        var idx: [String: SafetensorsTensor] = [:]
        for t in layout.tensors { idx[t.name] = t }
        index = idx
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
    public var tensorNames: [String] { layout.tensors.map(\.name) }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { index[name].map { ($0.dtype, $0.shape) } }
    public var metadata: [(String, String)] { layout.metadata }

    /// F32 tensors read straight into float32 storage (one copy fewer than `rawTensor` + decode); nil for other dtypes.
    public func readFloat32(_ name: String) throws -> [Float]? {
        guard let t = index[name], t.dtype == .f32, t.byteCount == 4 * t.elementCount else { return nil }
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

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = index[name] else {
            throw TesseraError(.notFound, "\(path): no tensor named '\(name)'", hint: "`tessera ls \(path)` lists the tensors")
        }
        let bytes = t.byteCount == 0 ? [] : try Self.read(fd, offset: layout.dataStart + t.begin, count: t.byteCount, path: path)
        return RawTensor(dtype: t.dtype, shape: t.shape, bytes: bytes)
    }
}

/// A source that can read float32 tensors straight into float storage, skipping the byte copy `rawTensor` and a
/// decode would make. The merge uses it for every input that offers it.
public protocol Float32Reading {
    /// The tensor's values when it is stored as F32, nil for other dtypes (which go through `rawTensor`).
    func readFloat32(_ name: String) throws -> [Float]?
}

/// A source whose tensors may be read from several threads at once (the merge reads its inputs concurrently).
public protocol ConcurrentReading {}
