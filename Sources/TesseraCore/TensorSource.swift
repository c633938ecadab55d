import TesseraIO
/// Anything that serves named tensors: a safetensors file, a GGUF file, a checkpoint read from the object store at
/// a revision (`REV:path`), a merge in progress. Merge methods and the engine read weights only through this, so
/// they work the same on a checkout, on history and on files.
public protocol TensorSource: AnyObject {
    /// A name for messages ("model.safetensors", "HEAD~1:model.safetensors").
    var sourceName: String { get }
    /// Tensor names in the source's own order.
    var tensorNames: [String] { get }
    /// dtype and shape of a tensor, or nil if there is no such tensor.
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])?
    /// The tensor's bytes in its stored dtype.
    func rawTensor(_ name: String) throws -> RawTensor
    /// String metadata (safetensors `__metadata__`, GGUF key/values rendered as text).
    var metadata: [(String, String)] { get }
    /// Whether `rawTensor` (and any faster read the source offers) may run on several threads at once, for
    /// different tensors or the same one. A merge then reads its inputs concurrently. Default: false.
    var allowsConcurrentReads: Bool { get }
}

/// A source that can read float32 tensors straight into float storage, skipping the byte copy `rawTensor` and a
/// decode would make. The merge uses it for every input that offers it.
public protocol Float32Reading {
    /// The tensor's values when it is stored as F32, nil for other dtypes (which go through `rawTensor`).
    func readFloat32(_ name: String) throws -> [Float]?
}

/// A source whose tensors may be stored as deltas against other stored values (a checkpoint in the object store: a
/// fine-tune committed after its base is stored against the base's tensors). A reader that already holds one of those
/// values lends it, and the tensor is decoded against it instead of against a second decode of the same object: a
/// merge of two fine-tunes with their base reads each base tensor once instead of three times.
public protocol DeltaBaseSharing: Float32Reading {
    /// The id of the object holding the tensor's value, and the ids of the objects its decode needs (its delta base
    /// and that base's own, nearest first); nil when the tensor is not stored that way or not known.
    func storedObject(_ name: String) -> (id: String, bases: [String])?
    /// `readFloat32`, decoding against `lent` (object id → the raw bytes of that object's value, kept alive and
    /// unchanged by the caller for the call) wherever the tensor's decode needs one of them.
    func readFloat32(_ name: String, lending lent: [String: UnsafeRawBufferPointer]) throws -> [Float]?
}

extension TensorSource {
    public var allowsConcurrentReads: Bool { false }

    /// The tensor as float32 values (F32/F16/BF16 and quantised types the source knows how to dequantise).
    public func floats(_ name: String) throws -> [Float] { try rawTensor(name).floats(name: "\(sourceName): \(name)") }

    public func requireInfo(_ name: String) throws -> (dtype: DType, shape: [Int]) {
        guard let i = tensorInfo(name) else {
            throw TesseraError(.notFound, "\(sourceName): no tensor named '\(name)'", hint: "`tessera ls` lists the tensors")
        }
        return i
    }
}

extension SafetensorsFile: TensorSource {
    public var sourceName: String { path }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        info(name).map { ($0.dtype, $0.shape) }
    }
    public func rawTensor(_ name: String) throws -> RawTensor { try tensor(name) }
    public var metadata: [(String, String)] { layout.metadata }
}
