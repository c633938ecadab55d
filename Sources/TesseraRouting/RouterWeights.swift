import Foundation
import TesseraCore
import TesseraIO

/// A router's learned or computed vectors: for each adapted module, one row of `inputs` floats per expert of the
/// library (library order; rows of experts that do not adapt the module are zero and never read). Arrow keeps its
/// prototypes here, PhatGOOSE and Glider their gates. Stored in router.safetensors as `<module>.<kind>` tensors of
/// shape [experts, inputs].
public struct RouterVectors: Sendable {
    public var kind: String
    public var experts: Int
    /// Module name → [experts × inputs], row-major.
    public var modules: [String: (inputs: Int, values: [Float])]

    public init(kind: String, experts: Int, modules: [String: (inputs: Int, values: [Float])] = [:]) {
        self.kind = kind
        self.experts = experts
        self.modules = modules
    }

    /// The row of `expert` for `module`.
    public func row(_ module: String, expert: Int) -> ArraySlice<Float>? {
        guard let m = modules[module], expert >= 0, expert < experts else { return nil }
        return m.values[(expert * m.inputs)..<((expert + 1) * m.inputs)]
    }

    /// Sets one expert's row of a module (creating the module's matrix, zero elsewhere).
    public mutating func set(_ module: String, expert: Int, _ values: [Float]) throws {
        guard expert >= 0, expert < experts else {
            throw TesseraError(.invalidParameter, "\(module): expert \(expert) is not one of the library's \(experts)", hint: "rebuild the router")
        }
        var m = modules[module] ?? (values.count, [Float](repeating: 0, count: experts * values.count))
        guard m.inputs == values.count else {
            throw TesseraError(.shapeMismatch, "\(module): a \(kind) vector of \(values.count) values where the module has \(m.inputs) inputs",
                               hint: "the vectors were made for another model")
        }
        for (i, v) in values.enumerated() { m.values[expert * m.inputs + i] = v }
        modules[module] = m
    }

    /// The tensors to write: `<module>.<kind>` [experts, inputs] float32.
    public func tensors() throws -> [(String, RawTensor)] {
        try modules.keys.sorted().map { name in
            let m = modules[name]!
            return ("\(name).\(kind)", try RawTensor(floats: m.values, shape: [experts, m.inputs], dtype: .f32))
        }
    }

    /// Reads every `<module>.<kind>` tensor of `source`, checking each is [experts, n] with finite values.
    public static func read(kind: String, experts: Int, from source: TensorSource) throws -> RouterVectors {
        var vectors = RouterVectors(kind: kind, experts: experts)
        let suffix = "." + kind
        for name in source.tensorNames where name.hasSuffix(suffix) {
            guard let info = source.tensorInfo(name), info.shape.count == 2, info.shape[0] == experts, info.shape[1] > 0 else {
                throw TesseraError(.shapeMismatch, "\(source.sourceName): '\(name)' is not a [\(experts), inputs] matrix (one row per expert of the library)",
                                   hint: "the router was built for another library; rebuild it with `tessera route build`")
            }
            let values = try source.floats(name)
            guard values.count == experts * info.shape[1], values.allSatisfy(\.isFinite) else {
                throw TesseraError(.invalidParameter, "\(source.sourceName): '\(name)' holds NaN or infinite values, or fewer than its shape",
                                   hint: "rebuild the router with `tessera route build`")
            }
            vectors.modules[String(name.dropLast(suffix.count))] = (info.shape[1], values)
        }
        return vectors
    }

    /// Checks there is a vector for every expert of every module.
    func check(_ modules: [RoutedModule], method: String) throws {
        for m in modules {
            guard let v = self.modules[m.name] else {
                throw TesseraError(.notFound, "the \(method) router has no \(kind) for module '\(m.name)'",
                                   hint: "the router was built for another library or model; rebuild it with `tessera route build`")
            }
            guard v.inputs == m.inputs else {
                throw TesseraError(.shapeMismatch, "the \(method) router's \(kind) for '\(m.name)' have \(v.inputs) values, but the module has \(m.inputs) inputs",
                                   hint: "the router was built for another model; rebuild it with `tessera route build`")
            }
            if let e = m.experts.first(where: { $0 >= experts }) {
                throw TesseraError(.invalidParameter, "the \(method) router knows \(experts) experts, the library has more (expert \(e + 1))",
                                   hint: "rebuild the router for this library")
            }
        }
    }
}
