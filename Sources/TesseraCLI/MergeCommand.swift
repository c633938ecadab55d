import ArgumentParser
import Foundation
import TesseraCore
import TesseraMerge

/// Options shared by commands that name merge parameters on the command line.
struct MergeParameterOptions: ParsableArguments {
    @Option(name: .customLong("param"), help: ArgumentHelp("A global method parameter, e.g. --param density=0.5 --param normalize=false.", valueName: "name=value"))
    var parameters: [String] = []

    func parsed() throws -> [String: ParameterSetting] {
        var out: [String: ParameterSetting] = [:]
        for p in parameters {
            guard let eq = p.firstIndex(of: "=") else { throw ValidationError("--param takes name=value, got '\(p)'") }
            out[String(p[..<eq])] = MergeParameterOptions.value(String(p[p.index(after: eq)...]))
        }
        return out
    }

    static func value(_ text: String) -> ParameterSetting {
        if let d = Double(text) { return .number(d) }
        if text == "true" || text == "false" { return .bool(text == "true") }
        return .string(text)
    }
}

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge checkpoints (files or REV:path) with a merge method, or run a mergekit YAML config.",
        discussion: """
        Methods (mergekit's semantics by default): linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
        breadcrumbs_ties, slerp, fisher, ours, theirs, base. Inputs are safetensors files or REV:path of tracked
        files, read from the object store with no checkout. The output records its provenance (method, parameters,
        inputs and their tensor hashes) in its metadata: `tessera ls` shows it.
        Examples:
          tessera merge --config merge.yml -o merged.safetensors
          tessera merge --method ties --base main:model.safetensors math:model.safetensors code:model.safetensors \\
                        --weights 1,1 --param density=0.5 -o merged.safetensors
          tessera merge --method linear a.safetensors b.safetensors --weights 0.3,0.7 -o avg.safetensors
        """
    )

    @Argument(help: "Models to merge (files or REV:path). Not with --config.")
    var models: [String] = []

    @Option(help: "A mergekit YAML config (merge_method, base_model, models[].model/.parameters, parameters, dtype).")
    var config: String?

    @Option(help: "The merge method (see above).")
    var method: String?

    @Option(help: "The base model (file or REV:path): task vectors are taken against it.")
    var base: String?

    @Option(help: "Per-model weights, comma-separated, in the order of the models.")
    var weights: String?

    @Option(help: "Per-model densities (TIES, DARE, breadcrumbs), comma-separated.")
    var densities: String?

    @OptionGroup var parameterOptions: MergeParameterOptions

    @Option(help: "Compute in this dtype first (float32, float16, bfloat16), as mergekit's dtype.")
    var dtype: String?

    @Option(name: [.customShort("o"), .long], help: "The output safetensors file.")
    var output: String

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    @Flag(help: "Print a JSON summary.")
    var json = false

    func validate() throws {
        if config == nil && models.isEmpty { throw ValidationError("name the models to merge, or give --config") }
        if config != nil && (!models.isEmpty || method != nil) { throw ValidationError("--config already names the method and the models") }
        if config == nil && method == nil { throw ValidationError("--method is required without --config") }
    }

    func run() throws {
        MemoryTuning.reuseLargeBuffers()
        let resolver = CheckpointResolver(directory: directory)
        defer { resolver.finish() }
        var plan: MergePlan
        if let config {
            let text: String
            do { text = try String(contentsOfFile: config, encoding: .utf8) } catch {
                throw TesseraError(.notFound, "\(config): cannot read the config", hint: "check the path")
            }
            let parsed = try MergeConfig.parse(yaml: text, file: config)
            // Paths in a config are relative to the current directory (as mergekit runs them), else to the config's folder.
            let folder = URL(fileURLWithPath: config).deletingLastPathComponent().path
            plan = try parsed.plan { spec in
                let beside = folder + "/" + spec
                if !FileManager.default.fileExists(atPath: spec), !spec.hasPrefix("/"), FileManager.default.fileExists(atPath: beside) {
                    return try resolver.source(beside)
                }
                return try resolver.source(spec)
            }
        } else {
            let w = try Self.list(weights, count: models.count, name: "--weights")
            let d = try Self.list(densities, count: models.count, name: "--densities")
            var inputs: [MergeInputModel] = []
            for (k, m) in models.enumerated() {
                var p: [String: ParameterSetting] = [:]
                if let w { p["weight"] = .number(w[k]) }
                if let d { p["density"] = .number(d[k]) }
                inputs.append(MergeInputModel(name: m, source: try resolver.source(m), parameters: p))
            }
            let baseModel = try base.map { MergeInputModel(name: $0, source: try resolver.source($0)) }
            plan = MergePlan(method: method!, base: baseModel, models: inputs, parameters: try parameterOptions.parsed(),
                             dtype: try dtype.map(Self.dtype))
        }
        plan = try plan.distributingModelDefaults()
        let started = Date()
        let reference = (plan.base ?? plan.models[0]).source
        let shapes = reference.tensorNames.map { ($0, reference.tensorInfo($0)?.shape ?? []) }
        // Provenance lists each input's tensor hashes: about 70 bytes per tensor and input, plus the names.
        let inputs = plan.models.count + (plan.base == nil ? 0 : 1)
        let metadataBytes = 8192 + inputs * shapes.reduce(0) { $0 + $1.0.utf8.count + 72 }
        let writer = try SafetensorsStreamWriter(path: output, reserveHeader: SafetensorsStreamWriter.headerEstimate(tensors: shapes, metadataBytes: metadataBytes))
        let summary = try MergeDriver.run(plan, float32Sink: { name, values, shape in try writer.append(name, float32: values, shape: shape) }) { name, tensor in
            try writer.append(name, tensor)
        }
        let meta = try MergeProvenance.metadata(plan: plan, summary: summary, tensorHash: resolver.tensorHash)
        try writer.finish(metadata: meta)
        let seconds = Date().timeIntervalSince(started)
        if json {
            printJSON(.object([("output", .string(output)), ("method", .string(summary.method)), ("tensors", .int(summary.tensorCount)),
                               ("parameters", .int(summary.parameterCount)), ("seconds", .double(seconds))]))
        } else {
            print(String(format: "merged %d tensors (%d parameters) with %@ into %@ in %.2f s", summary.tensorCount, summary.parameterCount,
                         summary.method, output, seconds))
        }
    }

    static func list(_ text: String?, count: Int, name: String) throws -> [Double]? {
        guard let text else { return nil }
        let values = text.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard values.count == count else { throw ValidationError("\(name) needs \(count) comma-separated numbers, one per model") }
        return values
    }

    static func dtype(_ s: String) throws -> DType {
        switch s.lowercased() {
        case "float32", "f32", "fp32": return .f32
        case "float16", "f16", "fp16", "half": return .f16
        case "bfloat16", "bf16": return .bf16
        default: throw ValidationError("unknown dtype '\(s)': use float32, float16 or bfloat16")
        }
    }
}
