import Foundation
import TesseraCore
import TesseraIO
import TesseraMath

/// The best rank-r LoRA adapter of a fine-tune, as mergekit 0.1.5's `mergekit-extract-lora` computes it (its default
/// options): for every linear weight, τ = finetuned − base (in the weights' dtype), the SVD of τ in float32, and with
/// r = min(max rank, min(d_out, d_in)): A = √Σ[:r]·Vᵀ[:r], B = U[:, :r]·√Σ[:r] (the scale split evenly), in the
/// weights' dtype, lora_alpha = r so that scaling is 1. Embeddings, the output head and every other weight (norms)
/// are saved whole from the fine-tune in `modules_to_save` (mergekit without --embed-lora). A weight is linear when
/// it is a 2-D `.weight` that is not an embedding or head; GPT-2's Conv1D weights count as linear here too (mergekit
/// saves them whole; Tessera decomposes them with `fan_in_fan_out`).
public enum LoRAExtraction {
    /// Module names (the last component) mergekit treats as embeddings or output heads.
    static let wholeModules: Set<String> = ["embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out", "word_embeddings",
                                            "position_embeddings", "token_type_embeddings", "shared"]

    public static func extract(base: TensorSource, finetuned: TensorSource, maxRank: Int, baseName: String) throws -> AdapterOutput {
        guard maxRank >= 1 else {
            throw TesseraError(.invalidParameter, "the rank must be at least 1 (got \(maxRank))", hint: "e.g. --rank 16")
        }
        var tensors: [(String, [Float], [Int])] = []
        var outputs: [(name: String, raw: RawTensor)] = []
        var ranks: [(module: String, rank: Int)] = []
        var saved: [String] = []
        var targets = Set<String>()
        let names = finetuned.tensorNames
        let decomposed = Set(names.filter { isLinear($0, finetuned) }.map { String($0.dropLast(".weight".count)) })
        for name in names {
            guard let info = finetuned.tensorInfo(name) else { continue }
            guard let b = base.tensorInfo(name) else {
                throw TesseraError(.notFound, "the fine-tune has '\(name)', which the base model does not have", hint: "extract from the model the fine-tune started from")
            }
            guard b.shape == info.shape else {
                throw TesseraError(.shapeMismatch, "'\(name)' is \(info.shape) in the fine-tune but \(b.shape) in the base", hint: "extract from the model the fine-tune started from")
            }
            let module = moduleName(name)
            if decomposed.contains(module) && name.hasSuffix(".bias") {
                // PEFT cannot carry a bias change of a LoRA layer without lora_bias; mergekit writes it as lora_B.bias.
                guard try finetuned.rawTensor(name).bytes == base.rawTensor(name).bytes else {
                    throw TesseraError(.unsupported, "'\(name)' differs from the base: a bias change is not a LoRA (PEFT's lora_bias is not supported)",
                                       hint: "extract from a fine-tune that kept the biases frozen")
                }
                continue
            }
            guard isLinear(name, finetuned) else {
                // Saved whole, from the fine-tune.
                let key = module.split(separator: ".").last.map(String.init) ?? module
                if !saved.contains(key) { saved.append(key) }
                outputs.append((LoRAAdapter.peftPrefix + name, try finetuned.rawTensor(name)))
                continue
            }
            guard info.dtype.isFloatingPoint else {
                throw TesseraError(.unsupported, "'\(name)' is \(info.dtype.rawValue): only floating-point weights are decomposed", hint: "extract from a float checkpoint")
            }
            let dOut = info.shape[0], dIn = info.shape[1]
            let ft = try FloatCodec.decode(try finetuned.rawTensor(name), name: name)
            let bs = try FloatCodec.decode(try base.rawTensor(name), name: name)
            guard ft.count == dOut * dIn, bs.count == ft.count else {
                throw TesseraError(.shapeMismatch, "'\(name)' does not hold \(dOut) × \(dIn) values", hint: "the checkpoint is malformed")
            }
            var tau = [Float](repeating: 0, count: ft.count)
            for k in tau.indices { tau[k] = ft[k] - bs[k] }
            FloatCodec.quantize(&tau, to: info.dtype)  // mergekit subtracts in the weights' dtype
            let (a, bFactor, r) = try decompose(tau, outFeatures: dOut, inFeatures: dIn, maxRank: maxRank, name: name)
            var aq = a, bq = bFactor
            FloatCodec.quantize(&aq, to: info.dtype)
            FloatCodec.quantize(&bq, to: info.dtype)
            tensors.append((LoRAAdapter.peftPrefix + module + ".lora_A.weight", aq, [r, dIn]))
            tensors.append((LoRAAdapter.peftPrefix + module + ".lora_B.weight", bq, [dOut, r]))
            ranks.append((module, r))
            targets.insert(module.split(separator: ".").last.map(String.init) ?? module)
        }
        let maxReal = ranks.map(\.rank).max() ?? maxRank
        let different = ranks.filter { $0.rank != maxReal }.map { ($0.module, JSONValue.int($0.rank)) }
        let config: JSONValue = .object([
            ("base_model_name_or_path", .string(baseName)),
            ("peft_type", .string("LORA")),
            ("use_rslora", .bool(false)),
            ("target_modules", .array(targets.sorted().map { .string($0) })),
            ("modules_to_save", .array(saved.map { .string($0) })),
            ("task_type", .string("CAUSAL_LM")),
            ("r", .int(maxReal)),
            ("lora_alpha", .int(maxReal)),
            ("rank_pattern", .object(different)),
            ("alpha_pattern", .object(different)),
            ("lora_dropout", .double(0)),
            ("fan_in_fan_out", .bool(false)),
            ("inference_mode", .bool(true)),
        ])
        var out = AdapterOutput(config: config, tensors: tensors, rank: maxReal)
        out.wholeTensors = outputs
        out.factorDType = names.compactMap { isLinear($0, finetuned) ? finetuned.tensorInfo($0)?.dtype : nil }.first ?? .f32
        return out
    }

    /// The module a tensor belongs to ("model.layers.0.self_attn.q_proj" for "...q_proj.weight").
    static func moduleName(_ tensor: String) -> String {
        for suffix in [".weight", ".bias"] where tensor.hasSuffix(suffix) { return String(tensor.dropLast(suffix.count)) }
        return tensor
    }

    static func isLinear(_ name: String, _ source: TensorSource) -> Bool {
        guard name.hasSuffix(".weight"), let info = source.tensorInfo(name), info.shape.count == 2, info.shape.allSatisfy({ $0 > 0 }) else { return false }
        let last = moduleName(name).split(separator: ".").last.map(String.init) ?? ""
        return !wholeModules.contains(last)
    }

    /// τ [d_out, d_in] → A [r, d_in], B [d_out, r] with the singular values split evenly.
    static func decompose(_ tau: [Float], outFeatures m: Int, inFeatures n: Int, maxRank: Int, name: String) throws -> (a: [Float], b: [Float], rank: Int) {
        let k = min(m, n)
        let r = min(maxRank, k)
        guard let (s, u, vt) = Linalg.svd(tau, m: m, n: n) else {
            throw TesseraError(.invalidParameter, "the SVD of '\(name)'s difference did not converge", hint: "check the checkpoints for NaN or infinite values")
        }
        var a = [Float](repeating: 0, count: r * n), b = [Float](repeating: 0, count: m * r)
        for i in 0..<r {
            let root = max(s[i], 0).squareRoot()
            for j in 0..<n { a[i * n + j] = root * vt[i * n + j] }
            for o in 0..<m { b[o * r + i] = u[o * k + i] * root }
        }
        return (a, b, r)
    }
}
