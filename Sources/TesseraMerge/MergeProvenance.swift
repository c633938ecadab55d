import TesseraCore

/// The safetensors `__metadata__` entries that say how a merged checkpoint was made, so that any number computed from
/// it can be traced to its inputs and replayed:
///
/// - `tessera.merge.method`: the method's name
/// - `tessera.merge.parameters`: JSON `{"global": {...}, "models": [{...}, ...]}`, the settings as written (filter
///   lists and gradients included) plus the defaults in force
/// - `tessera.merge.inputs`: JSON list of `{"role": "base"|"model", "name": NAME, "fisher": NAME?}` (NAME is a path or
///   `REV:path`)
/// - `tessera.merge.input_hashes`: JSON `{NAME: {"tensors": N, "hashes": {tensor: hash}}}` when a hash closure is
///   given and knows the hashes (e.g. the object store's SHA-256), else `{NAME: {"tensors": N}}`
/// - `tessera.merge.dtype`, `tessera.merge.out_dtype` when set
/// - DARE: `tessera.merge.seed` and `tessera.merge.rng` (the generator, see `DropRNG`)
/// - `tessera.merge.format`: "1"
public enum MergeProvenance {
    public static func metadata(plan: MergePlan, summary: MergeSummary? = nil,
                                tensorHash: ((TensorSource, String) -> String?)? = nil) throws -> [(String, String)] {
        let type = try MergeRegistry.method(named: plan.method)
        var global: [(String, JSONValue)] = plan.parameters.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) }
        let resolved = try summary?.resolvedParameters
            ?? MergeParameters.resolve(plan.parameters, definitions: type.globalParameters, tensor: "", layerPosition: 0,
                                       method: type.name, scope: "global")
        for (k, v) in resolved.values.sorted(by: { $0.key < $1.key }) where plan.parameters[k] == nil && !global.contains(where: { $0.0 == k }) {
            global.append((k, v.json))
        }
        let models: [JSONValue] = plan.models.map { m in
            .object(m.parameters.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) })
        }
        let parameters = JSONValue.object([("global", .object(global)), ("models", .array(models))])

        var inputs: [JSONValue] = []
        var hashes: [(String, JSONValue)] = []
        func record(_ role: String, _ m: MergeInputModel) {
            var pairs: [(String, JSONValue)] = [("role", .string(role)), ("name", .string(m.name))]
            if let f = m.fisherName ?? m.fisher?.sourceName { pairs.append(("fisher", .string(f))) }
            inputs.append(.object(pairs))
            guard !hashes.contains(where: { $0.0 == m.name }) else { return }
            let names = m.source.tensorNames
            var entry: [(String, JSONValue)] = [("tensors", .int(names.count))]
            if let tensorHash {
                let known = names.compactMap { n in tensorHash(m.source, n).map { (n, JSONValue.string($0)) } }
                if !known.isEmpty { entry.append(("hashes", .object(known))) }
            }
            hashes.append((m.name, .object(entry)))
        }
        if let b = plan.base { record("base", b) }
        for m in plan.models { record("model", m) }

        var out: [(String, String)] = [
            ("tessera.merge.format", "1"),
            ("tessera.merge.method", type.name),
            ("tessera.merge.parameters", parameters.serialized()),
            ("tessera.merge.inputs", JSONValue.array(inputs).serialized()),
            ("tessera.merge.input_hashes", JSONValue.object(hashes).serialized()),
        ]
        if let d = plan.dtype { out.append(("tessera.merge.dtype", d.rawValue)) }
        if let d = plan.outDType { out.append(("tessera.merge.out_dtype", d.rawValue)) }
        out += summary?.methodProvenance ?? type.init().provenance(parameters: resolved)
        return out
    }
}
