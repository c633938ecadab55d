import Foundation
import TesseraCore
import TesseraIO

/// The output vocabulary of a merge whose inputs' tokenizers differ, and how each input's embedding rows map onto it,
/// as mergekit 0.1.5 builds them (`tokenizer/build.py`, `tokenizer/embed.py`):
/// - the tokenizer base is `base_model`, else the first input; its tokenizer is stripped of tokens whose ids are
///   past its config's `vocab_size`;
/// - `base`: the stripped base's vocabulary; a model: that model's whole vocabulary; `union`: the stripped base's,
///   then every input's tokens the base lacks (ids below the input's `vocab_size`), first the ordinary ones, then the
///   added ones (an input's tokens in id order, inputs in the config's order; mergekit's order for those new
///   ordinary tokens is a hash table's, which changes from run to run);
/// - `tokens:` keys missing from it are appended as plain added tokens, in the config's order;
/// - each input's permutation: output id → the input's row for that token, or -1 when it lacks it (an input without
///   a tokenizer is taken to have the base's);
/// - `pad_to_multiple_of` rounds the row count up.
public struct VocabularyMerge: Sendable {
    public enum Source: Sendable, Equatable {
        case base, union, model(String)
        public init(_ text: String) { self = text == "base" ? .base : text == "union" ? .union : .model(text) }
    }

    /// Output tokens by id.
    public let tokens: [String]
    /// Output rows: the vocabulary's size, padded.
    public let rows: Int
    /// Input → for each output id, the input's row for that token or -1.
    let permutations: [String: [Int]]
    /// Input → its tokenizer's token ids (the base's stripped), for `model_token` sources given by token.
    let originalVocabularies: [String: [String: Int]]
    /// `tokens:` by token.
    let overrides: [String: MergeConfig.TokenEmbedding]
    /// The output tokenizer.json.
    public let tokenizerJSON: JSONValue

    /// Tensors whose rows are tokens (axis 0), as mergekit's Llama, Mistral and GPT-2 architectures mark them.
    public static let vocabularyTensors: Set<String> = ["model.embed_tokens.weight", "lm_head.weight", "transformer.wte.weight", "wte.weight"]
    /// Token-indexed tensors of other architectures, which this does not remap.
    public static func isOtherVocabularyTensor(_ name: String) -> Bool {
        name.hasSuffix("word_embeddings.weight") || name.hasPrefix("embed_out.") || name.hasSuffix(".embed_in.weight")
    }

    /// - `inputs`: the merged models in mergekit's `referenced_models` roles (the config's order here), each with its
    ///   tokenizer (nil: none, the base's is assumed) and its config's `vocab_size` (nil: its tokenizer's size).
    public init(source: Source, baseModel: String?, inputs: [(name: String, vocabulary: TokenizerVocabulary?, vocabSize: Int?)],
                sourceVocabulary: TokenizerVocabulary?, tokens: [MergeConfig.TokenEmbedding], padToMultipleOf: Int?, file: String) throws {
        guard let first = inputs.first else { throw TesseraError(.usage, "\(file): no models to merge", hint: "list the models") }
        let baseName = baseModel ?? first.name
        guard let baseInput = inputs.first(where: { $0.name == baseName }), let rawBase = baseInput.vocabulary else {
            throw TesseraError(.notFound, "\(file): the tokenizer base '\(baseName)' has no tokenizer.json",
                               hint: "merging different vocabularies starts from the base model's tokenizer (base_model, else the first model)")
        }
        let base = try rawBase.stripped(vocabSize: baseInput.vocabSize ?? rawBase.count, name: baseName)
        var vocabularies: [String: TokenizerVocabulary] = [:]
        for input in inputs { vocabularies[input.name] = input.name == baseName ? base : input.vocabulary }

        // The output tokenizer: its JSON and its tokens by id.
        var output: TokenizerVocabulary
        var appended: [(id: Int, entry: JSONValue)] = []
        var present: Set<String>
        switch source {
        case .base: output = base
        case .model(let name):
            guard let v = sourceVocabulary else {
                throw TesseraError(.notFound, "\(file): tokenizer_source '\(name)' has no tokenizer.json", hint: "name a model folder with a tokenizer.json")
            }
            output = v
        case .union: output = base
        }
        present = Set(output.ids.keys)
        var nextID = (output.ids.values.max() ?? -1) + 1
        func append(_ token: String, entry: JSONValue) {
            guard !present.contains(token) else { return }
            present.insert(token)
            appended.append((nextID, entry))
            nextID += 1
        }
        if source == .union {
            // Ordinary tokens first (those some input adds as an added token go with the added ones), then added ones.
            var addedAnywhere = Set<String>()
            for input in inputs {
                guard let v = vocabularies[input.name] else { continue }
                let size = input.vocabSize ?? v.count
                for a in v.added where a.id < size { addedAnywhere.insert(a.content) }
            }
            for input in inputs {
                guard let v = vocabularies[input.name] else { continue }
                let size = input.vocabSize ?? v.count
                for token in v.tokensByID where (v.ids[token] ?? size) < size && !addedAnywhere.contains(token) {
                    append(token, entry: TokenizerVocabulary.plainAddedEntry(token))
                }
            }
            for input in inputs {
                guard let v = vocabularies[input.name] else { continue }
                let size = input.vocabSize ?? v.count
                for a in v.added where a.id < size { append(a.content, entry: a.entry) }
            }
        }
        for t in tokens { append(t.token, entry: TokenizerVocabulary.plainAddedEntry(t.token)) }
        let json = output.appending(appended)
        output = try TokenizerVocabulary(tokenizerJSON: Array(json.serialized().utf8), name: "\(file): the output tokenizer")
        tokenizerJSON = json

        let byID = output.tokensByID
        guard byID.enumerated().allSatisfy({ output.ids[$0.element] == $0.offset }) else {
            throw TesseraError(.unsupported, "\(file): the output tokenizer's ids are not 0 to \(byID.count - 1) without gaps",
                               hint: "the tokenizer source's tokenizer.json skips or repeats ids; mergekit would leave rows unset")
        }
        self.tokens = byID
        var rows = byID.count
        if let pad = padToMultipleOf, rows % pad != 0 { rows = (rows / pad + 1) * pad }
        self.rows = rows

        var permutations: [String: [Int]] = [:]
        var originals: [String: [String: Int]] = [:]
        for input in inputs {
            let v = vocabularies[input.name] ?? base
            let size = input.vocabSize ?? v.count
            var p = [Int](repeating: -1, count: byID.count)
            for (id, token) in byID.enumerated() {
                guard let orig = v.ids[token] else { continue }
                guard orig < size else {
                    throw TesseraError(.unsupported, "\(file): token '\(token)' of '\(input.name)' has id \(orig), past its vocab_size \(size)",
                                       hint: "mergekit fails on such a token too; set the model's vocab_size to its tokenizer's size")
                }
                p[id] = orig
            }
            permutations[input.name] = p
            if vocabularies[input.name] != nil { originals[input.name] = v.ids }
        }
        self.permutations = permutations
        originalVocabularies = originals
        var overrides: [String: MergeConfig.TokenEmbedding] = [:]
        for t in tokens { overrides[t.token] = t }
        self.overrides = overrides
    }

    /// Whether the merge changes nothing: every input's rows already are the output's, in order, with no override.
    public func isIdentity(rows inputRows: [String: Int]) -> Bool {
        guard overrides.isEmpty else { return false }
        for (name, p) in permutations {
            guard inputRows[name] == rows, p.count == rows, p.enumerated().allSatisfy({ $0.offset == $0.element }) else { return false }
        }
        return true
    }

    /// The plan with each input source wrapped so that its vocabulary tensors come out permuted onto the output
    /// vocabulary (one remapper per plan: the rows a model lacks depend on the plan's other models).
    public func remapping(_ plan: MergePlan) -> MergePlan {
        // mergekit's inputs of a tensor: the models in order, then the base when it is not one of them.
        var members: [MergeInputModel] = []
        for m in plan.models where !members.contains(where: { $0.source === m.source }) { members.append(m) }
        if let b = plan.base, !members.contains(where: { $0.source === b.source }) { members.append(b) }
        let remapper = VocabularyRemapper(merge: self, members: members.map { ($0.name, $0.source) }, base: plan.base?.name, dtype: plan.dtype)
        var wrapped: [ObjectIdentifier: VocabularyRemappedSource] = [:]
        func wrap(_ m: MergeInputModel) -> MergeInputModel {
            var out = m
            let id = ObjectIdentifier(m.source)
            let w = wrapped[id] ?? VocabularyRemappedSource(m.source, name: members.first { $0.source === m.source }?.name ?? m.name, remapper: remapper)
            wrapped[id] = w
            out.source = w
            return out
        }
        var out = plan
        out.models = plan.models.map(wrap)
        out.base = plan.base.map(wrap)
        return out
    }
}

/// Permutes the vocabulary tensors of a plan's inputs onto the output vocabulary, one tensor name at a time: all
/// inputs' rows of that tensor are needed at once (a row an input lacks is another input's, or their average), so
/// the permuted tensors of the current name are kept until another name is asked for.
final class VocabularyRemapper: @unchecked Sendable {
    // @unchecked Sendable: the cache is only touched under `lock`.
    let merge: VocabularyMerge
    let members: [(name: String, source: TensorSource)]
    let base: String?
    let dtype: DType?
    private let lock = NSLock()
    private var cachedName: String?
    private var cached: [String: [Float]] = [:]

    init(merge: VocabularyMerge, members: [(name: String, source: TensorSource)], base: String?, dtype: DType?) {
        self.merge = merge
        self.members = members
        self.base = base
        self.dtype = dtype
    }

    /// The dtype the permuted tensor is held in: the merge dtype, else the inputs' stored dtypes promoted.
    func computeDType(_ name: String) -> DType {
        if let dtype { return dtype }
        var seen: [DType] = []
        for m in members { if let d = m.source.tensorInfo(name)?.dtype, !seen.contains(d) { seen.append(d) } }
        guard seen.count == 1, let d = seen.first, [.f32, .f16, .bf16].contains(d) else { return .f32 }
        return d
    }

    func shape(_ name: String, inner: [Int]) -> [Int] { [merge.rows] + inner.dropFirst() }

    func values(_ name: String, model: String) throws -> [Float] {
        lock.lock()
        defer { lock.unlock() }
        if cachedName != name {
            cached = [:]
            cachedName = nil
            cached = try permute(name)
            cachedName = name
        }
        guard let v = cached[model] else {
            throw TesseraError(.notFound, "tensor '\(name)' of '\(model)' is not part of the vocabulary merge")
        }
        return v
    }

    private func permute(_ name: String) throws -> [String: [Float]] {
        let dtype = computeDType(name)
        let round = TorchRounding(dtype)
        var tensors: [String: (values: [Float], rows: Int)] = [:]
        var order: [String] = []
        var width = -1
        for m in members where m.source.tensorInfo(name) != nil && tensors[m.name] == nil {
            let info = try m.source.requireInfo(name)
            guard info.shape.count == 2, MergeJob.isMergeable(info.dtype) else {
                throw TesseraError(.unsupported, "tensor '\(name)' of '\(m.name)' is \(info.dtype.rawValue) \(info.shape); a vocabulary tensor is a float matrix",
                                   hint: "merge checkpoints of the same architecture")
            }
            guard width < 0 || info.shape[1] == width else {
                throw TesseraError(.shapeMismatch, "tensor '\(name)' has \(info.shape[1]) columns in '\(m.name)' but \(width) in another input",
                                   hint: "merge checkpoints of the same architecture")
            }
            width = info.shape[1]
            var v = try FloatCodec.decode(try m.source.rawTensor(name), name: "\(m.name): \(name)")
            if let d = self.dtype { FloatCodec.quantize(&v, to: d) }
            tensors[m.name] = (v, info.shape[0])
            order.append(m.name)
        }
        guard width >= 0 else { return [:] }
        var perms: [String: [Int]] = [:]
        for n in order {
            guard let p = merge.permutations[n] else {
                throw TesseraError(.notFound, "'\(n)' has no vocabulary in the merge", hint: "name every merged model in the config")
            }
            if let bad = p.first(where: { $0 >= (tensors[n]?.rows ?? 0) }) {
                throw TesseraError(.shapeMismatch, "tensor '\(name)' of '\(n)' has \(tensors[n]?.rows ?? 0) rows, but its tokenizer has id \(bad)",
                                   hint: "the model's embeddings and tokenizer disagree; fix its config's vocab_size or its tokenizer")
            }
            perms[n] = p
        }
        func row(_ n: String, _ r: Int) -> ArraySlice<Float> { tensors[n]!.values[(r * width)..<((r + 1) * width)] }
        let vocab = merge.tokens.count
        var outputs: [String: [Float]] = [:]
        for n in order { outputs[n] = [Float](repeating: 0, count: merge.rows * width) }
        for (id, token) in merge.tokens.enumerated() {
            let override = merge.overrides[token]
            let force = override?.force ?? false
            let lacking = order.contains { perms[$0]![id] < 0 }
            var fill: [Float]? = nil
            if force || lacking {
                fill = try defaultRow(token: token, id: id, override: override, order: order, perms: perms, width: width,
                                      rows: { n in tensors[n]?.rows }, row: row, round: round)
            }
            for n in order {
                let r = perms[n]![id]
                let start = id * width
                if r >= 0 && !force {
                    outputs[n]!.replaceSubrange(start..<(start + width), with: row(n, r))
                } else if let fill {
                    outputs[n]!.replaceSubrange(start..<(start + width), with: fill)
                }
                // else: mergekit logs "No embedding for token" and leaves the row zero.
            }
        }
        if merge.rows > vocab {
            // Padding rows: the mean of the model's real rows (torch.mean over dim 0: the column sums in torch's
            // order, divided in float32, rounded once to the dtype).
            for n in order {
                var mean = outputs[n]!.withUnsafeBufferPointer { TorchReductions.columnSums($0, rows: vocab, columns: width) }
                for c in 0..<width { mean[c] = round(mean[c] / Float(vocab)) }
                for r in vocab..<merge.rows { outputs[n]!.replaceSubrange((r * width)..<((r + 1) * width), with: mean) }
            }
        }
        return outputs
    }

    /// mergekit's row for a token some input lacks (or a forced one): the `tokens:` entry's source; else the one
    /// input that has it, a zero row when none has it, the base's row when the base is an input and has it, or the
    /// average of the inputs that have it (summed in input order from zero, divided, each step in the dtype).
    private func defaultRow(token: String, id: Int, override: MergeConfig.TokenEmbedding?, order: [String], perms: [String: [Int]], width: Int,
                            rows: (String) -> Int?, row: (String, Int) -> ArraySlice<Float>, round: TorchRounding) throws -> [Float]? {
        func member(_ model: String) throws -> String {
            guard order.contains(model) else {
                throw TesseraError(.invalidParameter, "token '\(token)' takes its row from '\(model)', which is not merged here",
                                   hint: "name one of the merged models in tokenizer.tokens")
            }
            return model
        }
        if let override {
            switch override.source {
            case .zero: return [Float](repeating: 0, count: width)
            case .none:
                throw TesseraError(.invalidParameter, "tokenizer.tokens.\(token) has no source, but some model lacks the token (or it is forced)",
                                   hint: "give it source: MODEL, {kind: zero} or {kind: model_token, ...} (mergekit fails here too)")
            case .model(let m):
                let n = try member(m)
                let r = perms[n]![id]
                guard r >= 0 else {
                    throw TesseraError(.invalidParameter, "token '\(token)' takes its row from '\(m)', which does not have it", hint: "name a model whose tokenizer has the token")
                }
                return Array(row(n, r))
            case let .modelToken(m, sourceToken, sourceID):
                let n = try member(m)
                var r = sourceID ?? -1
                if let sourceToken {
                    guard let i = merge.originalVocabularies[n]?[sourceToken] else {
                        throw TesseraError(.invalidParameter, "token '\(sourceToken)' (the source of '\(token)') is not in the tokenizer of '\(m)'", hint: "name a token of that model")
                    }
                    r = i
                }
                guard r >= 0, r < rows(n) ?? 0 else {
                    throw TesseraError(.invalidParameter, "token id \(r) (the source of '\(token)') is out of range for '\(m)' (\(rows(n) ?? 0) rows)", hint: "name a row the model has")
                }
                return Array(row(n, r))
            }
        }
        let having = order.filter { perms[$0]![id] >= 0 }
        if having.count == 1 { return Array(row(having[0], perms[having[0]]![id])) }
        if having.isEmpty { return [Float](repeating: 0, count: width) }
        if let base, order.contains(base), perms[base]![id] >= 0 { return Array(row(base, perms[base]![id])) }
        var sum = [Float](repeating: 0, count: width)
        for n in having {
            let r = row(n, perms[n]![id])
            for (c, x) in r.enumerated() { sum[c] = round(sum[c] + x) }
        }
        let count = Float(having.count)
        for c in 0..<width { sum[c] = round(sum[c] / count) }
        return sum
    }
}

/// An input whose vocabulary tensors are permuted onto the merge's output vocabulary (`VocabularyRemapper`); every
/// other tensor is the input's own.
final class VocabularyRemappedSource: TensorSource, Float32Reading {
    let inner: TensorSource
    let modelName: String
    let remapper: VocabularyRemapper

    init(_ inner: TensorSource, name: String, remapper: VocabularyRemapper) {
        self.inner = inner
        modelName = name
        self.remapper = remapper
    }

    var sourceName: String { inner.sourceName }
    var tensorNames: [String] { inner.tensorNames }
    var metadata: [(String, String)] { inner.metadata }

    func remaps(_ name: String) -> Bool { VocabularyMerge.vocabularyTensors.contains(name) }

    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        guard let info = inner.tensorInfo(name) else { return nil }
        guard remaps(name), info.shape.count == 2 else { return info }
        return (remapper.computeDType(name), remapper.shape(name, inner: info.shape))
    }

    func rawTensor(_ name: String) throws -> RawTensor {
        guard remaps(name), let info = tensorInfo(name) else { return try inner.rawTensor(name) }
        return try FloatCodec.encode(try remapper.values(name, model: modelName), shape: info.shape, dtype: info.dtype)
    }

    func readFloat32(_ name: String) throws -> [Float]? {
        guard remaps(name) else { return try (inner as? Float32Reading)?.readFloat32(name) }
        guard tensorInfo(name)?.dtype == .f32 else { return nil }
        return try remapper.values(name, model: modelName)
    }
}

extension TorchReductions {
    /// `x.sum(dim=0)` of a contiguous float32 [rows, columns] matrix, in torch's order (SumKernel.cpp's outer
    /// reduction, one thread): columns in blocks of 32 are each summed down all rows by the four-level cascade of
    /// `multi_row_sum`; the other columns by `row_sum` (rows taken four at a time into four partial sums, each a
    /// cascade over the groups, the leftover rows into the first, then the four added in order). Checked against
    /// torch 2.13 on random matrices of 5 to 70,000 rows and 3 to 77 columns.
    static func columnSums(_ x: UnsafeBufferPointer<Float>, rows: Int, columns: Int) -> [Float] {
        func ceilLog2(_ n: Int) -> Int { var c = 0; while (1 << c) < n { c += 1 }; return c }
        // multi_row_sum for one accumulator: `count` values given by `load`.
        func cascade(_ count: Int, _ load: (Int) -> Float) -> Float {
            let power = max(4, ceilLog2(count) / 4), step = 1 << power, mask = step - 1
            var acc: [Float] = [0, 0, 0, 0]
            var i = 0
            while i + step <= count {
                for _ in 0..<step { acc[0] += load(i); i += 1 }
                acc[1] += acc[0]; acc[0] = 0
                for j in 1..<3 {
                    if i & (mask << (j * power)) != 0 { break }
                    acc[j + 1] += acc[j]; acc[j] = 0
                }
            }
            while i < count { acc[0] += load(i); i += 1 }
            for j in 1..<4 { acc[0] += acc[j] }
            return acc[0]
        }
        func rowSum(_ c: Int) -> Float {
            let groups = rows / 4
            var parts = (0..<4).map { k in cascade(groups) { x[(4 * $0 + k) * columns + c] } }
            for r in (4 * groups)..<rows { parts[0] += x[r * columns + c] }
            for k in 1..<4 { parts[0] += parts[k] }
            return parts[0]
        }
        var out = [Float](repeating: 0, count: columns)
        let blocked = columns / 32 * 32
        for c in 0..<columns {
            out[c] = c < blocked ? cascade(rows) { x[$0 * columns + c] } : rowSum(c)
        }
        return out
    }
}
