import Foundation
import TesseraCore
import TesseraIO

/// A model with a PEFT LoRA adapter applied, as mergekit's `model: BASE+ADAPTER` reads it (mergekit loads the base,
/// applies the adapter with PEFT's `merge_and_unload` and merges the result). Each adapted weight is computed when it
/// is read, the way PEFT computes it: ΔW = (B · A) · scaling in float32 (transposed for `fan_in_fan_out` layers and
/// for embeddings), rounded to the weight's dtype, then added to the weight and rounded again; scaling is
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
        guard let config = try? JSONParser.parse(adapterConfig), config.objectValue != nil else {
            throw TesseraError(.invalidParameter, "\(name): the adapter's adapter_config.json is not a JSON object", hint: "name a PEFT LoRA adapter folder")
        }
        let peftType = config["peft_type"]?.stringValue ?? "LORA"
        guard peftType == "LORA" else {
            throw TesseraError(.unsupported, "\(name): the adapter is \(peftType), not LoRA", hint: "model+adapter applies LoRA adapters only")
        }
        if config["use_dora"]?.boolValue == true {
            throw TesseraError(.unsupported, "\(name): DoRA adapters (use_dora) are not supported", hint: "merge the adapter with PEFT's merge_and_unload and name the result")
        }
        guard let alpha = config["lora_alpha"]?.doubleValue, let r = config["r"]?.doubleValue, r > 0 else {
            throw TesseraError(.invalidParameter, "\(name): adapter_config.json has no lora_alpha or r", hint: "name a PEFT LoRA adapter folder")
        }
        let rslora = config["use_rslora"]?.boolValue == true
        let fanInFanOut = config["fan_in_fan_out"]?.boolValue == true
        let alphaPattern = config["alpha_pattern"]?.objectValue ?? []
        let rankPattern = config["rank_pattern"]?.objectValue ?? []
        /// PEFT matches a pattern key to a module name as the regex `(.*\.)?KEY$`; keys here are taken literally.
        func pattern(_ pairs: [(String, JSONValue)], _ module: String) -> Double? {
            pairs.first { module == $0.0 || module.hasSuffix("." + $0.0) }?.1.doubleValue
        }
        let prefix = "base_model.model."
        let baseNames = Set(base.tensorNames)
        var deltas: [String: Delta] = [:], replacements: [String: String] = [:]
        var handled = Set<String>()
        for n in adapter.tensorNames {
            let stripped = n.hasPrefix(prefix) ? String(n.dropFirst(prefix.count)) : n
            for (aSuffix, bSuffix, embedding) in [(".lora_A.weight", ".lora_B.weight", false), (".lora_embedding_A", ".lora_embedding_B", true)]
            where stripped.hasSuffix(aSuffix) {
                let module = String(stripped.dropLast(aSuffix.count))
                let bName = String(n.dropLast(aSuffix.count)) + bSuffix
                guard adapter.tensorInfo(bName) != nil else {
                    throw TesseraError(.invalidParameter, "\(name): '\(n)' has no matching '\(bName)'", hint: "the adapter file is incomplete")
                }
                let target = module + ".weight"
                guard baseNames.contains(target) else {
                    throw TesseraError(.notFound, "\(name): the adapter changes '\(target)', which the base model does not have", hint: "apply the adapter to the model it was trained on")
                }
                let rank = Double(adapter.tensorInfo(n)?.shape.first ?? 0)
                let moduleAlpha = pattern(alphaPattern, module) ?? alpha
                let moduleRank = pattern(rankPattern, module) ?? rank
                guard moduleRank > 0 else { throw TesseraError(.invalidParameter, "\(name): '\(n)' has rank 0", hint: "the adapter file is malformed") }
                let scaling = rslora ? moduleAlpha / moduleRank.squareRoot() : moduleAlpha / moduleRank
                deltas[target] = Delta(a: n, b: bName, scaling: Float(scaling), transpose: embedding || fanInFanOut)
                handled.insert(n)
                handled.insert(bName)
            }
        }
        for n in adapter.tensorNames where !handled.contains(n) {
            let stripped = n.hasPrefix(prefix) ? String(n.dropFirst(prefix.count)) : n
            if stripped.contains("lora_magnitude_vector") {
                throw TesseraError(.unsupported, "\(name): DoRA adapters (lora_magnitude_vector) are not supported", hint: "merge the adapter with PEFT's merge_and_unload and name the result")
            }
            if stripped.contains(".lora_") {
                throw TesseraError(.unsupported, "\(name): adapter tensor '\(n)' is not a LoRA A/B factor (LoRA biases and other variants are not supported)",
                                   hint: "merge the adapter with PEFT's merge_and_unload and name the result")
            }
            // A module saved whole (modules_to_save): PEFT stores it under the module's own name.
            let target = stripped.replacingOccurrences(of: ".modules_to_save.default.", with: ".")
            guard baseNames.contains(target) else {
                throw TesseraError(.notFound, "\(name): the adapter holds '\(n)', which matches no tensor of the base model", hint: "apply the adapter to the model it was trained on")
            }
            replacements[target] = n
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
        // PEFT rounds ΔW to the weight's dtype, then adds (in float32 on the CPU) and rounds the sum.
        FloatCodec.quantize(&delta, to: w.dtype)
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
