import Foundation
import TesseraCore
import TesseraIO

/// A model with a PEFT LoRA adapter applied, as mergekit's `model: BASE+ADAPTER` reads it (mergekit loads the base,
/// applies the adapter with PEFT's `merge_and_unload` and merges the result). Each adapted weight is computed when it
/// is read, the way PEFT computes it: ΔW = (B · A) · scaling in float32 (transposed for `fan_in_fan_out` layers and
/// for embeddings), added to the weight in float32 and rounded once to the weight's dtype; scaling is
/// lora_alpha / r, or lora_alpha / √r with `use_rslora`, with `alpha_pattern` and `rank_pattern` per module.
/// Modules the adapter saves whole (`modules_to_save`) replace the base's. DoRA, LoRA biases and other PEFT
/// methods are refused: applying them as plain LoRA would give other weights.
public final class LoRAAppliedSource: TensorSource {
    struct Delta {
        var a: String
        var b: String
        var scaling: Float
        /// ΔW is (B·A)ᵀ: Conv1D layers with fan_in_fan_out, and embeddings.
        var transpose: Bool
    }

    public let base: TensorSource
    public let adapter: TensorSource
    public let sourceName: String
    public var tensorNames: [String] { base.tensorNames }
    let deltas: [String: Delta]
    /// Base name → the adapter's full replacement (modules_to_save).
    let replacements: [String: String]

    public init(base: TensorSource, adapter: TensorSource, adapterConfig: [UInt8], name: String) throws {
        self.base = base
        self.adapter = adapter
        sourceName = name
        let parsed = try LoRAAdapter(configBytes: adapterConfig, tensors: adapter, name: name)
        let baseNames = Set(base.tensorNames)
        var deltas: [String: Delta] = [:], replacements: [String: String] = [:]
        for m in parsed.modules {
            guard baseNames.contains(m.target) else {
                throw TesseraError(.notFound, "\(name): the adapter changes '\(m.target)', which the base model does not have", hint: "apply the adapter to the model it was trained on")
            }
            deltas[m.target] = Delta(a: m.aName, b: m.bName, scaling: Float(m.scaling), transpose: m.transpose)
        }
        for (target, tensor) in parsed.replacements {
            guard baseNames.contains(target) else {
                throw TesseraError(.notFound, "\(name): the adapter holds '\(tensor)', which matches no tensor of the base model", hint: "apply the adapter to the model it was trained on")
            }
            replacements[target] = tensor
        }
        self.deltas = deltas
        self.replacements = replacements
    }

    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        if let r = replacements[name], let info = adapter.tensorInfo(r), let b = base.tensorInfo(name) { return (b.dtype, info.shape) }
        return base.tensorInfo(name)
    }

    public var metadata: [(String, String)] { base.metadata }

    public func rawTensor(_ name: String) throws -> RawTensor {
        if let r = replacements[name] {
            let raw = try adapter.rawTensor(r)
            let dtype = base.tensorInfo(name)?.dtype ?? raw.dtype
            guard raw.dtype != dtype else { return raw }
            return try encode(try FloatCodec.decode(raw, name: "\(sourceName): \(r)"), shape: raw.shape, dtype: dtype, name: name)
        }
        guard let d = deltas[name] else { return try base.rawTensor(name) }
        let w = try base.rawTensor(name)
        guard w.shape.count == 2 else {
            throw TesseraError(.unsupported, "\(sourceName): LoRA on '\(name)' of shape \(w.shape) (only 2-D weights)", hint: "merge the adapter with PEFT first")
        }
        let a = try adapter.rawTensor(d.a), b = try adapter.rawTensor(d.b)
        // Linear: A [r, in], B [out, r], W [out, in]. Embedding: A [r, vocab], B [dim, r], W [vocab, dim].
        guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == b.shape[1] else {
            throw TesseraError(.shapeMismatch, "\(sourceName): LoRA factors of '\(name)' have shapes \(a.shape) and \(b.shape)", hint: "the adapter file is malformed")
        }
        let rows = b.shape[0], rank = a.shape[0], cols = a.shape[1]
        let expected = d.transpose ? [cols, rows] : [rows, cols]
        guard expected == w.shape else {
            throw TesseraError(.shapeMismatch, "\(sourceName): the LoRA update of '\(name)' is \(expected) but the weight is \(w.shape)", hint: "apply the adapter to the model it was trained on")
        }
        let product = LoRACombination.matmul(try FloatCodec.decode(b, name: d.b), try FloatCodec.decode(a, name: d.a), m: rows, k: rank, n: cols)
        var delta = [Float](repeating: 0, count: product.count)
        if d.transpose {
            for i in 0..<rows { for j in 0..<cols { delta[j * rows + i] = product[i * cols + j] * d.scaling } }
        } else {
            for k in product.indices { delta[k] = product[k] * d.scaling }
        }
        // PEFT (merge_and_unload, safe_merge off) keeps ΔW in float32 (adapter factors are upcast to float32 on load)
        // and adds it in place: the sum is rounded to the weight's dtype once.
        var values = try FloatCodec.decode(w, name: "\(sourceName): \(name)")
        for k in values.indices { values[k] += delta[k] }
        return try encode(values, shape: w.shape, dtype: w.dtype, name: name)
    }

    private func encode(_ values: [Float], shape: [Int], dtype: DType, name: String) throws -> RawTensor {
        let target = [.f32, .f16, .bf16].contains(dtype) ? dtype : .f32
        guard let t = try FloatCodec.encodeFinite(values, shape: shape, dtype: target) else {
            throw TesseraError(.invalidParameter, "\(sourceName): applying the LoRA to '\(name)' overflows \(target.rawValue)", hint: "check the adapter")
        }
        return t
    }
}
