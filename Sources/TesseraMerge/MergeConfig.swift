import TesseraCore
import Yams
import TesseraIO

/// A mergekit YAML config, as parsed (model references are still strings).
///
/// Supported keys: `merge_method`, `base_model`, `models` (each `model:` and optional `parameters:`), top-level
/// `parameters`, `dtype`, `out_dtype`, `name`. Parameter values may be scalars, gradient lists of numbers, or lists
/// of `{filter, value}`. A per-model `fisher: PATH` parameter gives the Fisher for `fisher`. `slices`, `modules`,
/// `tokenizer_source`, `tokenizer` and `chat_template` are refused with a clear "not supported" error; any other
/// unknown key is an error too (a typo must not silently change a merge).
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

    public var method: String
    public var baseModel: String?
    public var models: [Model]
    public var parameters: [String: ParameterSetting]
    public var dtype: DType?
    public var outDType: DType?

    public init(method: String, baseModel: String? = nil, models: [Model], parameters: [String: ParameterSetting] = [:],
                dtype: DType? = nil, outDType: DType? = nil) {
        self.method = method
        self.baseModel = baseModel
        self.models = models
        self.parameters = parameters
        self.dtype = dtype
        self.outDType = outDType
    }

    static let unsupportedKeys: [String: String] = [
        "slices": "layer slicing (frankenmerges) is not supported; merge whole models",
        "modules": "per-module slicing is not supported; merge whole models",
        "tokenizer_source": "tokenizer merging is not supported; merge models that share a tokenizer",
        "tokenizer": "tokenizer merging is not supported; merge models that share a tokenizer",
        "chat_template": "chat templates are not part of a weight merge",
    ]

    public static func parse(yaml text: String, file: String = "merge config") throws -> MergeConfig {
        let root = try YAMLDocument.compose(text, file: file)
        guard let root, let top = root.mapping else {
            throw TesseraError(.invalidParameter, "\(file): the config is not a YAML mapping", hint: "see the mergekit config format")
        }
        var method: String?
        var base: String?
        var models: [Model] = []
        var parameters: [String: ParameterSetting] = [:]
        var dtype: DType?
        var outDType: DType?
        for (k, v) in top {
            guard let key = k.string else { throw TesseraError(.invalidParameter, "\(file): a key is not a string", hint: "fix the config") }
            if let why = unsupportedKeys[key] {
                throw TesseraError(.unsupported, "\(file): '\(key)' is not supported", hint: why)
            }
            switch key {
            case "merge_method": method = try string(v, "merge_method", file)
            case "base_model": base = try modelReference(v, "base_model", file)
            case "models":
                guard let seq = v.sequence else { throw TesseraError(.invalidParameter, "\(file): models must be a list", hint: "write models: - model: PATH") }
                for (i, entry) in seq.enumerated() {
                    guard let map = entry.mapping else {
                        throw TesseraError(.invalidParameter, "\(file): models[\(i)] must be a mapping with 'model:'", hint: "write - model: PATH")
                    }
                    var ref: String?
                    var params: [String: ParameterSetting] = [:]
                    var fisher: String?
                    for (mk, mv) in map {
                        switch mk.string ?? "" {
                        case "model": ref = try modelReference(mv, "models[\(i)].model", file)
                        case "parameters":
                            params = try parameterMap(mv, "models[\(i)].parameters", file)
                            if let f = params.removeValue(forKey: "fisher") {
                                guard case let .value(.string(path)) = f else {
                                    throw TesseraError(.invalidParameter, "\(file): models[\(i)].parameters.fisher must be a path", hint: "write fisher: PATH")
                                }
                                fisher = path
                            }
                        default:
                            throw TesseraError(.invalidParameter, "\(file): unknown key '\(mk.string ?? "?")' in models[\(i)]", hint: "a model entry has model: and parameters:")
                        }
                    }
                    guard let ref else { throw TesseraError(.invalidParameter, "\(file): models[\(i)] has no 'model:'", hint: "write - model: PATH") }
                    models.append(Model(model: ref, parameters: params, fisher: fisher))
                }
            case "parameters": parameters = try parameterMap(v, "parameters", file)
            case "dtype": dtype = try dtypeValue(v, "dtype", file)
            case "out_dtype": outDType = try dtypeValue(v, "out_dtype", file)
            case "name": break
            default:
                throw TesseraError(.invalidParameter, "\(file): unknown key '\(key)'",
                                   hint: "supported: merge_method, base_model, models, parameters, dtype, out_dtype")
            }
        }
        guard let method else { throw TesseraError(.invalidParameter, "\(file): merge_method is missing", hint: "set merge_method, e.g. merge_method: ties") }
        _ = try MergeRegistry.method(named: method)
        guard !models.isEmpty else { throw TesseraError(.invalidParameter, "\(file): models is empty", hint: "list the models to merge") }
        return MergeConfig(method: method, baseModel: base, models: models, parameters: parameters, dtype: dtype, outDType: outDType)
    }

    /// Resolves model references to sources. Each distinct reference is resolved once (a model listed twice, or the
    /// base listed among the models, is the same source).
    public func plan(resolver: (String) throws -> TensorSource) throws -> MergePlan {
        var cache: [String: TensorSource] = [:]
        func source(_ ref: String) throws -> TensorSource {
            if let s = cache[ref] { return s }
            let s = try resolver(ref)
            cache[ref] = s
            return s
        }
        let base = try baseModel.map { MergeInputModel(name: $0, source: try source($0)) }
        let inputs = try models.map { m in
            MergeInputModel(name: m.model, source: try source(m.model), parameters: m.parameters,
                            fisher: try m.fisher.map { try source($0) }, fisherName: m.fisher)
        }
        return MergePlan(method: method, base: base, models: inputs, parameters: parameters, dtype: dtype, outDType: outDType)
    }

    // MARK: YAML values

    static func string(_ n: Node, _ what: String, _ file: String) throws -> String {
        guard case .scalar = n, let s = n.string else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a string", hint: "fix the config")
        }
        return s
    }

    static func modelReference(_ n: Node, _ what: String, _ file: String) throws -> String {
        if case .mapping = n {
            throw TesseraError(.unsupported, "\(file): \(what) as a mapping (LoRA or override form) is not supported",
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
            throw TesseraError(.unsupported, "\(file): \(what) '\(s)' is not supported", hint: "use float32, float16 or bfloat16")
        }
    }

    static func parameterMap(_ n: Node, _ what: String, _ file: String) throws -> [String: ParameterSetting] {
        if case let .scalar(s) = n, n.null != nil || s.string.isEmpty { return [:] }
        guard let map = n.mapping else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a mapping of parameter names to values", hint: "write parameters: {weight: 0.5}")
        }
        var out: [String: ParameterSetting] = [:]
        for (k, v) in map {
            guard let key = k.string else { throw TesseraError(.invalidParameter, "\(file): a key in \(what) is not a string", hint: "fix the config") }
            out[key] = try setting(v, "\(what).\(key)", file)
        }
        return out
    }

    static func scalarValue(_ n: Node, _ what: String, _ file: String) throws -> MergeValue {
        guard case let .scalar(s) = n else {
            throw TesseraError(.invalidParameter, "\(file): \(what) must be a scalar", hint: "fix the config")
        }
        // Quoted scalars are strings; plain ones are resolved as YAML 1.1 core types, as mergekit's loader does, by
        // our own code: Yams' integer conversion traps on a long sexagesimal scalar ("1:0:0:0:0:0:0:0:0:0:0:0").
        if s.style == .plain {
            switch try YAMLScalar.resolve(s.string, what: "\(file): \(what)") {
            case nil: throw TesseraError(.invalidParameter, "\(file): \(what) is empty", hint: "give it a value")
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
                            throw TesseraError(.invalidParameter, "\(file): unknown key '\(k.string ?? "?")' in \(what)[\(i)]", hint: "a filter entry has filter: and value:")
                        }
                    }
                    guard let value else { throw TesseraError(.invalidParameter, "\(file): \(what)[\(i)] has no value", hint: "write {filter: ..., value: ...}") }
                    entries.append(FilteredSetting(filter: filter, value: value))
                }
                return .filtered(entries)
            }
            var points: [Double] = []
            for (i, item) in items.enumerated() {
                guard case let .number(d) = try scalarValue(item, "\(what)[\(i)]", file) else {
                    throw TesseraError(.unsupported, "\(file): \(what) is a list of non-numbers; only numeric gradients and filter lists are supported",
                                       hint: "write a number, a list of numbers, or a list of {filter, value}")
                }
                points.append(d)
            }
            guard !points.isEmpty else { throw TesseraError(.invalidParameter, "\(file): \(what) is an empty list", hint: "give it a value") }
            return .gradient(points)
        case .mapping:
            throw TesseraError(.unsupported, "\(file): \(what) is a mapping; parameter values are scalars, gradient lists or lists of {filter, value}",
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
