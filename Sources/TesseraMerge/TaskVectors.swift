import TesseraCore
import TesseraIO
import TesseraMath

/// Task vectors (Ilharco et al. 2023): τ = θ_ft − θ_base, and checkpoints θ_base + s · Σ_i c_i τ_i built from them
/// (addition c_i = 1, negation c_i = −1, scaling s, analogies τ_a − τ_b + τ_c), tensor by tensor.
public enum TaskVectors {
    /// Streams τ = θ_ft − θ_base, one tensor at a time, in the base's order, as float32 (or `dtype`).
    public static func subtract(finetuned: TensorSource, base: TensorSource, dtype: DType = .f32,
                                sink: (_ name: String, _ tensor: RawTensor) throws -> Void) throws {
        try checkSameTensors(base, [finetuned])
        for name in base.tensorNames {
            let (b, shape) = try load(base, name)
            var f = try loadMatching(finetuned, name, shape: shape, baseName: base.sourceName)
            f.withUnsafeMutableBufferPointer { fp in
                b.withUnsafeBufferPointer { bp in Parallel.forChunks(fp.count) { _, r in for j in r { fp[j] -= bp[j] } } }
            }
            try emit(name, f, shape, dtype, sink)
        }
    }

    /// Streams θ_base + scaling · Σ_i coefficient_i · τ_i, where each τ_i is a task-vector source (for example a
    /// `TaskVectorSource`), in the base's order. The output dtype is the base's unless `dtype` is given.
    public static func apply(base: TensorSource, vectors: [(vector: TensorSource, coefficient: Double)], scaling: Double = 1,
                             dtype: DType? = nil, sink: (_ name: String, _ tensor: RawTensor) throws -> Void) throws {
        try checkSameTensors(base, vectors.map(\.vector))
        let s = Float(scaling)
        for name in base.tensorNames {
            let info = try base.requireInfo(name)
            var (out, shape) = try load(base, name)
            var sum = [Float](repeating: 0, count: out.count)
            for (v, c) in vectors {
                let tau = try loadMatching(v, name, shape: shape, baseName: base.sourceName)
                let cf = Float(c)
                sum.withUnsafeMutableBufferPointer { sp in
                    tau.withUnsafeBufferPointer { tp in Parallel.forChunks(sp.count) { _, r in for j in r { sp[j] += cf * tp[j] } } }
                }
            }
            out.withUnsafeMutableBufferPointer { op in
                sum.withUnsafeBufferPointer { sp in Parallel.forChunks(op.count) { _, r in for j in r { op[j] += s * sp[j] } } }
            }
            let outType = dtype ?? (MergeJob.isMergeable(info.dtype) ? info.dtype : .f32)
            try emit(name, out, shape, outType, sink)
        }
    }

    static func load(_ source: TensorSource, _ name: String) throws -> ([Float], [Int]) {
        let raw = try source.rawTensor(name)
        return (try FloatCodec.decode(raw, name: "\(source.sourceName): \(name)"), raw.shape)
    }

    static func loadMatching(_ source: TensorSource, _ name: String, shape: [Int], baseName: String) throws -> [Float] {
        guard let info = source.tensorInfo(name) else {
            throw TesseraError(.notFound, "tensor '\(name)' is in '\(baseName)' but missing from '\(source.sourceName)'",
                               hint: "task vectors need checkpoints of the same architecture")
        }
        guard info.shape == shape else {
            throw TesseraError(.shapeMismatch, "tensor '\(name)' has shape \(info.shape) in '\(source.sourceName)' but \(shape) in '\(baseName)'",
                               hint: "task vectors need checkpoints of the same architecture")
        }
        return try load(source, name).0
    }

    static func checkSameTensors(_ base: TensorSource, _ others: [TensorSource]) throws {
        let names = Set(base.tensorNames)
        for o in others {
            if let missing = base.tensorNames.first(where: { o.tensorInfo($0) == nil }) {
                throw TesseraError(.notFound, "tensor '\(missing)' is in '\(base.sourceName)' but missing from '\(o.sourceName)'",
                                   hint: "task vectors need checkpoints of the same architecture")
            }
            if let extra = o.tensorNames.first(where: { !names.contains($0) }) {
                throw TesseraError(.notFound, "tensor '\(extra)' is in '\(o.sourceName)' but missing from '\(base.sourceName)'",
                                   hint: "task vectors need checkpoints of the same architecture")
            }
        }
    }

    static func emit(_ name: String, _ values: [Float], _ shape: [Int], _ dtype: DType,
                     _ sink: (String, RawTensor) throws -> Void) throws {
        if let k = FloatCodec.firstNonFinite(values) {
            throw TesseraError(.invalidParameter, "task vector arithmetic produced \(values[k]) in tensor '\(name)' at index \(k)",
                               hint: "check the inputs for NaN or infinite values")
        }
        try sink(name, try FloatCodec.encode(values, shape: shape, dtype: dtype))
    }
}

/// τ = θ_ft − θ_base as a lazy tensor source: each tensor is computed when read, so task vectors compose with
/// `TaskVectors.apply` and the merge driver without materialising a model.
public final class TaskVectorSource: TensorSource {
    public let finetuned: TensorSource
    public let base: TensorSource
    public let sourceName: String

    public init(finetuned: TensorSource, base: TensorSource, name: String? = nil) throws {
        try TaskVectors.checkSameTensors(base, [finetuned])
        self.finetuned = finetuned
        self.base = base
        self.sourceName = name ?? "τ(\(finetuned.sourceName) − \(base.sourceName))"
    }

    public var tensorNames: [String] { base.tensorNames }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { base.tensorInfo(name).map { (.f32, $0.shape) } }
    public var metadata: [(String, String)] { [] }

    public func rawTensor(_ name: String) throws -> RawTensor {
        let (b, shape) = try TaskVectors.load(base, name)
        var f = try TaskVectors.loadMatching(finetuned, name, shape: shape, baseName: base.sourceName)
        for j in f.indices { f[j] -= b[j] }
        return try FloatCodec.encode(f, shape: shape, dtype: .f32)
    }
}
