import Foundation
import TesseraIO

/// Writes a safetensors file tensor by tensor, so that a merge of large checkpoints never holds the whole output in
/// memory. The header comes first in the file but is known only at the end (it holds every tensor's offsets and the
/// provenance metadata), so tensor data is written after `reservedHeader` bytes left for it, and `finish` writes the
/// header there, padded with spaces to fill the space exactly (JSON allows trailing whitespace, and the reference
/// library itself pads with spaces). If the header turns out larger than reserved, the data is copied once behind it.
/// The result is renamed into place atomically.
public final class SafetensorsStreamWriter {
    public let path: String
    private let tmpPath: String
    private let data: FileHandle
    private let reservedHeader: Int
    private var entries: [(name: String, dtype: DType, shape: [Int], begin: Int, end: Int)] = []
    private var offset = 0
    private var names = Set<String>()
    private var finished = false

    /// `reserveHeader`: bytes to leave for the 8-byte length and the JSON header (see `headerEstimate`).
    public init(path: String, reserveHeader: Int = 1 << 20) throws {
        self.path = path
        tmpPath = path + ".tessera-tmp-\(ProcessInfo.processInfo.processIdentifier)"
        reservedHeader = (max(reserveHeader, 16) + 7) / 8 * 8
        guard FileManager.default.createFile(atPath: tmpPath, contents: nil), let h = FileHandle(forWritingAtPath: tmpPath) else {
            throw TesseraError(.io, "\(path): cannot create a file beside it", hint: "check that the directory exists and is writable")
        }
        data = h
        do { try data.seek(toOffset: UInt64(reservedHeader)) } catch {
            throw TesseraError(.io, "\(path): cannot write", hint: "check free disk space", underlying: error)
        }
    }

    /// A generous bound on the header of a file with these tensors and `metadataBytes` of metadata text.
    public static func headerEstimate(tensors: [(name: String, shape: [Int])], metadataBytes: Int) -> Int {
        4096 + metadataBytes + tensors.reduce(0) { $0 + 2 * $1.name.utf8.count + 96 + 21 * $1.shape.count }
    }

    deinit {
        if !finished {
            try? data.close()
            try? FileManager.default.removeItem(atPath: tmpPath)
        }
    }

    public func append(_ name: String, _ tensor: RawTensor) throws {
        guard tensor.dtype.byteCount(elements: tensor.elementCount) == tensor.bytes.count else {
            throw TesseraError(.shapeMismatch, "tensor '\(name)': \(tensor.bytes.count) bytes do not fit \(tensor.dtype.rawValue) \(tensor.shape)")
        }
        try tensor.bytes.withUnsafeBytes { try appendBytes(name, dtype: tensor.dtype, shape: tensor.shape, $0) }
    }

    /// An F32 tensor written straight from float storage (no byte copy on little-endian machines).
    public func append(_ name: String, float32 values: [Float], shape: [Int]) throws {
        guard elementCount(shape) == values.count else {
            throw TesseraError(.shapeMismatch, "tensor '\(name)': \(values.count) values do not fit shape \(shape)")
        }
        #if _endian(little)
        try values.withUnsafeBytes { try appendBytes(name, dtype: .f32, shape: shape, $0) }
        #else
        try append(name, try RawTensor(floats: values, shape: shape, dtype: .f32))
        #endif
    }

    /// An F32 tensor written from float storage the caller holds (a file mapping): no copy on little-endian machines.
    public func append(_ name: String, float32 values: UnsafeBufferPointer<Float>, shape: [Int]) throws {
        guard elementCount(shape) == values.count else {
            throw TesseraError(.shapeMismatch, "tensor '\(name)': \(values.count) values do not fit shape \(shape)")
        }
        #if _endian(little)
        try appendBytes(name, dtype: .f32, shape: shape, UnsafeRawBufferPointer(values))
        #else
        try append(name, try RawTensor(floats: Array(values), shape: shape, dtype: .f32))
        #endif
    }

    private func appendBytes(_ name: String, dtype: DType, shape: [Int], _ raw: UnsafeRawBufferPointer) throws {
        try SafetensorsLayout.validateName(name, file: path)
        guard names.insert(name).inserted else { throw TesseraError(.invalidParameter, "\(path): tensor '\(name)' written twice") }
        // Straight from the caller's storage (FileHandle.write would first copy it into a Data).
        let fd = data.fileDescriptor
        var failed: Int32? = nil
        var written = 0
        while written < raw.count {
            let n = Foundation.write(fd, raw.baseAddress! + written, raw.count - written)
            if n < 0 { if errno == EINTR { continue }; failed = errno; break }
            written += n
        }
        if let failed {
            throw TesseraError(failed == ENOSPC ? .noSpace : .io, "\(path): cannot write: \(String(cString: strerror(failed)))", hint: "check free disk space")
        }
        entries.append((name, dtype, shape, offset, offset + raw.count))
        offset += raw.count
    }

    public func finish(metadata: [(String, String)] = []) throws {
        let header = entries.map { SafetensorsHeader.Entry(name: $0.name, dtype: $0.dtype, shape: $0.shape, begin: $0.begin, end: $0.end) }
        do {
            if let fitted = SafetensorsHeader.encode(header, metadata: metadata, size: reservedHeader) {
                // The header fits the reserved space: padded with spaces to fill it exactly.
                try data.seek(toOffset: 0)
                try data.write(contentsOf: Data(fitted))
                try data.close()
            } else {
                // Rare: more header than reserved. Write a new file with the header, then the data behind it.
                try data.close()
                let second = tmpPath + "-2"
                guard FileManager.default.createFile(atPath: second, contents: Data(SafetensorsHeader.encode(header, metadata: metadata)!)),
                      let out = FileHandle(forWritingAtPath: second), let input = FileHandle(forReadingAtPath: tmpPath) else {
                    throw TesseraError(.io, "\(path): cannot write the output", hint: "check that the directory is writable")
                }
                try out.seekToEnd()
                try input.seek(toOffset: UInt64(reservedHeader))
                while true {
                    let chunk = try input.read(upToCount: 8 << 20) ?? Data()
                    if chunk.isEmpty { break }
                    try out.write(contentsOf: chunk)
                }
                try out.close()
                try input.close()
                try FileManager.default.removeItem(atPath: tmpPath)
                try FileManager.default.moveItem(atPath: second, toPath: tmpPath)
            }
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: tmpPath, toPath: path)
            finished = true
        } catch let e as TesseraError {
            try? FileManager.default.removeItem(atPath: tmpPath)
            throw e
        } catch {
            try? FileManager.default.removeItem(atPath: tmpPath)
            throw TesseraError(.io, "\(path): cannot write the output", hint: "check free disk space", underlying: error)
        }
    }

}
