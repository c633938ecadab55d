import Foundation
import TesseraCore
import TesseraIO

/// A router as committed: `router.json` (this) and `router.safetensors` (its vectors, a tracked checkpoint) in one
/// folder. The config names the library and the base by their paths in the repository, so `tessera eval REV:ROUTER`
/// reads all three at the same revision: a routed checkout is an ordinary commit.
public struct RouterConfig: Sendable, Equatable {
    public static let fileName = "router.json"
    public static let weightsName = "router.safetensors"
    public static let format = "tessera-router"

    public struct Expert: Sendable, Equatable {
        public var name: String
        public var sha256: String
        public var tasks: [String]

        public init(name: String, sha256: String, tasks: [String]) {
            self.name = name
            self.sha256 = sha256
            self.tasks = tasks
        }
    }

    public var method: String
    public var mixing: ExpertMixing
    /// Experts kept per token and module (0: all).
    public var topK: Int
    public var temperature: Double?
    /// Glider's weight of the global scores.
    public var alpha: Double?
    /// The library folder and the base model, as paths in the repository (or as the user named them).
    public var library: String
    public var base: String?
    /// The library's experts when the router was built, in library order (a router's vectors have one row each).
    public var experts: [Expert]
    /// Glider: each expert's task description (library order).
    public var descriptions: [String]?
    /// Glider: the sentence embedder (a MiniLM folder) that embedded the descriptions and embeds each input.
    public var embedder: String?

    public init(method: String, mixing: ExpertMixing, topK: Int, temperature: Double? = nil, alpha: Double? = nil, library: String,
                base: String?, experts: [Expert], descriptions: [String]? = nil, embedder: String? = nil) {
        self.method = method
        self.mixing = mixing
        self.topK = topK
        self.temperature = temperature
        self.alpha = alpha
        self.library = library
        self.base = base
        self.experts = experts
        self.descriptions = descriptions
        self.embedder = embedder
    }

    public init(bytes: [UInt8], name: String) throws {
        guard let json = try? JSONParser.parse(bytes), json.objectValue != nil, json["format"]?.stringValue == Self.format else {
            throw TesseraError(.invalidParameter, "\(name) is not a Tessera router config (\"format\": \"\(Self.format)\")",
                               hint: "build one with `tessera route build`")
        }
        guard json["version"]?.intValue == 1 else {
            throw TesseraError(.unsupported, "\(name): router version \(json["version"]?.intValue.map(String.init) ?? "?") is not one this tessera reads (1)",
                               hint: "upgrade tessera")
        }
        guard let method = json["method"]?.stringValue, let library = json["library"]?.stringValue else {
            throw TesseraError(.invalidParameter, "\(name) names no method or library", hint: "rebuild it with `tessera route build`")
        }
        guard let mixingName = json["mixing"]?.stringValue, let mixing = ExpertMixing(rawValue: mixingName) else {
            throw TesseraError(.invalidParameter, "\(name): \"mixing\" must be merge-after or merge-before", hint: "rebuild it with `tessera route build`")
        }
        let k = json["top_k"]?.intValue ?? 0
        guard k >= 0 else { throw TesseraError(.invalidParameter, "\(name): top_k must be ≥ 0", hint: "rebuild it with `tessera route build`") }
        var experts: [Expert] = []
        for (i, e) in (json["experts"]?.arrayValue ?? []).enumerated() {
            guard let n = e["name"]?.stringValue, let sha = e["sha256"]?.stringValue else {
                throw TesseraError(.invalidParameter, "\(name): expert \(i + 1) has no name or sha256", hint: "rebuild it with `tessera route build`")
            }
            experts.append(Expert(name: n, sha256: sha, tasks: (e["tasks"]?.arrayValue ?? []).compactMap(\.stringValue)))
        }
        guard !experts.isEmpty else { throw TesseraError(.invalidParameter, "\(name) lists no experts", hint: "rebuild it with `tessera route build`") }
        let descriptions = json["descriptions"]?.arrayValue?.compactMap(\.stringValue)
        if let descriptions, descriptions.count != experts.count {
            throw TesseraError(.invalidParameter, "\(name): \(descriptions.count) descriptions for \(experts.count) experts", hint: "rebuild it with `tessera route build`")
        }
        self.init(method: method, mixing: mixing, topK: k, temperature: json["temperature"]?.doubleValue, alpha: json["alpha"]?.doubleValue,
                  library: library, base: json["base"]?.stringValue, experts: experts, descriptions: descriptions,
                  embedder: json["embedder"]?.stringValue)
    }

    public func encoded() -> [UInt8] {
        func string(_ s: String) -> String { var o = ""; JSONValue.writeString(s, to: &o); return o }
        func number(_ d: Double?) -> String { d.map { "\($0)" } ?? "null" }
        var out = "{\n  \"format\": \"\(Self.format)\",\n  \"version\": 1,\n"
        out += "  \"method\": \(string(method)),\n  \"mixing\": \(string(mixing.rawValue)),\n  \"top_k\": \(topK),\n"
        out += "  \"temperature\": \(number(temperature)),\n"
        if method == "glider" {
            out += "  \"alpha\": \(number(alpha)),\n  \"embedder\": \(embedder.map(string) ?? "null"),\n"
        }
        out += "  \"library\": \(string(library)),\n  \"base\": \(base.map(string) ?? "null"),\n  \"experts\": ["
        for (i, e) in experts.enumerated() {
            out += (i == 0 ? "\n" : ",\n") + "    {\"name\": \(string(e.name)), \"sha256\": \(string(e.sha256)), \"tasks\": [\(e.tasks.map(string).joined(separator: ", "))]}"
        }
        out += "\n  ]"
        if let descriptions {
            out += ",\n  \"descriptions\": [" + descriptions.map { "\n    " + string($0) }.joined(separator: ",") + "\n  ]"
        }
        out += "\n}\n"
        return Array(out.utf8)
    }
}

/// Every routing method by name: how to make its router from a config and its vectors (router.safetensors).
public enum RouterRegistry {
    public typealias Factory = @Sendable (RouterConfig, TensorSource?) throws -> ExpertRouter

    public static let methods: [(name: String, summary: String, factory: Factory)] = [
        ("arrow", "top right singular vectors of each expert's ΔW (computed from the library)", { config, weights in
            try ArrowRouter(prototypes: RouterVectors.read(kind: ArrowRouter.kind, experts: config.experts.count, from: try required(weights, config)),
                            topK: config.topK, temperature: config.temperature.map(Float.init))
        }),
        ("phatgoose", "gates trained per expert (`tessera train gates`)", { config, weights in
            try PhatGOOSERouter(gates: RouterVectors.read(kind: PhatGOOSERouter.kind, experts: config.experts.count, from: try required(weights, config)),
                                topK: config.topK, temperature: config.temperature.map(Float.init))
        }),
        ("glider", "PhatGOOSE gates plus a global router over task descriptions (MiniLM)", { config, weights in
            try GliderRouter(gates: RouterVectors.read(kind: PhatGOOSERouter.kind, experts: config.experts.count, from: try required(weights, config)),
                             topK: config.topK, temperature: config.temperature.map(Float.init), alpha: config.alpha.map(Float.init))
        }),
        ("uniform", "every expert 1/N", { _, _ in UniformRouter() }),
        ("oracle", "each example to the expert trained on its task", { config, _ in OracleRouter(expertTasks: config.experts.map(\.tasks)) }),
    ]

    public static var names: [String] { methods.map(\.name) }

    public static func make(_ config: RouterConfig, weights: TensorSource?) throws -> ExpertRouter {
        guard let entry = methods.first(where: { $0.name == config.method }) else {
            throw TesseraError(.usage, "unknown routing method '\(config.method)'", hint: "use one of: \(names.joined(separator: ", "))")
        }
        return try entry.factory(config, weights)
    }

    private static func required(_ weights: TensorSource?, _ config: RouterConfig) throws -> TensorSource {
        guard let weights else {
            throw TesseraError(.notFound, "the \(config.method) router has no \(RouterConfig.weightsName)", hint: "rebuild it with `tessera route build`")
        }
        return weights
    }
}
