import Foundation
import TesseraCore
import TesseraIO

/// A PEFT LoRA adapter to run unmerged: its parsed config and modules, the source of its factors, and its name for
/// messages (the folder as the user named it).
public struct LoRAAdapterInput {
    public var adapter: LoRAAdapter
    public var tensors: TensorSource
    public var name: String

    public init(adapter: LoRAAdapter, tensors: TensorSource, name: String) {
        self.adapter = adapter
        self.tensors = tensors
        self.name = name
    }
}

/// Attaches LoRA adapters to a loaded model (Llama, GPT-2, GPT-Neo, BERT) without merging: each adapter module is
/// matched to the projection whose slice was loaded from that module's weight, and the projection gets a
/// `LoRAProjectionAdapter` adding `s · B · (A · x)` to that slice's rows.
///
/// Module names are PEFT's (`base_model.model.` stripped by `LoRAAdapter`), i.e. the Hugging Face names of the
/// base's weights; for a Llama loaded from a GGUF they are translated through `LlamaTensorNames`, and B's rows of
/// q_proj and k_proj are put in llama.cpp's RoPE row order, as the GGUF's own Q/K rows are. `transformer.` (GPT-2,
/// GPT-Neo) and `bert.` (BERT task models) prefixes match with or without.
///
/// Several adapters add their deltas (as PEFT does with several active adapters). Everything is checked before any
/// projection is changed: a module the engine does not run (an embedding LoRA, a tied or absent `lm_head`, a layer of
/// another model), saved whole (`modules_to_save`), or with factors whose shapes do not fit its layer is refused with
/// one line naming it.
public enum LoRAAdapterAttachment {
    public struct Summary: Sendable, Equatable {
        /// Adapter modules attached (over all adapters).
        public var modules: Int
        /// Projections that got an adapter.
        public var projections: Int

        public init(modules: Int, projections: Int) {
            self.modules = modules
            self.projections = projections
        }
    }

    /// A range of a projection's output rows loaded from one checkpoint tensor.
    struct Target {
        let projection: Projection
        let rows: Range<Int>
        /// For a GGUF Llama's Q and K: the head count whose rows llama.cpp permuted.
        let ggufRoPEHeads: Int?
    }

    /// Every projection of `model` an adapter can target (the output head only when it is not tied to the embedding:
    /// a tied head's tensor is the embedding, which an adapter on it would mean differently).
    public static func projections(of model: AnyObject) throws -> [Projection] {
        if let llama = model as? LlamaModel {
            return llama.layers.flatMap { [$0.attention.qkv, $0.attention.output, $0.mlp.gateUp, $0.mlp.down] }
                + (llama.config.tiedEmbeddings ? [] : [llama.head])
        }
        let layers: [LayerNormDecoderLayer]
        if let gpt2 = model as? GPT2Model {
            layers = gpt2.layers
        } else if let neo = model as? GPTNeoModel {
            layers = neo.layers
        } else if let bert = model as? BERTModel {
            return bert.layers.flatMap { [$0.attention.qkv, $0.attention.output, $0.mlp.up, $0.mlp.down] }
        } else {
            throw TesseraError(.unsupported, "LoRA adapters run on Llama, GPT-2, GPT-Neo and BERT models, not on \(type(of: model))",
                               hint: "merge the adapter into its base first (PEFT's merge_and_unload) and evaluate the result")
        }
        return layers.flatMap { [$0.attention.qkv, $0.attention.output, $0.mlp.up, $0.mlp.down] }
    }

    /// Checkpoint tensor name → the rows loaded from it, with the other spellings a PEFT module may use.
    static func targets(of model: AnyObject) throws -> [String: Target] {
        var table: [String: Target] = [:]
        for p in try projections(of: model) {
            for (tensor, rows) in p.tensorRows { table[tensor] = Target(projection: p, rows: rows, ggufRoPEHeads: nil) }
        }
        if let llama = model as? LlamaModel, table.keys.contains(where: { $0.hasPrefix("blk.") }) {
            // GGUF names; adapters name the Hugging Face ones.
            let gguf = LlamaTensorNames(convention: .gguf), hf = LlamaTensorNames(convention: .huggingFace)
            var aliased: [String: Target] = [:]
            for i in 0..<llama.config.layers {
                for tensor in LlamaTensorNames.LayerTensor.allCases {
                    guard let t = table[gguf.name(tensor, layer: i)] else { continue }
                    let heads = tensor == .query ? llama.config.heads : tensor == .key ? llama.config.kvHeads : nil
                    aliased[hf.name(tensor, layer: i)] = Target(projection: t.projection, rows: t.rows, ggufRoPEHeads: heads)
                }
            }
            if let head = table[gguf.output] { aliased[hf.output] = head }
            table = aliased
        }
        for (name, target) in table {
            for prefix in ["transformer.", "bert."] {
                let other = name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : prefix + name
                if table[other] == nil { table[other] = target }
            }
        }
        return table
    }

    /// One adapter module resolved onto a projection of the model: which input it came from, its PEFT module name,
    /// and its factors as the projection runs them (B's rows in the projection's order).
    public struct ResolvedPart {
        /// Index into the `inputs` given to `resolve`.
        public var input: Int
        /// The PEFT module name (`model.layers.0.self_attn.q_proj`).
        public var module: String
        public var part: LoRAProjectionAdapter.Part
    }

    /// Every adapter module of `inputs` matched to its projection of `model`, read and checked (shapes, finite
    /// values), grouped by projection in the model's order of first use. Throws on the first module that does not fit;
    /// changes nothing.
    public static func resolve(_ inputs: [LoRAAdapterInput], on model: AnyObject) throws -> [(projection: Projection, parts: [ResolvedPart])] {
        let table = try targets(of: model)
        var parts: [ObjectIdentifier: (projection: Projection, parts: [ResolvedPart])] = [:]
        var order: [ObjectIdentifier] = []
        for (index, input) in inputs.enumerated() {
            let name = input.name, adapter = input.adapter
            if let r = adapter.replacements.first {
                throw TesseraError(.unsupported, "\(name): the adapter saves '\(r.tensor)' whole (modules_to_save), which the engine does not run unmerged",
                                   hint: "merge the adapter into its base first (PEFT's merge_and_unload) and evaluate the result")
            }
            if let m = adapter.modules.first(where: \.isEmbedding) {
                throw TesseraError(.unsupported, "\(name): '\(m.name)' is an embedding LoRA, which the engine does not run unmerged",
                                   hint: "merge the adapter into its base first (PEFT's merge_and_unload) and evaluate the result")
            }
            let unmatched = adapter.modules.filter { table[$0.target] == nil }
            if let first = unmatched.first {
                let more = unmatched.count > 1 ? " (and \(unmatched.count - 1) more of its \(adapter.modules.count) modules)" : ""
                let base = adapter.config.baseModel.map { " (it names base model '\($0)')" } ?? ""
                throw TesseraError(.notFound, "\(name): module '\(first.name)'\(more) matches no linear layer the engine runs in this model",
                                   hint: "evaluate the adapter on the model it was made for\(base); an lm_head LoRA on a tied head must be merged into its base first")
            }
            guard !adapter.modules.isEmpty else {
                throw TesseraError(.invalidParameter, "\(name): the adapter has no LoRA modules", hint: "name a PEFT LoRA adapter folder")
            }
            for m in adapter.modules {
                guard let target = table[m.target] else { continue }
                let projection = target.projection
                guard m.inFeatures == projection.inputs, m.outFeatures == target.rows.count else {
                    throw TesseraError(.shapeMismatch,
                                       "\(name): the LoRA factors of '\(m.name)' are A [\(m.rank), \(m.inFeatures)] and B [\(m.outFeatures), \(m.rank)], but that layer maps \(projection.inputs) inputs to \(target.rows.count) outputs",
                                       hint: "the adapter was made for another model")
                }
                let (aCount, o1) = m.rank.multipliedReportingOverflow(by: m.inFeatures)
                let (bCount, o2) = m.rank.multipliedReportingOverflow(by: m.outFeatures)
                let a = try input.tensors.floats(m.aName), b = try input.tensors.floats(m.bName)
                guard !o1, !o2, a.count == aCount, b.count == bCount else {
                    throw TesseraError(.shapeMismatch, "\(name): the LoRA factors of '\(m.name)' do not hold the values their shapes declare",
                                       hint: "the adapter file is malformed")
                }
                guard a.allSatisfy(\.isFinite), b.allSatisfy(\.isFinite) else {
                    throw TesseraError(.invalidParameter, "\(name): the LoRA factors of '\(m.name)' hold NaN or infinite values",
                                       hint: "the adapter is corrupt (or its training diverged)")
                }
                let rowsB = try target.ggufRoPEHeads.map { try ggufRowOrder(b, rows: m.outFeatures, cols: m.rank, heads: $0, module: m.name, adapter: name) } ?? b
                let part = LoRAProjectionAdapter.Part(label: "\(name): \(m.name)", rows: target.rows, rank: m.rank, a: a, b: rowsB,
                                                      scaling: Float(m.scaling))
                let key = ObjectIdentifier(projection)
                if parts[key] == nil { order.append(key); parts[key] = (projection, []) }
                parts[key]?.parts.append(ResolvedPart(input: index, module: m.name, part: part))
            }
        }
        return order.compactMap { parts[$0] }
    }

    /// Attaches `inputs` to `model` (replacing any adapters it had). Throws, changing nothing, if any module does not
    /// fit.
    @discardableResult
    public static func attach(_ inputs: [LoRAAdapterInput], to model: AnyObject) throws -> Summary {
        let resolved = try resolve(inputs, on: model)
        let adapters = try resolved.map { entry in
            (entry.projection, try LoRAProjectionAdapter(inputs: entry.projection.inputs, outputs: entry.projection.outputs,
                                                         parts: entry.parts.map(\.part), name: entry.projection.name))
        }
        try detach(from: model)
        for (p, adapter) in adapters { p.adapter = adapter }
        return Summary(modules: resolved.reduce(0) { $0 + $1.parts.count }, projections: adapters.count)
    }

    /// Removes every adapter from `model`'s projections.
    public static func detach(from model: AnyObject) throws {
        for p in try projections(of: model) { p.adapter = nil }
        if let llama = model as? LlamaModel { llama.head.adapter = nil }
    }

    /// B's rows (Hugging Face order) in a GGUF's Q/K row order: within each head, GGUF row 2i+h holds HF row
    /// h·(headDim/2)+i (see `GGUFImport.unpermuteRoPERows`).
    static func ggufRowOrder(_ b: [Float], rows: Int, cols: Int, heads: Int, module: String, adapter: String) throws -> [Float] {
        guard heads > 0, rows % heads == 0, (rows / heads) % 2 == 0 else {
            throw TesseraError(.shapeMismatch, "\(adapter): '\(module)' has \(rows) output rows, not \(heads) heads of an even size",
                               hint: "the adapter was made for another model")
        }
        let headDim = rows / heads, half = headDim / 2
        var out = [Float](repeating: 0, count: b.count)
        for head in 0..<heads {
            for i in 0..<half {
                for h in 0..<2 {
                    let gguf = (head * headDim + 2 * i + h) * cols, hf = (head * headDim + h * half + i) * cols
                    for j in 0..<cols { out[gguf + j] = b[hf + j] }
                }
            }
        }
        return out
    }
}

extension LoRAAdapterInput {
    /// The adapter without the tensors it saves whole (`modules_to_save`) that equal the base's own: replacing a tensor
    /// by an identical one changes nothing, and mergekit's extract-lora saves embeddings and norms whole whether or not
    /// the fine-tune changed them. Replacements that differ stay (and `attach` refuses them).
    public func droppingUnchangedReplacements(base: TensorSource) throws -> LoRAAdapterInput {
        var copy = self
        copy.adapter.replacements = try adapter.replacements.filter { r in
            guard let b = base.tensorInfo(r.target), let t = tensors.tensorInfo(r.tensor), b.dtype == t.dtype, b.shape == t.shape else {
                return true
            }
            return try base.rawTensor(r.target).bytes != tensors.rawTensor(r.tensor).bytes
        }
        return copy
    }
}
