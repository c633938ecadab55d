import TesseraCore
import Yams
import TesseraIO

/// A mergekit YAML config, as parsed (model references are still strings).
///
/// Supported keys: `merge_method`, `base_model`, either `models` (each `model:` and optional `parameters:`) or
/// `slices` (each `sources:` of `{model, layer_range, parameters}`, with optional per-slice `base_model` and
/// `parameters`), top-level `parameters`, `dtype`, `out_dtype`, `name`, `tokenizer_source`,
/// `tokenizer` (`source`, `tokens`, `pad_to_multiple_of`) and `chat_template`. Parameter values may be
/// scalars, gradient lists of numbers, or lists of `{filter, value}`. A per-model `fisher: PATH` parameter gives the
/// Fisher for `fisher`. `modules` (mergekit's per-module merges) is read for the one module Tessera's architectures
/// have, which mergekit names `default`: `modules: {default: {models: [...] | slices: [...], parameters: {...}}}` is
/// the `models:` or `slices:` config it holds, the module's parameters taking precedence over the config's (below a
/// slice's and a model's own, as mergekit's scopes); any other module (a vision tower, an audio encoder) is refused
/// in one line naming it. Any other unknown key is an error too (a typo must not silently change a merge). Errors
/// name the config's line.
public struct MergeConfig: Sendable, Equatable {
    public struct Model: Sendable, Equatable {
        public var model: String
        public var parameters: [String: ParameterSetting]
        public var fisher: String?
        public init(model: String, parameters: [String: ParameterSetting] = [:], fisher: String? = nil) {
            self.model = model
            self.parameters = parameters
            self.fisher = fisher
        }
    }

    /// One output slice: the same number of consecutive layers from each source, merged layer by layer (mergekit's
    /// `slices:` entry). A slice with one source and `passthrough` copies layers (layer stacking). A slice may have
    /// its own base model and parameters; its method is the config's (mergekit 0.1.5 has no per-slice method).
    public struct Slice: Sendable, Equatable {
        public struct Source: Sendable, Equatable {
            public var model: String
            /// Layers `lowerBound..<upperBound` of the model (mergekit's `layer_range: [from, to]`, `to` excluded).
            public var layers: Range<Int>
            public var parameters: [String: ParameterSetting]
            public init(model: String, layers: Range<Int>, parameters: [String: ParameterSetting] = [:]) {
                self.model = model
                self.layers = layers
                self.parameters = parameters
            }
        }
        public var sources: [Source]
        /// The slice's own base model; nil: the config's.
        public var baseModel: String?
        /// The slice's parameters: they take precedence over the config's, below each source's own.
        public var parameters: [String: ParameterSetting]
        public init(sources: [Source], baseModel: String? = nil, parameters: [String: ParameterSetting] = [:]) {
            self.sources = sources
            self.baseModel = baseModel
            self.parameters = parameters
        }
    }

    public var method: String
    public var baseModel: String?
    public var models: [Model]
    /// Non-empty for a `slices:` config (then `models` is empty).
    public var slices: [Slice]
    public var parameters: [String: ParameterSetting]
    public var dtype: DType?
    public var outDType: DType?
    /// The config's `name:` (mergekit-multi names its documents' outputs by it).
    public var name: String?
    /// `tokenizer_source` (or `tokenizer.source`): "base", "union" or a model reference. nil: the reference model's.
    public var tokenizerSource: String?
    /// `chat_template`: "auto", a template name, or a Jinja template.
    public var chatTemplate: String?
    /// `tokenizer.tokens`: where chosen tokens' embedding rows come from, in the config's order.
    public var tokenizerTokens: [TokenEmbedding] = []
    /// `tokenizer.pad_to_multiple_of`: the output vocabulary's rows rounded up to a multiple of it.
    public var padToMultipleOf: Int?

    /// One entry of mergekit's `tokenizer.tokens`: the token, where its row comes from, and whether every model
    /// takes that row even where it has the token (`force`).
    public struct TokenEmbedding: Sendable, Equatable {
        public enum Source: Sendable, Equatable {
            /// The token's own row in that model.
            case model(String)
            /// A zero row.
            case zero
            /// Another token's row in a model, by token or by id (exactly one is set).
            case modelToken(model: String, token: String?, id: Int?)
            /// No source given (mergekit fails if a row is then needed).
            case none
        }
        public var token: String
        public var source: Source
        public var force: Bool
        public init(token: String, source: Source, force: Bool = false) {
            self.token = token
            self.source = source
            self.force = force
        }
    }

    public init(method: String, baseModel: String? = nil, models: [Model], slices: [Slice] = [], parameters: [String: ParameterSetting] = [:],
                dtype: DType? = nil, outDType: DType? = nil, name: String? = nil, tokenizerSource: String? = nil, chatTemplate: String? = nil) {
        self.method = method
        self.baseModel = baseModel
        self.models = models
        self.slices = slices
        self.parameters = parameters
        self.dtype = dtype
        self.outDType = outDType
        self.name = name
        self.tokenizerSource = tokenizerSource
        self.chatTemplate = chatTemplate
    }

    static let unsupportedKeys: [String: String] = [:]

    /// The module mergekit's architecture definitions give a single-module model (every architecture Tessera has:
    /// Llama/Mistral, GPT-2, GPT-Neo, BERT), and the only one a `modules:` config can name here.
    public static let singleModuleName = "default"

    /// " (line N)" for a node that knows its line.
    static func line(_ n: Node?) -> String {
        guard let l = n?.mark?.line else { return "" }
        return " (line \(l))"
    }

    public static func parse(yaml text: String, file: String = "merge config") throws -> MergeConfig {
        let root = try YAMLDocument.compose(text, file: file)
        guard let root else {
            throw TesseraError(.invalidParameter, "\(file): the config is not a YAML mapping", hint: "see the mergekit config format")
        }
        return try parse(node: root, file: file)
    }

    /// The most documents a multi-document config may have (each is a whole merge; the run order is found by a
    /// recursive walk whose depth this bounds).
    public static let maxDocuments = 256

    /// Parses every document of a config: one for a mergekit-yaml config, several (separated by `---`) for a
    /// mergekit-multi one, whose documents are named (`name:`) and may use earlier results by name. Names must be
    /// unique and at most one document may be unnamed (the final merge), as mergekit-multi requires.
    public static func parseDocuments(yaml text: String, file: String = "merge config") throws -> [MergeConfig] {
        let depth = YAMLDocument.nestingBound(text)
        guard depth <= YAMLDocument.maxNesting else {
            throw TesseraError(.invalidParameter, "\(file): the YAML nests about \(depth) levels deep (at most \(YAMLDocument.maxNesting))",
                               hint: "a config needs a few levels; the file is malformed or hostile")
        }
        var nodes: [Node] = []
        do {
            for node in try Yams.compose_all(yaml: text) { nodes.append(node) }
        } catch let e as TesseraError {
            throw e
        } catch {
            let first = String(describing: error).split(whereSeparator: \.isNewline).first.map(String.init) ?? "syntax error"
            throw TesseraError(.invalidParameter, "\(file): invalid YAML (\(first))", hint: "fix the YAML syntax")
        }
        guard !nodes.isEmpty else {
            throw TesseraError(.invalidParameter, "\(file): the config is not a YAML mapping", hint: "see the mergekit config format")
        }
        guard nodes.count <= maxDocuments else {
            throw TesseraError(.invalidParameter, "\(file): the config has \(nodes.count) documents (at most \(maxDocuments))",
                               hint: "a multi-document config chains a few merges; split the work into several configs")
        }
        for n in nodes {
            try YAMLDocument.checkExpansion(n, limit: YAMLDocument.expansionLimit(bytes: text.utf8.count), textBytes: text.utf8.count, file: file)
        }
        let configs = try nodes.map { try parse(node: $0, file: file) }
        guard configs.count > 1 else { return configs }
        var names = Set<String>()
        for (k, c) in configs.enumerated() {
            if let name = c.name {
                guard names.insert(name).inserted else {
                    throw TesseraError(.invalidParameter, "\(file): two documents are named '\(name)'\(line(nodes[k]))", hint: "give each merge its own name")
                }
            }
        }
        if configs.filter({ $0.name == nil }).count > 1 {
            throw TesseraError(.invalidParameter, "\(file): more than one document has no name", hint: "name every merge but the final one (name: ...)")
        }
        return configs
    }

    /// The documents of a multi-document config in an order that runs each after the merges it uses (by name), and
    /// the index of the final one (the unnamed document, else the one no other uses). A cycle is an error.
    public static func runOrder(_ documents: [MergeConfig], file: String) throws -> (order: [Int], final: Int) {
        let byName = Dictionary(uniqueKeysWithValues: documents.enumerated().compactMap { k, c in c.name.map { ($0, k) } })
        func uses(_ c: MergeConfig) -> [Int] {
            c.referencedModels.compactMap { ref in byName[String(ref.split(separator: "+", maxSplits: 1).first ?? "")] ?? byName[ref] }
        }
        var order: [Int] = [], state = [Int](repeating: 0, count: documents.count)
        func visit(_ k: Int, _ path: [String]) throws {
            if state[k] == 2 { return }
            if state[k] == 1 {
                throw TesseraError(.invalidParameter, "\(file): the merges use each other in a cycle (\((path + [documents[k].name ?? "final"]).joined(separator: " → ")))",
                                   hint: "a merge can only use merges that do not use it")
            }
            state[k] = 1
            for d in uses(documents[k]) where d != k { try visit(d, path + [documents[k].name ?? "final"]) }
            if uses(documents[k]).contains(k) {
                throw TesseraError(.invalidParameter, "\(file): merge '\(documents[k].name ?? "")' uses itself", hint: "name another model")
            }
            state[k] = 2
            order.append(k)
        }
        for k in documents.indices { try visit(k, []) }
        if let unnamed = documents.firstIndex(where: { $0.name == nil }) { return (order, unnamed) }
        let used = Set(documents.flatMap(uses))
        let sinks = documents.indices.filter { !used.contains($0) }
        guard sinks.count == 1 else {
            throw TesseraError(.invalidParameter, "\(file): \(sinks.count) merges are used by no other, so none is the final one",
                               hint: "leave the final merge unnamed (as mergekit-multi writes it to --out-path)")
        }
        return (order, sinks[0])
    }

    /// Parses one document's root node (mergekit-multi configs hold several).
    public static func parse(node root: Node, file: String) throws -> MergeConfig {
        guard let top = root.mapping else {
            throw TesseraError(.invalidParameter, "\(file): the config is not a YAML mapping\(line(root))", hint: "see the mergekit config format")
        }
        var method: String?
        var base: String?
        var models: [Model]?
        var slices: [Slice]?
        var parameters: [String: ParameterSetting] = [:]
        var dtype: DType?
        var outDType: DType?
        var name: String?
        var tokenizerSource: String?
        var tokenizerNode: Node?
        var chatTemplate: String?
        var tokenizerTokens: [TokenEmbedding] = []
        var padToMultipleOf: Int?
        var modulesKey: Node?
        var moduleParameters: [String: ParameterSetting] = [:]
        for (k, v) in top {
            guard let key = k.string else { throw TesseraError(.invalidParameter, "\(file): a key is not a string\(line(k))", hint: "fix the config") }
            if let why = unsupportedKeys[key] {
                throw TesseraError(.unsupported, "\(file): '\(key)' is not supported\(line(k))", hint: why)
            }
            switch key {
            case "merge_method": method = try string(v, "merge_method", file)
            case "base_model": base = try modelReference(v, "base_model", file)
            case "models": models = try modelList(v, "models", file)
            case "slices": slices = try sliceList(v, file)
            case "modules":
                modulesKey = k
                let module = try moduleDefinition(v, file)
                if let m = module.models { models = (models ?? []) + m }
                if let s = module.slices { slices = (slices ?? []) + s }
                moduleParameters = module.parameters
            case "parameters": parameters = try parameterMap(v, "parameters", file)
            case "dtype": dtype = try dtypeValue(v, "dtype", file)
            case "out_dtype": outDType = try dtypeValue(v, "out_dtype", file)
            case "name": name = try string(v, "name", file)
            case "tokenizer_source": tokenizerSource = try modelReference(v, "tokenizer_source", file)
            case "tokenizer":
                tokenizerNode = k
                (tokenizerSource, tokenizerTokens, padToMultipleOf) = try tokenizerSettings(v, file)
            case "chat_template": chatTemplate = try string(v, "chat_template", file)
            default:
                throw TesseraError(.invalidParameter, "\(file): unknown key '\(key)'\(line(k))",
                                   hint: "supported: merge_method, base_model, models, slices, modules, parameters, dtype, out_dtype, name, tokenizer_source, tokenizer, chat_template")
            }
        }
        if let tokenizerNode, top.keys.contains(where: { $0.string == "tokenizer_source" }) {
            throw TesseraError(.invalidParameter, "\(file): tokenizer and tokenizer_source are both set\(line(tokenizerNode))", hint: "keep one (as mergekit requires)")
        }
        if let modulesKey, top.keys.contains(where: { $0.string == "models" || $0.string == "slices" }) {
            throw TesseraError(.invalidParameter, "\(file): modules is given with models or slices\(line(modulesKey))",
                               hint: "use exactly one of models:, slices: and modules: (as mergekit requires)")
        }
        // The module's parameters are the scope between the slices' (or models') and the config's.
        for (k, v) in moduleParameters { parameters[k] = parameters[k].map { v.fallingBack(to: $0) } ?? v }
        guard let method else { throw TesseraError(.invalidParameter, "\(file): merge_method is missing\(line(root))", hint: "set merge_method, e.g. merge_method: ties") }
        _ = try MergeRegistry.method(named: method)
        switch (models, slices) {
        case (nil, nil):
            throw TesseraError(.invalidParameter, "\(file): neither models nor slices is given\(line(root))", hint: "list the models to merge (models:) or the layer slices (slices:)")
        case (_?, _?):
            throw TesseraError(.invalidParameter, "\(file): models and slices are both given\(line(root))", hint: "use exactly one of models: and slices: (as mergekit requires)")
        case let (m?, nil):
            guard !m.isEmpty else { throw TesseraError(.invalidParameter, "\(file): models is empty\(line(root))", hint: "list the models to merge") }
        case let (nil, s?):
            guard !s.isEmpty else { throw TesseraError(.invalidParameter, "\(file): slices is empty\(line(root))", hint: "list the slices to stack") }
        }
        var config = MergeConfig(method: method, baseModel: base, models: models ?? [], slices: slices ?? [], parameters: parameters,
                                 dtype: dtype, outDType: outDType, name: name, tokenizerSource: tokenizerSource, chatTemplate: chatTemplate)
        config.tokenizerTokens = tokenizerTokens
        config.padToMultipleOf = padToMultipleOf
        return config
    }

    /// `modules:`: a mapping of module names to `{models | slices, parameters}`, of which only `default` is supported.
    static func moduleDefinition(_ v: Node, _ file: String) throws -> (models: [Model]?, slices: [Slice]?, parameters: [String: ParameterSetting]) {
        guard let modules = v.mapping, !modules.isEmpty else {
            throw TesseraError(.invalidParameter, "\(file): modules must be a non-empty mapping of module names\(line(v))",
                               hint: "write modules: {default: {models: [...]}} (or use models: / slices:)")
        }
        for (name, _) in modules where name.string != singleModuleName {
            throw TesseraError(.unsupported, "\(file): module '\(name.string ?? "?")' is not supported\(line(name))",
                               hint: "Tessera's architectures (Llama/Mistral, GPT-2, GPT-Neo, BERT) have one module, which mergekit names '\(singleModuleName)'; merge other modules' tensors with models: or slices:")
        }
        let what = "modules.\(singleModuleName)"
        guard let body = modules.first?.value, let map = body.mapping else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a mapping\(line(v))", hint: "write \(what): {models: [...]} or {slices: [...]}")
        }
        var models: [Model]?, slices: [Slice]?, parameters: [String: ParameterSetting] = [:]
        for (k, mv) in map {
            switch k.string ?? "" {
            case "models": models = try modelList(mv, "\(what).models", file)
            case "slices": slices = try sliceList(mv, file, prefix: "\(what).")
            case "parameters": parameters = try parameterMap(mv, "\(what).parameters", file)
            default:
                throw TesseraError(.invalidParameter, "\(file): unknown key '\(k.string ?? "?")' in \(what)\(line(k))",
                                   hint: "a module has models: or slices:, and optionally parameters:")
            }
        }
        // mergekit: "Must specify either output slices or models to merge".
        guard (models?.isEmpty == false) != (slices?.isEmpty == false) else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must have either models or slices\(line(body))",
                               hint: "give the module exactly one non-empty list, models: or slices:")
        }
        return (models, slices, parameters)
    }

    static func modelList(_ v: Node, _ what: String, _ file: String) throws -> [Model] {
        guard let seq = v.sequence else { throw TesseraError(.invalidParameter, "\(file): \(what) must be a list\(line(v))", hint: "write \(what): - model: PATH") }
        var models: [Model] = []
        for (i, entry) in seq.enumerated() {
            guard let map = entry.mapping else {
                throw TesseraError(.invalidParameter, "\(file): \(what)[\(i)] must be a mapping with 'model:'\(line(entry))", hint: "write - model: PATH")
            }
            var ref: String?
            var params: [String: ParameterSetting] = [:]
            var fisher: String?
            for (mk, mv) in map {
                switch mk.string ?? "" {
                case "model": ref = try modelReference(mv, "\(what)[\(i)].model", file)
                case "parameters":
                    params = try parameterMap(mv, "\(what)[\(i)].parameters", file)
                    if let f = params.removeValue(forKey: "fisher") {
                        guard case let .value(.string(path)) = f else {
                            throw TesseraError(.invalidParameter, "\(file): \(what)[\(i)].parameters.fisher must be a path\(line(mv))", hint: "write fisher: PATH")
                        }
                        fisher = path
                    }
                default:
                    throw TesseraError(.invalidParameter, "\(file): unknown key '\(mk.string ?? "?")' in \(what)[\(i)]\(line(mk))", hint: "a model entry has model: and parameters:")
                }
            }
            guard let ref else { throw TesseraError(.invalidParameter, "\(file): \(what)[\(i)] has no 'model:'\(line(entry))", hint: "write - model: PATH") }
            models.append(Model(model: ref, parameters: params, fisher: fisher))
        }
        return models
    }

    static func sliceList(_ v: Node, _ file: String, prefix: String = "") throws -> [Slice] {
        guard let seq = v.sequence else {
            throw TesseraError(.invalidParameter, "\(file): \(prefix)slices must be a list\(line(v))", hint: "write slices: - sources: [{model: PATH, layer_range: [0, 8]}]")
        }
        var out: [Slice] = []
        for (i, entry) in seq.enumerated() {
            let what = "\(prefix)slices[\(i)]"
            guard let map = entry.mapping else {
                throw TesseraError(.invalidParameter, "\(file): \(what) must be a mapping with 'sources:'\(line(entry))", hint: "write - sources: [{model: PATH, layer_range: [0, 8]}]")
            }
            var slice = Slice(sources: [])
            var sawSources = false
            for (k, sv) in map {
                switch k.string ?? "" {
                case "sources":
                    sawSources = true
                    guard let sources = sv.sequence, !sources.isEmpty else {
                        throw TesseraError(.invalidParameter, "\(file): \(what).sources must be a non-empty list\(line(sv))", hint: "write sources: [{model: PATH, layer_range: [0, 8]}]")
                    }
                    for (j, src) in sources.enumerated() { slice.sources.append(try sliceSource(src, "\(what).sources[\(j)]", file)) }
                case "base_model": slice.baseModel = try modelReference(sv, "\(what).base_model", file)
                case "merge_method":
                    // mergekit 0.1.5's slice has no method of its own: it ignores the key and merges with the
                    // config's. Running either way would surprise someone; say so.
                    throw TesseraError(.unsupported, "\(file): \(what).merge_method is not supported\(line(k))",
                                       hint: "mergekit 0.1.5 ignores a slice's merge_method (every slice uses the config's); merge the slices separately in a multi-document config and stack the results")
                case "parameters": slice.parameters = try parameterMap(sv, "\(what).parameters", file)
                case "residual_weight":
                    throw TesseraError(.unsupported, "\(file): \(what).residual_weight is not supported\(line(k))", hint: "mergekit 0.1.5 reads it but never applies it; remove it")
                default:
                    throw TesseraError(.invalidParameter, "\(file): unknown key '\(k.string ?? "?")' in \(what)\(line(k))",
                                       hint: "a slice has sources:, and optionally base_model: and parameters:")
                }
            }
            guard sawSources else { throw TesseraError(.invalidParameter, "\(file): \(what) has no 'sources:'\(line(entry))", hint: "write - sources: [{model: PATH, layer_range: [0, 8]}]") }
            let counts = Set(slice.sources.map(\.layers.count))
            guard counts.count == 1 else {
                throw TesseraError(.invalidParameter, "\(file): the sources of \(what) take different numbers of layers (\(slice.sources.map { "[\($0.layers.lowerBound), \($0.layers.upperBound)]" }.joined(separator: ", ")))\(line(entry))",
                                   hint: "every source of a slice gives the same number of layers, merged one to one")
            }
            out.append(slice)
        }
        return out
    }

    static func sliceSource(_ n: Node, _ what: String, _ file: String) throws -> Slice.Source {
        guard let map = n.mapping else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a mapping with model: and layer_range:\(line(n))", hint: "write {model: PATH, layer_range: [0, 8]}")
        }
        var ref: String?, range: Range<Int>?, params: [String: ParameterSetting] = [:]
        for (k, v) in map {
            switch k.string ?? "" {
            case "model": ref = try modelReference(v, "\(what).model", file)
            case "layer_range":
                let items = v.sequence.map(Array.init) ?? []
                let bounds = try items.enumerated().map { j, item -> Int in
                    guard case let .number(d) = try scalarValue(item, "\(what).layer_range[\(j)]", file), d == d.rounded(), d >= 0, d < 1e9 else {
                        throw TesseraError(.invalidParameter, "\(file): \(what).layer_range[\(j)] must be a layer number\(line(item))", hint: "write layer_range: [FROM, TO]")
                    }
                    return Int(d)
                }
                guard bounds.count == 2, bounds[0] < bounds[1] else {
                    throw TesseraError(.invalidParameter, "\(file): \(what).layer_range must be [FROM, TO] with FROM < TO\(line(v))",
                                       hint: "write layer_range: [0, 8] for layers 0 to 7")
                }
                range = bounds[0]..<bounds[1]
            case "parameters": params = try parameterMap(v, "\(what).parameters", file)
            default:
                throw TesseraError(.invalidParameter, "\(file): unknown key '\(k.string ?? "?")' in \(what)\(line(k))", hint: "a slice source has model:, layer_range: and parameters:")
            }
        }
        guard let ref else { throw TesseraError(.invalidParameter, "\(file): \(what) has no 'model:'\(line(n))", hint: "write {model: PATH, layer_range: [0, 8]}") }
        guard let range else { throw TesseraError(.invalidParameter, "\(file): \(what) has no 'layer_range:'\(line(n))", hint: "write {model: PATH, layer_range: [0, 8]}") }
        return Slice.Source(model: ref, layers: range, parameters: params)
    }

    /// mergekit's `tokenizer:` mapping: `source` (default `union`), `tokens` and `pad_to_multiple_of`.
    static func tokenizerSettings(_ n: Node, _ file: String) throws -> (String, [TokenEmbedding], Int?) {
        guard let map = n.mapping else {
            throw TesseraError(.invalidParameter, "\(file): tokenizer must be a mapping\(line(n))", hint: "write tokenizer: {source: base}")
        }
        var source = "union"
        var tokens: [TokenEmbedding] = []
        var pad: Int?
        for (k, v) in map {
            switch k.string ?? "" {
            case "source": source = try modelReference(v, "tokenizer.source", file)
            case "tokens":
                if case .scalar = v, v.null != nil { continue }
                guard let entries = v.mapping else {
                    throw TesseraError(.invalidParameter, "\(file): tokenizer.tokens must be a mapping of tokens\(line(v))",
                                       hint: "write tokens: {TOKEN: {source: MODEL}}")
                }
                for (tk, tv) in entries {
                    guard let token = tk.string else {
                        throw TesseraError(.invalidParameter, "\(file): a token in tokenizer.tokens is not a string\(line(tk))", hint: "quote the token")
                    }
                    tokens.append(try tokenEmbedding(token, tv, file))
                }
            case "pad_to_multiple_of":
                if case .scalar = v, v.null != nil { continue }
                guard case let .number(d) = try scalarValue(v, "tokenizer.pad_to_multiple_of", file), d == d.rounded(), d >= 0, d <= Double(1 << 20) else {
                    throw TesseraError(.invalidParameter, "\(file): tokenizer.pad_to_multiple_of must be a whole number from 0 to \(1 << 20)\(line(v))",
                                       hint: "write pad_to_multiple_of: 64")
                }
                pad = d == 0 ? nil : Int(d)  // 0 pads nothing, as in mergekit
            default:
                throw TesseraError(.invalidParameter, "\(file): unknown key '\(k.string ?? "?")' in tokenizer\(line(k))", hint: "tokenizer has source:, tokens:, pad_to_multiple_of:")
            }
        }
        return (source, tokens, pad)
    }

    /// One `tokens:` entry: `{source: MODEL | {kind: zero} | {kind: model_token, model, token | token_id}, force}`.
    static func tokenEmbedding(_ token: String, _ n: Node, _ file: String) throws -> TokenEmbedding {
        let what = "tokenizer.tokens.\(token)"
        if case .scalar = n, n.null != nil { return TokenEmbedding(token: token, source: .none) }
        guard let map = n.mapping else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a mapping with source: and force:\(line(n))", hint: "write \(token): {source: MODEL}")
        }
        var entry = TokenEmbedding(token: token, source: .none)
        for (k, v) in map {
            switch k.string ?? "" {
            case "force":
                guard case let .bool(b) = try scalarValue(v, "\(what).force", file) else {
                    throw TesseraError(.invalidParameter, "\(file): \(what).force must be true or false\(line(v))", hint: "write force: true")
                }
                entry.force = b
            case "source":
                if case .scalar = v, v.null != nil { continue }
                if case .scalar = v {
                    entry.source = .model(try string(v, "\(what).source", file))
                    continue
                }
                guard let s = v.mapping else {
                    throw TesseraError(.invalidParameter, "\(file): \(what).source must be a model or {kind: ...}\(line(v))", hint: "write source: MODEL or source: {kind: zero}")
                }
                var kind: String?, model: String?, tok: String?, id: Int?
                for (sk, sv) in s {
                    switch sk.string ?? "" {
                    case "kind": kind = try string(sv, "\(what).source.kind", file)
                    case "model": model = try modelReference(sv, "\(what).source.model", file)
                    case "token": tok = try string(sv, "\(what).source.token", file)
                    case "token_id":
                        guard case let .number(d) = try scalarValue(sv, "\(what).source.token_id", file), d == d.rounded(), d >= 0, d < Double(1 << 31) else {
                            throw TesseraError(.invalidParameter, "\(file): \(what).source.token_id must be a token id\(line(sv))", hint: "write token_id: 5")
                        }
                        id = Int(d)
                    default:
                        throw TesseraError(.invalidParameter, "\(file): unknown key '\(sk.string ?? "?")' in \(what).source\(line(sk))",
                                           hint: "a token source has kind: (zero or model_token), and model:, token: or token_id: for model_token")
                    }
                }
                switch kind {
                case "zero": entry.source = .zero
                case "model_token":
                    guard let model, (tok == nil) != (id == nil) else {
                        throw TesseraError(.invalidParameter, "\(file): \(what).source needs model: and exactly one of token: and token_id:\(line(v))",
                                           hint: "write {kind: model_token, model: MODEL, token: TOKEN}")
                    }
                    entry.source = .modelToken(model: model, token: tok, id: id)
                default:
                    throw TesseraError(.invalidParameter, "\(file): \(what).source.kind must be zero or model_token\(line(v))",
                                       hint: "write {kind: zero} or {kind: model_token, model: MODEL, token: TOKEN}")
                }
            default:
                throw TesseraError(.invalidParameter, "\(file): unknown key '\(k.string ?? "?")' in \(what)\(line(k))", hint: "a token entry has source: and force:")
            }
        }
        return entry
    }

    /// The models the config merges (base, models, slice sources), each once, in order: mergekit's
    /// `referenced_models`, which a tokenizer source does not join.
    public var inputModels: [String] {
        var c = self
        c.tokenizerSource = nil
        return c.referencedModels
    }

    /// Every model the config names (base, models, slice sources, a tokenizer source), each once, in order.
    public var referencedModels: [String] {
        var out: [String] = []
        func add(_ s: String?) { if let s, !out.contains(s) { out.append(s) } }
        add(baseModel)
        for m in models { add(m.model) }
        for s in slices {
            add(s.baseModel)
            for src in s.sources { add(src.model) }
        }
        if let t = tokenizerSource, t != "base", t != "union" { add(t) }
        return out
    }

    /// Resolves model references to sources (a `models:` config). Each distinct reference is resolved once (a model
    /// listed twice, or the base listed among the models, is the same source).
    public func plan(resolver: (String) throws -> TensorSource) throws -> MergePlan {
        guard slices.isEmpty else {
            throw TesseraError(.usage, "a slices: config has one plan per slice", hint: "use MergeConfig.program(resolver:)")
        }
        var cache: [String: TensorSource] = [:]
        func source(_ ref: String) throws -> TensorSource {
            if let s = cache[ref] { return s }
            let s = try resolver(ref)
            cache[ref] = s
            return s
        }
        let base = try baseModel.map { MergeInputModel(name: $0, source: try source($0)) }
        var inputs = try models.map { m in
            MergeInputModel(name: m.model, source: try source(m.model), parameters: m.parameters,
                            fisher: try m.fisher.map { try source($0) }, fisherName: m.fisher)
        }
        // mergekit appends a base_model that `models` does not list to the inputs, with the config's own parameters:
        // for linear, which has no use for a base, that makes it one more model of the average.
        if method == LinearMerge.name, let b = baseModel, !models.contains(where: { $0.model == b }) {
            guard parameters["weight"] != nil else {
                throw TesseraError(.invalidParameter,
                                   "linear: base_model '\(b)' is not listed in models, so it is averaged in too (as mergekit does), but it has no weight",
                                   hint: "list it among the models with a weight, give a top-level parameters: {weight: ...}, or remove base_model (linear uses none)")
            }
            inputs.append(MergeInputModel(name: b, source: try source(b)))
        }
        return MergePlan(method: method, base: base, models: inputs, parameters: parameters, dtype: dtype, outDType: outDType)
    }

    /// The config as merges to run one after another into the same output: one plan for a `models:` config; for a
    /// `slices:` config, one plan per slice over views of the sources' layers renumbered to their output positions
    /// (the first slice also carries the weights before the layers, the last the weights after them, each evaluated
    /// at t = 0 as mergekit 0.1.5 plans them; inside a slice of n layers, layer k sits at t = k/(n−1), or 1 when
    /// n = 1).
    public func program(resolver: (String) throws -> TensorSource) throws -> MergeProgram {
        guard !slices.isEmpty else {
            let p = try plan(resolver: resolver)
            return MergeProgram(segments: [p], summaryPlan: p, outputLayerOrigins: nil, referenceName: p.base?.name ?? p.models[0].name)
        }
        var cache: [String: (source: TensorSource, layout: LayerLayout)] = [:]
        func source(_ ref: String) throws -> (source: TensorSource, layout: LayerLayout) {
            if let s = cache[ref] { return s }
            let s = try resolver(ref)
            let entry = (s, LayerLayout(tensorNames: s.tensorNames))
            cache[ref] = entry
            return entry
        }
        var segments: [MergePlan] = []
        var next = 0
        for (i, slice) in slices.enumerated() {
            let sliceMethod = method
            let type = try MergeRegistry.method(named: sliceMethod)
            let count = slice.sources[0].layers.count
            var views: [String: LayerSliceSource] = [:]
            var inputs: [MergeInputModel] = []
            // mergekit merges the weights after the layers from the last slice's models paired with the first
            // slice's entries: when the last slice has more sources, only its first ones take part (a plan of their own).
            let postApart = i == slices.count - 1 && i > 0 && slice.sources.count > slices[0].sources.count
            for src in slice.sources {
                let (s, layout) = try source(src.model)
                guard layout.layerCount > 0 else {
                    throw TesseraError(.invalidParameter, "slices[\(i)]: model '\(src.model)' has no numbered layers", hint: "slices take layers of transformer checkpoints")
                }
                guard src.layers.upperBound <= layout.layerCount else {
                    throw TesseraError(.invalidParameter,
                                       "slices[\(i)]: layer_range [\(src.layers.lowerBound), \(src.layers.upperBound)] goes past the \(layout.layerCount) layers of '\(src.model)'",
                                       hint: "layer_range's second number is one past the last layer taken (at most \(layout.layerCount))")
                }
                let key = "\(src.model)#\(src.layers.lowerBound)"
                let view = views[key] ?? LayerSliceSource(s, layout: layout, range: src.layers, to: next, pre: i == 0,
                                                          post: i == slices.count - 1 && !postApart)
                views[key] = view
                inputs.append(MergeInputModel(name: src.model, source: view, parameters: src.parameters))
            }
            // The slice's base: one of its sources (mergekit gathers the base's tensors from the slice's inputs).
            var base: MergeInputModel?
            if let ref = slice.baseModel ?? baseModel {
                if let b = inputs.first(where: { $0.name == ref }) {
                    base = MergeInputModel(name: ref, source: b.source)
                } else if type.baseUse == .required {
                    throw TesseraError(.invalidParameter, "slices[\(i)]: base model '\(ref)' is not among the slice's sources",
                                       hint: "add it to the slice's sources with the layer_range to take from it")
                }
            }
            // Precedence as mergekit's: a source's own parameters, then the slice's, then the config's.
            var merged = parameters
            for (k, v) in slice.parameters { merged[k] = parameters[k].map { v.fallingBack(to: $0) } ?? v }
            var positions: [String: Double] = [:]
            let reference = inputs.first(where: { $0.name == base?.name })?.source ?? inputs[0].source
            for name in reference.tensorNames {
                let k = (reference as? LayerSliceSource)?.layerOffset[name]
                positions[name] = k.map { count > 1 ? Double($0) / Double(count - 1) : 1 } ?? 0
            }
            var plan = MergePlan(method: sliceMethod, base: base, models: inputs, parameters: merged, dtype: dtype, outDType: outDType)
            plan.layerPositions = positions
            segments.append(plan)
            next += count
            if postApart {
                var postInputs: [MergeInputModel] = []
                var postViews: [String: LayerSliceSource] = [:]
                for src in slice.sources.prefix(slices[0].sources.count) {
                    let (s, layout) = try source(src.model)
                    let view = postViews[src.model] ?? LayerSliceSource(s, layout: layout, range: 0..<0, to: next, pre: false, post: true)
                    postViews[src.model] = view
                    postInputs.append(MergeInputModel(name: src.model, source: view, parameters: src.parameters))
                }
                let postBase = base.flatMap { b in postInputs.first { $0.name == b.name }.map { MergeInputModel(name: b.name, source: $0.source) } }
                var post = MergePlan(method: sliceMethod, base: postBase, models: postInputs, parameters: merged, dtype: dtype, outDType: outDType)
                post.layerPositions = Dictionary(uniqueKeysWithValues: postInputs[0].source.tensorNames.map { ($0, 0.0) })
                if !postInputs[0].source.tensorNames.isEmpty { segments.append(post) }
            }
        }
        // Provenance and the model card see every distinct input once, whole.
        var seen: [String] = []
        var summaryModels: [MergeInputModel] = []
        for s in slices { for src in s.sources where !seen.contains(src.model) {
            seen.append(src.model)
            summaryModels.append(MergeInputModel(name: src.model, source: try source(src.model).source))
        } }
        let summaryBase = try baseModel.map { MergeInputModel(name: $0, source: try source($0).source) }
        let summary = MergePlan(method: method, base: summaryBase, models: summaryModels, parameters: parameters, dtype: dtype, outDType: outDType)
        return MergeProgram(segments: segments, summaryPlan: summary, outputLayerOrigins: slices.flatMap { Array($0.sources[0].layers) },
                            referenceName: baseModel ?? slices[0].sources[0].model)
    }

    // MARK: YAML values

    static func string(_ n: Node, _ what: String, _ file: String) throws -> String {
        guard case .scalar = n, let s = n.string else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a string\(line(n))", hint: "fix the config")
        }
        return s
    }

    static func modelReference(_ n: Node, _ what: String, _ file: String) throws -> String {
        if case .mapping = n {
            throw TesseraError(.unsupported, "\(file): \(what) as a mapping (LoRA or override form) is not supported\(line(n))",
                               hint: "give the model as a path or REV:path string")
        }
        return try string(n, what, file)
    }

    static func dtypeValue(_ n: Node, _ what: String, _ file: String) throws -> DType {
        let s = try string(n, what, file)
        switch s.lowercased() {
        case "float32", "fp32", "float", "f32": return .f32
        case "float16", "fp16", "half", "f16": return .f16
        case "bfloat16", "bf16": return .bf16
        default:
            throw TesseraError(.unsupported, "\(file): \(what) '\(s)' is not supported\(line(n))", hint: "use float32, float16 or bfloat16")
        }
    }

    static func parameterMap(_ n: Node, _ what: String, _ file: String) throws -> [String: ParameterSetting] {
        if case let .scalar(s) = n, n.null != nil || s.string.isEmpty { return [:] }
        guard let map = n.mapping else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a mapping of parameter names to values\(line(n))", hint: "write parameters: {weight: 0.5}")
        }
        var out: [String: ParameterSetting] = [:]
        for (k, v) in map {
            guard let key = k.string else { throw TesseraError(.invalidParameter, "\(file): a key in \(what) is not a string\(line(k))", hint: "fix the config") }
            out[key] = try setting(v, "\(what).\(key)", file)
        }
        return out
    }

    static func scalarValue(_ n: Node, _ what: String, _ file: String) throws -> MergeValue {
        guard case let .scalar(s) = n else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a scalar\(line(n))", hint: "fix the config")
        }
        // Quoted scalars are strings; plain ones are resolved as YAML 1.1 core types, as mergekit's loader does, by
        // our own code: Yams' integer conversion traps on a long sexagesimal scalar ("1:0:0:0:0:0:0:0:0:0:0:0").
        if s.style == .plain {
            switch try YAMLScalar.resolve(s.string, what: "\(file): \(what)") {
            case nil: throw TesseraError(.invalidParameter, "\(file): \(what) is empty\(line(n))", hint: "give it a value")
            case let value?: return value
            }
        }
        return .string(s.string)
    }

    static func setting(_ n: Node, _ what: String, _ file: String) throws -> ParameterSetting {
        switch n {
        case .scalar:
            return .value(try scalarValue(n, what, file))
        case let .sequence(seq):
            let items = Array(seq)
            if items.allSatisfy({ $0.mapping != nil }) && !items.isEmpty {
                var entries: [FilteredSetting] = []
                for (i, item) in items.enumerated() {
                    var filter: String?
                    var value: ParameterSetting?
                    for (k, v) in item.mapping! {
                        switch k.string ?? "" {
                        case "filter": filter = try string(v, "\(what)[\(i)].filter", file)
                        case "value": value = try setting(v, "\(what)[\(i)].value", file)
                        default:
                            throw TesseraError(.invalidParameter, "\(file): unknown key '\(k.string ?? "?")' in \(what)[\(i)]\(line(k))", hint: "a filter entry has filter: and value:")
                        }
                    }
                    guard let value else { throw TesseraError(.invalidParameter, "\(file): \(what)[\(i)] has no value\(line(item))", hint: "write {filter: ..., value: ...}") }
                    entries.append(FilteredSetting(filter: filter, value: value))
                }
                return .filtered(entries)
            }
            guard !items.isEmpty else { throw TesseraError(.invalidParameter, "\(file): \(what) is an empty list\(line(n))", hint: "give it a value") }
            var values: [MergeValue] = []
            for (i, item) in items.enumerated() {
                guard case .scalar = item else {
                    throw TesseraError(.invalidParameter, "\(file): \(what)[\(i)] must be a scalar\(line(item))",
                                       hint: "write a number, a list of values, or a list of {filter, value}")
                }
                values.append(try scalarValue(item, "\(what)[\(i)]", file))
            }
            // Numbers interpolate over the layers; a list with anything else steps through its entries (mergekit).
            let points = values.compactMap { v -> Double? in if case let .number(d) = v { return d }; return nil }
            guard points.count == values.count else { return .steps(values) }
            return .gradient(points)
        case .mapping:
            throw TesseraError(.unsupported, "\(file): \(what) is a mapping; parameter values are scalars, gradient lists or lists of {filter, value}\(line(n))",
                               hint: "fix the config")
        }
    }
}

/// YAML read from configs and repositories is untrusted: aliases let a few kilobytes stand for billions of nodes
/// ("billion laughs"), and Yams composes nested collections recursively. Composing shares aliased nodes (cheap);
/// the cost comes when the document is traversed or converted, so the expanded size is measured first, by a walk
/// that stops as soon as it passes a limit proportional to the text, and deep nesting is refused before Yams sees it.
public enum YAMLDocument {
    /// Nesting deeper than this (counting indentation and indicators on a line) is refused before composing.
    public static let maxNesting = 512

    /// Expanded nodes and scalar bytes allowed for a text of `bytes` bytes: generous for anchors reused a few times.
    public static func expansionLimit(bytes: Int) -> Int { 100_000 + 64 * bytes }

    /// The document's root node (nil for an empty document), after the nesting and expansion checks.
    public static func compose(_ text: String, file: String) throws -> Node? {
        let depth = nestingBound(text)
        guard depth <= maxNesting else {
            throw TesseraError(.invalidParameter, "\(file): the YAML nests about \(depth) levels deep (at most \(maxNesting))",
                               hint: "a config needs a few levels; the file is malformed or hostile")
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            // Yams' message quotes the offending lines: keep its first line so the error stays one line.
            let first = String(describing: error).split(whereSeparator: \.isNewline).first.map(String.init) ?? "syntax error"
            throw TesseraError(.invalidParameter, "\(file): invalid YAML (\(first))", hint: "fix the YAML syntax")
        }
        if let root { try checkExpansion(root, limit: expansionLimit(bytes: text.utf8.count), textBytes: text.utf8.count, file: file) }
        return root
    }

    /// Walks the document as a reader would see it (aliases expanded), counting one per node plus scalar bytes, and
    /// throws as soon as the count passes `limit`: the walk costs at most `limit` steps whatever the expansion.
    static func checkExpansion(_ root: Node, limit: Int, textBytes: Int, file: String) throws {
        var stack: [Node] = [root]
        var size = 0
        while let node = stack.popLast() {
            size += 1
            switch node {
            case let .scalar(s): size += s.string.utf8.count
            case let .sequence(seq): stack.append(contentsOf: seq)
            case let .mapping(map):
                for (k, v) in map {
                    stack.append(k)
                    stack.append(v)
                }
            }
            guard size <= limit else {
                throw TesseraError(.invalidParameter,
                                   "\(file): the YAML's aliases expand its \(textBytes) bytes to more than \(limit) nodes and bytes",
                                   hint: "write the values out instead of nesting aliases of aliases")
            }
        }
    }

    /// An upper bound on the nesting depth of a YAML text, from its characters alone: per line, the indentation
    /// plus the block indicators (`- `, `? `, `: `) plus the open flow collections (`[`, `{`), quoted scalars and
    /// comments skipped.
    static func nestingBound(_ text: String) -> Int {
        var bound = 0, flow = 0
        var inSingle = false, inDouble = false
        var indent = 0, indicators = 0, lineFlow = 0, atLineStart = true
        var previous: UInt8 = 0x0A
        var escaped = false
        var inComment = false
        let bytes = Array(text.utf8)
        for (i, b) in bytes.enumerated() {
            let next: UInt8 = i + 1 < bytes.count ? bytes[i + 1] : 0x0A
            defer { previous = b }
            if b == 0x0A {
                bound = max(bound, indent + indicators + lineFlow)
                indent = 0; indicators = 0; lineFlow = flow; atLineStart = true; inComment = false
                continue
            }
            if inComment { continue }
            if atLineStart {
                if b == 0x20 { indent += 1; continue }
                atLineStart = false
            }
            if inDouble {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inDouble = false }
                continue
            }
            if inSingle {
                if b == 0x27 { inSingle = false }
                continue
            }
            let separated = next == 0x20 || next == 0x0A || next == 0x0D || next == 0x09
            switch b {
            case 0x22: inDouble = true
            case 0x27: inSingle = true
            case 0x23 where previous == 0x20 || previous == 0x09 || previous == 0x0A: inComment = true
            case 0x5B, 0x7B:
                flow += 1
                lineFlow = max(lineFlow, flow)
            case 0x5D, 0x7D: flow = max(0, flow - 1)
            case 0x2D, 0x3F: if separated { indicators += 1 }
            case 0x3A: if separated || next == 0x2C || next == 0x5D || next == 0x7D { indicators += 1 }
            default: break
            }
        }
        return max(bound, indent + indicators + lineFlow)
    }
}

/// Plain YAML scalars resolved as YAML 1.1 (PyYAML, which mergekit uses) resolves them: null, booleans (true/false,
/// yes/no, on/off), integers (decimal, 0x, 0o and 0-prefixed octal, 0b, base 60 with `:`) and floats (with a dot,
/// `.inf`, `.nan`; also `1e-5` without one, which PyYAML leaves a string and mergekit then converts). Numbers that
/// do not fit are errors, not traps. Everything else is a string.
public enum YAMLScalar {
    /// nil for a null scalar.
    public static func resolve(_ text: String, what: String) throws -> MergeValue? {
        switch text {
        case "", "~", "null", "Null", "NULL": return nil
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": return .bool(true)
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": return .bool(false)
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return .number(.infinity)
        case "-.inf", "-.Inf", "-.INF": return .number(-.infinity)
        case ".nan", ".NaN", ".NAN": return .number(.nan)
        default: break
        }
        var body = Substring(text)
        var negative = false
        if let sign = body.first, sign == "-" || sign == "+" { negative = sign == "-"; body = body.dropFirst() }
        let digits = body.filter { $0 != "_" }
        guard let first = digits.first, first.isASCII, first.isNumber || first == "." else { return .string(text) }
        func tooLarge() -> TesseraError {
            TesseraError(.invalidParameter, "\(what): the number \(text) is too large", hint: "write a smaller number")
        }
        func integer(_ s: Substring, radix: Int) throws -> MergeValue? {
            guard !s.isEmpty, s.allSatisfy({ $0.isHexDigit && Int(String($0), radix: radix) != nil }) else { return nil }
            guard let v = Int64(s, radix: radix) else { throw tooLarge() }
            return .number(Double(negative ? -v : v))
        }
        if digits.hasPrefix("0x") { return try integer(digits.dropFirst(2), radix: 16) ?? .string(text) }
        if digits.hasPrefix("0o") { return try integer(digits.dropFirst(2), radix: 8) ?? .string(text) }
        if digits.hasPrefix("0b") { return try integer(digits.dropFirst(2), radix: 2) ?? .string(text) }
        if digits.contains(":") {
            // Base 60: 1:30 is 90. Each part after the first is 0...59.
            let parts = digits.split(separator: ":", omittingEmptySubsequences: false)
            var value: Int64 = 0
            for (k, part) in parts.enumerated() {
                guard !part.isEmpty, part.allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int64(part), k == 0 || p < 60 else { return .string(text) }
                let (times, o1) = value.multipliedReportingOverflow(by: 60)
                let (sum, o2) = times.addingReportingOverflow(p)
                if o1 || o2 { throw tooLarge() }
                value = sum
            }
            return .number(Double(negative ? -value : value))
        }
        if digits.allSatisfy({ $0.isASCII && $0.isNumber }) {
            if digits.count > 1, digits.hasPrefix("0") { return try integer(digits.dropFirst(), radix: 8) ?? .string(text) }
            guard let v = Int64(digits) else { throw tooLarge() }
            return .number(Double(negative ? -v : v))
        }
        if let d = Double(digits), d.isFinite, digits.allSatisfy({ $0.isASCII && ($0.isNumber || ".eE+-".contains($0)) }) {
            return .number(negative ? -d : d)
        }
        return .string(text)
    }
}
