import ArgumentParser
import Foundation
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraRepository

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
    /// The registry's methods, wrapped at 78 columns (help text must not depend on ArgumentParser's wrapping).
    static var methodsParagraph: String {
        var lines: [String] = [], line = ""
        for word in ("Methods (mergekit's semantics by default): " + MergeRegistry.names.joined(separator: ", ") + ".").split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > 78 {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        return (lines + [line]).joined(separator: "\n")
    }

    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge checkpoints (files or REV:path) with a merge method, or run a mergekit YAML config.",
        discussion: """
        \(methodsParagraph)
        Inputs (models, --base, a config's model: and
        base_model:) are safetensors files, Hugging Face folders (single, sharded or
        PEFT adapter), shard index files, REV:path and REV:folder (read from the
        object store with no checkout); a config's MODEL+ADAPTER applies a LoRA.
        Configs run as mergekit runs them: models: or slices: (layer stacking and
        frankenmerges), gradients, filters, tokenizer_source, chat_template, and
        several documents as mergekit-multi. -o FILE.safetensors writes one file;
        -o FOLDER writes a Hugging Face folder: the weights (sharded above
        --max-shard-size), the base model's config and tokenizer files, and a model
        card. Nothing tessera did not write is replaced. The output records its
        provenance (method, parameters, inputs and their tensor hashes) in its
        metadata: `tessera ls` shows it.
        Examples:
          tessera merge --config merge.yml -o merged-model
          tessera merge --method ties --base main:model.safetensors \\
                math:model.safetensors code:model.safetensors \\
                --weights 1,1 --param density=0.5 -o merged.safetensors
          tessera merge --method linear models/a models/b --weights 0.3,0.7 -o avg/
        """
    )

    @Argument(help: "Models to merge (files, folders, REV:path, REV:folder). Not with --config.")
    var models: [String] = []

    @Option(help: "A mergekit YAML config (see above and docs/commands.md).")
    var config: String?

    @Option(help: ArgumentHelp("A multi-document config's intermediate merges go here, by name, and are reused when present (default: a temporary folder, removed afterwards).", valueName: "dir"))
    var intermediateDir: String?

    @Option(help: "The merge method (see above).")
    var method: String?

    @Option(help: "The base model (file, folder, REV:path, REV:folder): task vectors are taken against it.")
    var base: String?

    @Option(help: "Per-model weights, comma-separated, in the order of the models.")
    var weights: String?

    @Option(help: ArgumentHelp("How adapter folders combine (PEFT's combination_type): cat (default, exact), svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd on ΔW; linear, ties, dare_linear, dare_ties, magnitude_prune on the factors (lossy).", valueName: "type"))
    var combination: String?

    @Option(help: "Per-model densities (TIES, DARE, breadcrumbs), comma-separated.")
    var densities: String?

    @OptionGroup var parameterOptions: MergeParameterOptions

    @Option(help: "Compute in this dtype first (float32, float16, bfloat16), as mergekit's dtype.")
    var dtype: String?

    @OptionGroup var outputOptions: CheckpointOutputOptions

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    @Flag(help: "Print a JSON summary.")
    var json = false

    func validate() throws {
        if config == nil && models.isEmpty { throw ValidationError("name the models to merge, or give --config") }
        if config != nil && (!models.isEmpty || method != nil) { throw ValidationError("--config already names the method and the models") }
    }

    func run() throws {
        MemoryTuning.reuseLargeBuffers()
        // Where the output goes is settled first: a refusal must come before any work.
        let target = try outputOptions.target()
        _ = try outputOptions.shardSize()
        guard let config else {
            if try mergeAdaptersIfAny(target: target) { return }
            guard method != nil else { throw ValidationError("--method is required without --config") }
            return try merge(nil, target: target)
        }
        let text: String
        do { text = try String(contentsOfFile: config, encoding: .utf8) } catch {
            throw TesseraError(.notFound, "\(config): cannot read the config", hint: "check the path")
        }
        let documents = try MergeConfig.parseDocuments(yaml: text, file: config)
        guard documents.count > 1 else { return try merge((documents[0], text), target: target) }
        // mergekit-multi: each named merge is written to the intermediate folder under its name, where later ones
        // read it; the final one (unnamed) goes to -o.
        let (order, final) = try MergeConfig.runOrder(documents, file: config)
        let keep = intermediateDir != nil
        let folder = intermediateDir ?? FileManager.default.temporaryDirectory.appendingPathComponent("tessera-multi-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { if !keep { try? FileManager.default.removeItem(atPath: folder) } }
        var names: [String: String] = [:]
        for d in documents { if let n = d.name { names[n] = folder + "/" + n } }
        for k in order {
            let doc = documents[k]
            if k == final {
                try merge((doc, text), target: target, names: names)
            } else {
                let path = names[doc.name!]!
                // As mergekit-multi's default (--lazy): a result already in a kept folder is used as it is.
                if keep, FileManager.default.fileExists(atPath: path + "/config.json") { continue }
                try merge((doc, text), target: try CheckpointOutputTarget.resolve(path + "/"), names: names)
            }
        }
    }

    /// Runs one merge: a config document (with the text the model card quotes) or the command line's models.
    /// `names` maps the names of a multi-document config's earlier merges to where they were written.
    func merge(_ document: (config: MergeConfig, text: String)?, target: CheckpointOutputTarget, names: [String: String] = [:]) throws {
        let resolver = CheckpointResolver(directory: directory)
        defer { resolver.finish() }
        var resolved: [String: ResolvedCheckpoint] = [:]
        func open(_ spec: String, as name: String) throws -> TensorSource {
            let c = try resolver.checkpoint(spec)
            resolved[name] = c
            return c.source
        }
        // Paths in a config are relative to the current directory (as mergekit runs them), else to the config's folder.
        func locate(_ spec: String) -> String {
            if let path = names[spec] { return path }
            guard let config else { return spec }
            let beside = URL(fileURLWithPath: config).deletingLastPathComponent().path + "/" + spec
            if !FileManager.default.fileExists(atPath: spec), !spec.hasPrefix("/"), FileManager.default.fileExists(atPath: beside) { return beside }
            return spec
        }
        /// A config's model reference: a checkpoint, or mergekit's `MODEL+ADAPTER` (a PEFT LoRA adapter applied to
        /// its model; the output's side files are the model's).
        func openReference(_ spec: String) throws -> TensorSource {
            let parts = spec.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 2, !FileManager.default.fileExists(atPath: locate(spec)) else { return try open(locate(spec), as: spec) }
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw TesseraError(.invalidParameter, "\(spec): no such file or folder, and not MODEL+ADAPTER (one model, one adapter)",
                                   hint: "write model: MODEL+ADAPTER, e.g. models/base+adapters/lora")
            }
            let model = try resolver.checkpoint(locate(parts[0]))
            let adapter = try resolver.checkpoint(locate(parts[1]))
            guard adapter.layout == .adapter, let folder = adapter.sideFiles,
                  (try folder.fileNames()).contains(CheckpointFolderLayout.adapterConfigName) else {
                throw TesseraError(.invalidParameter, "\(spec): '\(parts[1])' is not a PEFT adapter folder",
                                   hint: "MODEL+ADAPTER names a model and a folder with adapter_config.json and adapter_model.safetensors")
            }
            let source = try LoRAAppliedSource(base: model.source, adapter: adapter.source,
                                               adapterConfig: try folder.read(CheckpointFolderLayout.adapterConfigName, limit: 16 << 20), name: spec)
            var applied = model
            applied.name = spec
            applied.source = source
            resolved[spec] = applied
            return source
        }
        var program: MergeProgram
        let configYAML: String
        var parsedConfig: MergeConfig?
        if let (parsed, text) = document {
            configYAML = text
            parsedConfig = parsed
            program = try parsed.program { spec in try openReference(spec) }
        } else {
            let w = try Self.list(weights, count: models.count, name: "--weights")
            let d = try Self.list(densities, count: models.count, name: "--densities")
            var inputs: [MergeInputModel] = []
            for (k, m) in models.enumerated() {
                var p: [String: ParameterSetting] = [:]
                if let w { p["weight"] = .number(w[k]) }
                if let d { p["density"] = .number(d[k]) }
                inputs.append(MergeInputModel(name: m, source: try resolved[m]?.source ?? open(m, as: m), parameters: p))
            }
            let baseModel = try base.map { MergeInputModel(name: $0, source: try resolved[$0]?.source ?? open($0, as: $0)) }
            let plan = MergePlan(method: method!, base: baseModel, models: inputs, parameters: try parameterOptions.parsed(),
                                 dtype: try dtype.map(Self.dtype))
            configYAML = Self.configYAML(plan)
            program = MergeProgram(segments: [plan], summaryPlan: plan, outputLayerOrigins: nil, referenceName: plan.base?.name ?? plan.models[0].name)
        }
        program.segments = try program.segments.map { try $0.distributingModelDefaults() }
        program.summaryPlan = try program.summaryPlan.distributingModelDefaults()
        if program.segments.count == 1 { program.summaryPlan = program.segments[0] }
        let plan = program.summaryPlan
        // The tokenizer choice is checked before the output is started: a refusal leaves nothing behind.
        var tokenizer = TokenizerFiles.Result()
        if let parsedConfig, let config {
            tokenizer = try TokenizerFiles.plan(config: parsedConfig, file: config, reference: program.referenceName) { spec in
                if let c = resolved[spec] { return c }
                _ = try openReference(spec)
                return resolved[spec]!
            }
        }
        if let vocabulary = tokenizer.vocabulary {
            // Inputs whose vocabularies differ: their embedding rows are permuted onto the output vocabulary as read.
            program.segments = program.segments.map(vocabulary.remapping)
        }
        let started = Date()
        let shapes = program.outputShapes
        // Provenance lists each input's tensor hashes: about 70 bytes per tensor and input, plus the names.
        let inputs = plan.models.count + (plan.base == nil ? 0 : 1)
        let metadataBytes = 8192 + inputs * shapes.reduce(0) { $0 + $1.0.utf8.count + 72 }
        let output = try OutputCheckpoint(options: outputOptions, target: target, reference: resolved[program.referenceName],
                                          dtype: plan.outDType ?? plan.dtype,
                                          headerReserve: SafetensorsStreamWriter.headerEstimate(tensors: shapes, metadataBytes: metadataBytes))
        output.layerOrigins = program.outputLayerOrigins
        output.extraSideFiles = tokenizer.files
        output.replacesTokenizer = tokenizer.replacesTokenizer
        output.vocabularySize = tokenizer.vocabulary?.rows
        // A bar over the tensors on a terminal (a merge of a large model takes a while); quiet when piped.
        let bar = ProgressReporter(label: "tessera: merging (\(plan.method))", total: shapes.count)
        var summary: MergeSummary?
        var done = 0
        // Each tensor is written while the next one merges.
        let writer = BackgroundTensorWriter(output)
        do {
            for segment in program.segments {
                let before = done
                let s = try MergeDriver.run(segment, float32Sink: { name, values, shape in try writer.append(name, float32: values, shape: shape) },
                                            mappedSink: { name, mapped, shape in try writer.append(name, mapped: mapped, shape: shape) },
                                            progress: { k, _ in bar.update(completed: before + k) }) { name, tensor in
                    try writer.append(name, tensor)
                }
                done += s.tensorCount
                if var total = summary {
                    total.tensorCount += s.tensorCount
                    total.parameterCount += s.parameterCount
                    summary = total
                } else {
                    summary = s
                }
            }
        } catch {
            // No write may still be under way when the output is dropped (it removes its temporary files).
            try? writer.drain()
            throw error
        }
        try writer.drain()
        bar.finish()
        var meta = try MergeProvenance.metadata(plan: plan, summary: summary, tensorHash: resolver.tensorHash)
        if let parsedConfig, !parsedConfig.slices.isEmpty { meta.append(("tessera.merge.slices", Self.slicesJSON(parsedConfig).serialized())) }
        let ordered = ([plan.base?.name].compactMap { $0 } + plan.models.map(\.name)).compactMap { resolved[$0] }
        let written = try output.finish(metadata: meta, card: Self.card(plan: plan, metadata: meta, configYAML: configYAML, inputs: ordered))
        let summaryOut = summary!
        let seconds = Date().timeIntervalSince(started)
        if json {
            printJSON(.object([("output", .string(target.path)), ("method", .string(summaryOut.method)), ("tensors", .int(summaryOut.tensorCount)),
                               ("parameters", .int(summaryOut.parameterCount)), ("seconds", .double(seconds)),
                               ("files", .array(written.files.map { .string($0) }))]))
        } else {
            print(String(format: "merged %d tensors (%d parameters) with %@ into %@ in %.2f s", summaryOut.tensorCount, summaryOut.parameterCount,
                         summaryOut.method, output.describe(written), seconds))
        }
    }

    /// The model card of a merge: method, inputs, parameters in force and the configuration.
    static func card(plan: MergePlan, metadata: [(String, String)], configYAML: String, inputs: [ResolvedCheckpoint]) -> ModelCard {
        let method = metadata.first { $0.0 == "tessera.merge.method" }?.1 ?? plan.method
        var summary = "made by merging \(plan.models.count) model\(plan.models.count == 1 ? "" : "s") with the \(method) method"
        if let b = plan.base { summary += ", with `\(b.name)` as the base model" }
        var listed: [(role: String, name: String)] = []
        if let b = plan.base { listed.append(("base model", b.name)) }
        for (k, m) in plan.models.enumerated() where !plan.isBase(k) { listed.append(("model", m.name)) }
        // The provenance's parameters, as a reader wants them: the global ones, then each model's own.
        let recorded = metadata.first { $0.0 == "tessera.merge.parameters" }.flatMap { try? JSONParser.parse($0.1) }
        var parameters = recorded?["global"]?.objectValue ?? []
        let perModel: [JSONValue] = zip(plan.models, recorded?["models"]?.arrayValue ?? []).compactMap { m, p in
            guard let pairs = p.objectValue, !pairs.isEmpty else { return nil }
            return .object([("model", .string(m.name))] + pairs)
        }
        if !perModel.isEmpty { parameters.append(("models", .array(perModel))) }
        return ModelCard(title: "", baseModels: OutputCheckpoint.hubIDs(inputs), libraryName: "transformers", summary: summary,
                         inputs: listed, parameters: .object(parameters), configYAML: configYAML,
                         configHeading: "Configuration (mergekit YAML; `tessera merge --config` runs it)")
    }

    /// The slices of a `slices:` config for provenance: each slice's method, base and sources with their layers.
    static func slicesJSON(_ config: MergeConfig) -> JSONValue {
        .array(config.slices.map { s in
            var pairs: [(String, JSONValue)] = []
            if let b = s.baseModel ?? config.baseModel { pairs.append(("base_model", .string(b))) }
            pairs.append(("sources", .array(s.sources.map { src in
                .object([("model", .string(src.model)), ("layer_range", .array([.int(src.layers.lowerBound), .int(src.layers.upperBound)]))])
            })))
            return .object(pairs)
        })
    }

    /// A mergekit config equivalent to a command-line merge.
    static func configYAML(_ plan: MergePlan) -> String {
        var pairs: [(String, JSONValue)] = [("merge_method", .string(plan.method))]
        if let b = plan.base { pairs.append(("base_model", .string(b.name))) }
        pairs.append(("models", .array(plan.models.map { m in
            var entry: [(String, JSONValue)] = [("model", .string(m.name))]
            if !m.parameters.isEmpty {
                entry.append(("parameters", .object(m.parameters.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) })))
            }
            return .object(entry)
        })))
        if !plan.parameters.isEmpty {
            pairs.append(("parameters", .object(plan.parameters.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) })))
        }
        if let d = plan.dtype { pairs.append(("dtype", .string(Self.mergekitName(d)))) }
        return YAMLText.block(.object(pairs))
    }

    static func mergekitName(_ d: DType) -> String {
        switch d {
        case .f16: return "float16"
        case .bf16: return "bfloat16"
        default: return "float32"
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
