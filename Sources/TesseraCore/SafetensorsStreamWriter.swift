import Foundation

/// Writes a safetensors file tensor by tensor, so that a merge of large checkpoints never holds the whole output in
/// memory. Tensor data goes to a temporary file as it comes; `finish` writes the header (tensors in the order they
/// came, `__metadata__` first, padded to 8 bytes as the reference library does), appends the data, and renames the
/// result into place atomically.
public final class SafetensorsStreamWriter {
    public let path: String
    private let dataPath: String
    private let data: FileHandle
    private var entries: [(name: String, dtype: DType, shape: [Int], begin: Int, end: Int)] = []
    private var offset = 0
    private var names = Set<String>()
    private var finished = false

    public init(path: String) throws {
        self.path = path
        dataPath = path + ".tessera-data-\(ProcessInfo.processInfo.processIdentifier)"
        guard FileManager.default.createFile(atPath: dataPath, contents: nil), let h = FileHandle(forWritingAtPath: dataPath) else {
            throw TesseraError(.io, "\(path): cannot create a file beside it", hint: "check that the directory exists and is writable")
        }
        data = h
    }

    deinit {
        if !finished {
            try? data.close()
            try? FileManager.default.removeItem(atPath: dataPath)
        }
    }

    public func append(_ name: String, _ tensor: RawTensor) throws {
        try SafetensorsLayout.validateName(name, file: path)
        guard names.insert(name).inserted else { throw TesseraError(.invalidParameter, "\(path): tensor '\(name)' written twice") }
        guard tensor.dtype.byteCount(elements: tensor.elementCount) == tensor.bytes.count else {
            throw TesseraError(.shapeMismatch, "tensor '\(name)': \(tensor.bytes.count) bytes do not fit \(tensor.dtype.rawValue) \(tensor.shape)")
        }
        do { try data.write(contentsOf: tensor.bytes) } catch {
            throw TesseraError(.io, "\(path): cannot write", hint: "check free disk space", underlying: error)
        }
        entries.append((name, tensor.dtype, tensor.shape, offset, offset + tensor.bytes.count))
        offset += tensor.bytes.count
    }

    public func finish(metadata: [(String, String)] = []) throws {
        try data.close()
        var pairs: [(String, JSONValue)] = []
        if !metadata.isEmpty { pairs.append(("__metadata__", .object(metadata.map { ($0.0, JSONValue.string($0.1)) }))) }
        for e in entries {
            pairs.append((e.name, .object([("dtype", .string(e.dtype.rawValue)), ("shape", .array(e.shape.map { JSONValue.int($0) })),
                                           ("data_offsets", .array([.int(e.begin), .int(e.end)]))])))
        }
        var header = Array(JSONValue.object(pairs).serialized().utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var prefix: [UInt8] = []
        var n = UInt64(header.count)
        for _ in 0..<8 { prefix.append(UInt8(n & 0xFF)); n >>= 8 }
        let tmp = path + ".tessera-tmp-\(ProcessInfo.processInfo.processIdentifier)"
        do {
            guard FileManager.default.createFile(atPath: tmp, contents: Data(prefix + header)), let out = FileHandle(forWritingAtPath: tmp),
                  let input = FileHandle(forReadingAtPath: dataPath) else {
                throw TesseraError(.io, "\(path): cannot write the output", hint: "check that the directory is writable")
            }
            try out.seekToEnd()
            while true {
                let chunk = try input.read(upToCount: 8 << 20) ?? Data()
                if chunk.isEmpty { break }
                try out.write(contentsOf: chunk)
            }
            try out.synchronize()
            try out.close()
            try input.close()
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(atPath: tmp, toPath: path)
            try? FileManager.default.removeItem(atPath: dataPath)
            finished = true
        } catch let e as TesseraError {
            try? FileManager.default.removeItem(atPath: tmp)
            throw e
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw TesseraError(.io, "\(path): cannot write the output", hint: "check free disk space", underlying: error)
        }
    }
}
