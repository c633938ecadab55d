import TesseraIO
import ArgumentParser
import Foundation
import TesseraCore
import TesseraMerge
import TesseraRepository

struct TaskVectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "taskvec",
        abstract: "Task vectors: τ = θ_ft − θ_base between two revisions, and θ_base + Σ λ_i τ_i.",
        discussion: """
        A task vector is a checkpoint (float32) of differences. Apply any mix of
        vectors: --add (λ = 1), --negate (λ = −1), --vector SPEC=λ (any λ), and
        --finetuned FT=λ to take τ = FT − base on the fly. Analogies are sums:
        τ_a − τ_b + τ_c. Negate with λ = −1 (a lone negative weight cancels under
        mergekit's normalisation).
        Examples:
          tessera taskvec compute --base v1:model.safetensors \\
                --finetuned toxic:model.safetensors -o tau_toxic.safetensors
          tessera taskvec compute --base models/base --finetuned models/toxic -o tau/
          tessera taskvec apply --base v1:model.safetensors \\
                --negate tau_toxic.safetensors -o detox.safetensors
          tessera taskvec apply --base HEAD:model.safetensors \\
                --finetuned math:model.safetensors=0.7 \\
                --finetuned code:model.safetensors=0.3 -o multitask.safetensors
        """,
        subcommands: [Compute.self, Apply.self]
    )

    struct Compute: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "compute", abstract: "Write τ = θ_ft − θ_base as a checkpoint.",
                                                        discussion: "Example:\n  tessera taskvec compute --base v1:m.safetensors \\\n        --finetuned v2:m.safetensors -o tau.safetensors")
        @Option(help: "The base checkpoint (file, folder, REV:path or REV:folder).") var base: String
        @Option(help: "The fine-tuned checkpoint (file, folder, REV:path or REV:folder).") var finetuned: String
        @OptionGroup var outputOptions: CheckpointOutputOptions
        @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

        func run() throws {
            MemoryTuning.reuseLargeBuffers()
            let target = try outputOptions.target()
            _ = try outputOptions.shardSize()
            let resolver = CheckpointResolver(directory: directory)
            defer { resolver.finish() }
            let bc = try resolver.checkpoint(base), fc = try resolver.checkpoint(finetuned)
            try TaskVectorCommand.refuseAdapters([bc, fc])
            let b = bc.source, f = fc.source
            let writer = try OutputCheckpoint(options: outputOptions, target: target, reference: bc, dtype: .f32,
                                              headerReserve: TaskVectorCommand.headerReserve(b, inputs: 2))
            var count = 0
            try TaskVectors.subtract(finetuned: f, base: b) { name, t in try writer.append(name, t); count += 1 }
            let config: JSONValue = .object([("operation", .string("compute")), ("base", .string(base)), ("finetuned", .string(finetuned))])
            let card = ModelCard(title: "", baseModels: OutputCheckpoint.hubIDs([bc, fc]), libraryName: "transformers",
                                 summary: "made by `tessera taskvec compute`: the task vector τ = `\(finetuned)` − `\(base)` (float32 differences)",
                                 inputs: [("base", base), ("fine-tuned", finetuned)], parameters: nil, configYAML: YAMLText.block(config),
                                 configHeading: "Task-vector operation")
            let written = try writer.finish(metadata: [("tessera.taskvec.format", "1"), ("tessera.taskvec.kind", "difference"),
                                                       ("tessera.taskvec.base", base), ("tessera.taskvec.finetuned", finetuned),
                                                       ("tessera.taskvec.input_hashes", TaskVectorCommand.hashes([(base, b), (finetuned, f)], resolver))],
                                            card: card)
            print("wrote τ = \(finetuned) − \(base): \(count) tensors to \(writer.describe(written))")
        }
    }

    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "apply", abstract: "Write θ_base + scale · Σ λ_i τ_i as a checkpoint.",
                                                        discussion: "Example:\n  tessera taskvec apply --base v1:m.safetensors --negate tau.safetensors \\\n        -o out.safetensors")
        @Option(help: "The base checkpoint (file, folder, REV:path or REV:folder).") var base: String
        @Option(help: "A task vector to add (λ = 1).") var add: [String] = []
        @Option(help: "A task vector to subtract (λ = −1).") var negate: [String] = []
        @Option(help: ArgumentHelp("A task vector with its coefficient.", valueName: "SPEC=λ")) var vector: [String] = []
        @Option(help: ArgumentHelp("A fine-tuned checkpoint whose τ = FT − base is applied with λ.", valueName: "FT=λ")) var finetuned: [String] = []
        @Option(help: "Scale applied to the sum of the vectors.") var scale: Double = 1
        @Option(help: "Output dtype (float32, float16, bfloat16); default the base's.") var dtype: String?
        @OptionGroup var outputOptions: CheckpointOutputOptions
        @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

        func validate() throws {
            if add.isEmpty && negate.isEmpty && vector.isEmpty && finetuned.isEmpty {
                throw ValidationError("give at least one of --add, --negate, --vector, --finetuned")
            }
        }

        static func split(_ s: String, option: String) throws -> (String, Double) {
            guard let eq = s.lastIndex(of: "="), let l = Double(s[s.index(after: eq)...]) else {
                throw ValidationError("\(option) takes SPEC=λ, got '\(s)'")
            }
            return (String(s[..<eq]), l)
        }

        func run() throws {
            MemoryTuning.reuseLargeBuffers()
            let target = try outputOptions.target()
            _ = try outputOptions.shardSize()
            let outputDType = try dtype.map(MergeCommand.dtype)
            let resolver = CheckpointResolver(directory: directory)
            defer { resolver.finish() }
            let bc = try resolver.checkpoint(base)
            try TaskVectorCommand.refuseAdapters([bc])
            let b = bc.source
            var vectors: [(vector: TensorSource, coefficient: Double)] = []
            var described: [JSONValue] = []
            var inputs: [(String, TensorSource)] = [(base, b)]
            for a in add { let s = try resolver.source(a); vectors.append((s, 1)); inputs.append((a, s)); described.append(.object([("vector", .string(a)), ("lambda", .double(1))])) }
            for n in negate { let s = try resolver.source(n); vectors.append((s, -1)); inputs.append((n, s)); described.append(.object([("vector", .string(n)), ("lambda", .double(-1))])) }
            for v in vector {
                let (spec, l) = try Self.split(v, option: "--vector")
                let s = try resolver.source(spec); vectors.append((s, l)); inputs.append((spec, s))
                described.append(.object([("vector", .string(spec)), ("lambda", .double(l))]))
            }
            for f in finetuned {
                let (spec, l) = try Self.split(f, option: "--finetuned")
                let ft = try resolver.source(spec)
                vectors.append((try TaskVectorSource(finetuned: ft, base: b), l)); inputs.append((spec, ft))
                described.append(.object([("finetuned", .string(spec)), ("lambda", .double(l))]))
            }
            let writer = try OutputCheckpoint(options: outputOptions, target: target, reference: bc, dtype: outputDType,
                                              headerReserve: TaskVectorCommand.headerReserve(b, inputs: inputs.count))
            var count = 0
            try TaskVectors.apply(base: b, vectors: vectors, scaling: scale, dtype: outputDType) { name, t in
                try writer.append(name, t); count += 1
            }
            var config: [(String, JSONValue)] = [("operation", .string("apply")), ("base", .string(base)), ("scale", .double(scale)),
                                                 ("vectors", .array(described))]
            if let dtype { config.append(("dtype", .string(dtype))) }
            let card = ModelCard(title: "", baseModels: OutputCheckpoint.hubIDs([bc]), libraryName: "transformers",
                                 summary: "made by `tessera taskvec apply`: `\(base)` + \(scale == 1 ? "" : "\(scale) · ")Σ λ τ over \(vectors.count) task vector\(vectors.count == 1 ? "" : "s")",
                                 inputs: [("base", base)] + described.compactMap { d in
                                     (d["vector"] ?? d["finetuned"])?.stringValue.map { (d["vector"] != nil ? "task vector" : "fine-tuned", $0) }
                                 },
                                 parameters: nil, configYAML: YAMLText.block(.object(config)), configHeading: "Task-vector operation")
            let written = try writer.finish(metadata: [("tessera.taskvec.format", "1"), ("tessera.taskvec.kind", "application"),
                                                       ("tessera.taskvec.base", base), ("tessera.taskvec.scale", "\(scale)"),
                                                       ("tessera.taskvec.vectors", JSONValue.array(described).serialized()),
                                                       ("tessera.taskvec.input_hashes", TaskVectorCommand.hashes(inputs, resolver))],
                                            card: card)
            print("wrote \(base) + \(scale == 1 ? "" : "\(scale) · ")Σ λ τ (\(vectors.count) vector(s)): \(count) tensors to \(writer.describe(written))")
        }
    }

    /// An adapter folder's tensors are factors, not weights: their difference is not a task vector.
    static func refuseAdapters(_ checkpoints: [ResolvedCheckpoint]) throws {
        guard let a = checkpoints.first(where: { $0.layout == .adapter }) else { return }
        throw TesseraError(.invalidParameter, "\(a.name) is a PEFT adapter, not a model: its task vector is its ΔW, not a difference of factors",
                           hint: "name the model with it applied, BASE+ADAPTER (e.g. --finetuned models/base+\(a.name)), or subtract adapters on ΔW with `tessera merge A B --weights 1,-1 -o DIR`")
    }

    /// Header space for each output file: names, shapes and the provenance's hashes of every input's tensors.
    static func headerReserve(_ reference: TensorSource, inputs: Int) -> Int {
        let shapes = reference.tensorNames.map { ($0, reference.tensorInfo($0)?.shape ?? []) }
        return SafetensorsStreamWriter.headerEstimate(tensors: shapes, metadataBytes: 8192 + inputs * shapes.reduce(0) { $0 + $1.0.utf8.count + 72 })
    }

    /// `{input: {tensor: sha256}}` for provenance.
    static func hashes(_ inputs: [(String, TensorSource)], _ resolver: CheckpointResolver) -> String {
        JSONValue.object(inputs.map { name, source in
            (name, .object(source.tensorNames.compactMap { t in resolver.tensorHash(source, t).map { (t, JSONValue.string($0)) } }))
        }).serialized()
    }
}
