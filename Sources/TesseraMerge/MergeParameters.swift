import TesseraCore
import TesseraIO

/// One parameter value as a merge method sees it, after per-tensor resolution.
public enum MergeValue: Sendable, Equatable, CustomStringConvertible {
    case number(Double)
    case bool(Bool)
    case string(String)

    public var description: String {
        switch self {
        case let .number(d): return d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : "\(d)"
        case let .bool(b): return b ? "true" : "false"
        case let .string(s): return s
        }
    }

    public var json: JSONValue {
        switch self {
        case let .number(d): return .double(d)
        case let .bool(b): return .bool(b)
        case let .string(s): return .string(s)
        }
    }
}

/// A parameter as written in a config, which (as in mergekit) may vary with the tensor:
/// - `.value`: the same for every tensor;
/// - `.gradient`: a list of numbers interpolated linearly by the tensor's layer position t in [0, 1];
/// - `.steps`: a list with non-numbers (booleans, strings), of which entry ⌊t·(n−1)⌋ is taken;
/// - `.filtered`: a list of `{filter, value}`; the first entry whose filter matches the tensor name wins (the filter
///   matches when it is a substring of the tensor's name, as mergekit 0.1.5 tests it (`filter in tensor_name`, no
///   wildcards: `self_attn` matches `model.layers.3.self_attn.q_proj.weight`); an entry without filter, or with
///   filter `*`, matches every tensor).
public indirect enum ParameterSetting: Sendable, Equatable {
    case value(MergeValue)
    case gradient([Double])
    /// A list of non-numbers (booleans, strings): mergekit picks entry ⌊t·(n−1)⌋, without interpolating.
    case steps([MergeValue])
    case filtered([FilteredSetting])

    public static func number(_ d: Double) -> ParameterSetting { .value(.number(d)) }
    public static func bool(_ b: Bool) -> ParameterSetting { .value(.bool(b)) }
    public static func string(_ s: String) -> ParameterSetting { .value(.string(s)) }

    /// The value for one tensor, or nil when a filter list matches nothing (the parameter is then unset).
    public func evaluate(tensor name: String, layerPosition t: Double) -> MergeValue? {
        switch self {
        case let .value(v):
            return v
        case let .gradient(points):
            guard !points.isEmpty else { return nil }
            if points.count == 1 { return .number(points[0]) }
            let scaled = min(max(t, 0), 1) * Double(points.count - 1)
            let i0 = Int(scaled.rounded(.down)), i1 = min(points.count - 1, i0 + 1)
            let frac = scaled - Double(i0)
            return .number((1 - frac) * points[i0] + frac * points[i1])
        case let .steps(values):
            guard !values.isEmpty else { return nil }
            return values[min(values.count - 1, Int((min(max(t, 0), 1) * Double(values.count - 1)).rounded(.down)))]
        case let .filtered(entries):
            for e in entries {
                guard let f = e.filter, f != "*" else { return e.value.evaluate(tensor: name, layerPosition: t) }
                if !name.isEmpty, name.contains(f) { return e.value.evaluate(tensor: name, layerPosition: t) }
            }
            return nil
        }
    }

    /// This setting where it gives a value for a tensor, else `other`. mergekit looks a parameter up scope by scope
    /// (a model's own, the slice's, the config's) and takes the first scope that gives a value for the tensor: a
    /// filter list that matches nothing falls through to the next scope instead of leaving the parameter unset.
    public func fallingBack(to other: ParameterSetting) -> ParameterSetting {
        guard case let .filtered(entries) = self else { return self }
        if entries.contains(where: { $0.filter == nil || $0.filter == "*" }) { return self }
        return .filtered(entries + [FilteredSetting(filter: nil, value: other)])
    }

    /// JSON form for provenance: the setting as written, so that a merge can be replayed.
    public var json: JSONValue {
        switch self {
        case let .value(v): return v.json
        case let .gradient(p): return .array(p.map { JSONValue.double($0) })
        case let .steps(values): return .array(values.map(\.json))
        case let .filtered(entries):
            return .array(entries.map { e in
                var pairs: [(String, JSONValue)] = []
                if let f = e.filter { pairs.append(("filter", .string(f))) }
                pairs.append(("value", e.value.json))
                return .object(pairs)
            })
        }
    }
}

public struct FilteredSetting: Sendable, Equatable {
    public var filter: String?
    public var value: ParameterSetting
    public init(filter: String?, value: ParameterSetting) {
        self.filter = filter
        self.value = value
    }
}

/// What a method accepts: a name (plus accepted spellings), a kind, and a default (nil: required).
public struct ParameterDefinition: Sendable {
    public enum Kind: String, Sendable { case number, bool, string }
    public let name: String
    public let kind: Kind
    public let defaultValue: MergeValue?
    public let aliases: [String]
    public let help: String

    public init(_ name: String, _ kind: Kind, default defaultValue: MergeValue?, aliases: [String] = [], help: String = "") {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.aliases = aliases
        self.help = help
    }

    public static func number(_ name: String, _ d: Double?, aliases: [String] = [], help: String = "") -> ParameterDefinition {
        ParameterDefinition(name, .number, default: d.map { .number($0) }, aliases: aliases, help: help)
    }
    public static func bool(_ name: String, _ b: Bool?, aliases: [String] = [], help: String = "") -> ParameterDefinition {
        ParameterDefinition(name, .bool, default: b.map { .bool($0) }, aliases: aliases, help: help)
    }
    public static func string(_ name: String, _ s: String?, aliases: [String] = [], help: String = "") -> ParameterDefinition {
        ParameterDefinition(name, .string, default: s.map { .string($0) }, aliases: aliases, help: help)
    }
}

/// Parameter values resolved for one tensor (defaults filled in, names canonical, kinds checked).
public struct MergeParameters: Sendable, Equatable {
    public var values: [String: MergeValue]
    public init(_ values: [String: MergeValue] = [:]) { self.values = values }

    public func has(_ key: String) -> Bool { values[key] != nil }

    public func double(_ key: String) throws -> Double {
        switch values[key] {
        case let .number(d)?: return d
        case let .bool(b)?: return b ? 1 : 0
        case let v?: throw TesseraError(.invalidParameter, "parameter '\(key)' must be a number, not '\(v)'", hint: "write a number, e.g. \(key): 0.5")
        case nil: throw TesseraError(.invalidParameter, "parameter '\(key)' is required", hint: "set \(key) in the merge config")
        }
    }

    public func bool(_ key: String) throws -> Bool {
        switch values[key] {
        case let .bool(b)?: return b
        case let .number(d)?: return d != 0
        case let .string(s)? where ["true", "false"].contains(s.lowercased()): return s.lowercased() == "true"
        case let v?: throw TesseraError(.invalidParameter, "parameter '\(key)' must be true or false, not '\(v)'", hint: "write \(key): true or \(key): false")
        case nil: throw TesseraError(.invalidParameter, "parameter '\(key)' is required", hint: "set \(key) in the merge config")
        }
    }

    public func string(_ key: String) throws -> String {
        switch values[key] {
        case let v?: return v.description
        case nil: throw TesseraError(.invalidParameter, "parameter '\(key)' is required", hint: "set \(key) in the merge config")
        }
    }

    /// Resolves settings for one tensor against a method's definitions: canonical names, defaults, kind checks.
    /// Unknown names are an error naming the parameter and listing the known ones.
    public static func resolve(_ settings: [String: ParameterSetting], definitions: [ParameterDefinition],
                               tensor: String, layerPosition t: Double, method: String, scope: String) throws -> MergeParameters {
        var out: [String: MergeValue] = [:]
        for (rawName, setting) in settings {
            guard let def = definitions.first(where: { $0.name == rawName || $0.aliases.contains(rawName) }) else {
                let known = definitions.map(\.name).joined(separator: ", ")
                throw TesseraError(.invalidParameter, "\(method): unknown \(scope) parameter '\(rawName)'",
                                   hint: known.isEmpty ? "\(method) takes no \(scope) parameters" : "\(method) takes \(scope) parameters: \(known)")
            }
            guard let v = setting.evaluate(tensor: tensor, layerPosition: t) else { continue }
            switch (def.kind, v) {
            case (.number, .number), (.bool, .bool), (.string, .string), (.string, .number), (.bool, .number): break
            case (.bool, .string(let s)) where ["true", "false"].contains(s.lowercased()): break
            default:
                throw TesseraError(.invalidParameter, "\(method): \(scope) parameter '\(def.name)' must be a \(def.kind.rawValue), not '\(v)' (tensor '\(tensor)')",
                                   hint: "fix the value of \(def.name) in the merge config")
            }
            out[def.name] = v
        }
        for def in definitions where out[def.name] == nil {
            if let d = def.defaultValue { out[def.name] = d }
        }
        return MergeParameters(out)
    }
}

/// The layer position t in [0, 1] that gradient parameters are interpolated at: the tensor's layer index (the first
/// purely numeric component of its dotted name, e.g. `model.layers.7.mlp...`) over the number of layers minus one.
/// Tensors outside the layers sit at t = 0, before and after the layers, as mergekit 0.1.5 places them.
public struct LayerPositions: Sendable {
    public let layerCount: Int
    public init(tensorNames: [String]) {
        var maxIndex = -1
        for n in tensorNames { if let i = LayerPositions.layerIndex(n) { maxIndex = max(maxIndex, i) } }
        layerCount = maxIndex + 1
    }

    public static func layerIndex(_ name: String) -> Int? {
        for part in name.split(separator: ".") where !part.isEmpty && part.allSatisfy(\.isASCII) && part.allSatisfy(\.isNumber) {
            return Int(part)
        }
        return nil
    }

    /// A tensor's position t ∈ [0, 1] for gradients: layer index / (layers − 1) inside the layers (1 for a model of
    /// one layer, as mergekit's planner sets it); 0 outside them,
    /// for the weights before the layers (embeddings) and, as mergekit 0.1.5 evaluates them, after (final norm,
    /// lm_head: mergekit's planner reads them with the module's t = 0 since its commit fd5eb19; before, it used 1).
    public func position(_ name: String) -> Double {
        if let i = LayerPositions.layerIndex(name) {
            return layerCount > 1 ? Double(i) / Double(layerCount - 1) : 1
        }
        return 0
    }
}
