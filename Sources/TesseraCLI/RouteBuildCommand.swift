import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMath
import TesseraMerge
import TesseraRepository
import TesseraRouting

struct RouteBuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Write a router over a library as a folder to commit.",
        discussion: """
        Methods: arrow (each expert's top right singular vector of ΔW per
        module, computed exactly here; score |<x, v>|/T, T = 1), phatgoose
        (gates trained with `tessera train gates`, in each expert's folder as
        phatgoose_gates.safetensors or in --gates DIR as NAME.safetensors;
        score LN(x)·LN(g)/√d), glider (PhatGOOSE plus a global score: the
        cosine of the input's MiniLM embedding with each expert's task
        description, written by the base model from three of its training
        examples unless --descriptions FILE gives them), uniform (1/N) and
        oracle (each example to the expert trained on its task).
        --top-k 0 keeps every expert. --mixing merge-after mixes the experts'
        outputs, merge-before their parameters (recorded in router.json).
        Examples:
          tessera route build --method arrow --experts experts -o routers/arrow
          tessera route build --method phatgoose --experts experts -o routers/pg
          tessera route build --method glider --experts lib --embedder minilm -o g
        """
    )

    @Option(help: "arrow, phatgoose, glider, uniform or oracle.") var method: String
    @Option(help: "The expert library folder.") var experts: String
    @Option(name: [.customShort("o"), .long], help: "The router folder to write.") var output: String
    @Option(help: "Experts kept per token and module (0: all; default 2 for arrow, phatgoose and glider, else 0).") var topK: Int?
    @Option(help: "Divide the scores by T (default: 1 for arrow, √d for phatgoose and glider).") var temperature: Double?
    @Option(help: "merge-after (mix outputs) or merge-before (mix parameters).") var mixing: String = ExpertMixing.mergeAfter.rawValue
    @Option(help: "PhatGOOSE/Glider: a folder of NAME.safetensors gate files (default: each expert's phatgoose_gates.safetensors).") var gates: String?
    @Option(help: "Glider: the weight α of the global scores (default 1).") var alpha: Double?
    @Option(help: "Glider: the sentence embedder (a MiniLM folder in the repository).") var embedder: String?
    @Option(help: "Glider: a JSON object {expert name: description} instead of descriptions written by the base model.") var descriptions: String?
    @Option(help: "The base model (default: the library's).") var base: String?
    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).") var threads: Int = Linalg.defaultThreads
    @Flag(help: "Replace an existing router folder.") var force = false
    @Flag(help: "Print a JSON summary.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func validate() throws {
        guard RouterRegistry.names.contains(method) else {
            throw ValidationError("--method \(method): use one of \(RouterRegistry.names.joined(separator: ", "))")
        }
        guard ExpertMixing(rawValue: mixing) != nil else { throw ValidationError("--mixing is merge-after or merge-before") }
        if let topK, topK < 0 { throw ValidationError("--top-k must be 0 (all) or more") }
        if method == "glider", embedder == nil { throw ValidationError("--method glider needs --embedder DIR (a MiniLM folder)") }
    }

    func run() throws {
        Linalg.setThreads(threads)
        let started = DispatchTime.now().uptimeNanoseconds
        if FileManager.default.fileExists(atPath: output), !force {
            throw TesseraError(.usage, "\(output) already exists", hint: "pass --force to replace it, or choose another -o")
        }
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        let library = try ExpertLibraryFiles.load(experts, resolver: resolver)
        let k = topK ?? (["arrow", "phatgoose", "glider"].contains(method) ? 2 : 0)
        var config = RouterConfig(method: method, mixing: ExpertMixing(rawValue: mixing) ?? .mergeAfter, topK: k, temperature: temperature,
                                  alpha: method == "glider" ? (alpha ?? 1) : nil, library: experts, base: base ?? library.index.base,
                                  experts: RouterBuilding.configExperts(library))
        var tensors: [(String, RawTensor)] = []
        var computeSeconds: Double?
        switch method {
        case "arrow":
            let t0 = DispatchTime.now().uptimeNanoseconds
            tensors = try RouterBuilding.arrowPrototypes(library).tensors()
            computeSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        case "phatgoose", "glider":
            tensors = try RouterBuilding.gates(library, folder: gates, resolver: resolver).tensors()
        default:
            break
        }
        if method == "glider", let embedder {
            let texts = try gliderDescriptions(library, resolver: resolver)
            config.descriptions = texts
            config.embedder = embedder
            let model = try GliderFiles.loadEmbedder(embedder, resolver: resolver)
            let vectors = try model.embed(texts)
            let d = vectors.first?.count ?? 0
            tensors.append((GliderFiles.embeddingsName, try RawTensor(floats: vectors.flatMap { $0 }, shape: [vectors.count, d], dtype: .f32)))
            if !json { for (e, t) in zip(library.names, texts) { print("  \(e): \(t)") } }
        }
        // Check the router can route this library on its base before writing anything.
        let checkRouter = try RouterRegistry.make(config, weights: tensors.isEmpty ? nil : InMemoryTensors(tensors))
        if let baseName = config.base, let model = try? ResolvedModel.resolve(baseName, resolver: resolver), case let .causal(lm, _) = model.kind {
            try checkRouter.prepare(modules: try RoutedAttachment.modules(library.inputs, on: lm))
        }

        let staging = output.hasSuffix("/") ? String(output.dropLast()) + ".building" : output + ".building-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        var published = false
        defer { if !published { try? FileManager.default.removeItem(atPath: staging) } }
        try AtomicFile.write(Data(config.encoded()), to: staging + "/" + RouterConfig.fileName)
        if !tensors.isEmpty {
            try SafetensorsWriter.write(tensors: tensors, metadata: [("format", "tessera-router"), ("method", method)], to: staging + "/" + RouterConfig.weightsName)
        }
        if FileManager.default.fileExists(atPath: output) {
            let old = output + ".replaced-\(UUID().uuidString.prefix(8))"
            try FileManager.default.moveItem(atPath: output, toPath: old)
            try FileManager.default.moveItem(atPath: staging, toPath: output)
            try? FileManager.default.removeItem(atPath: old)
        } else {
            try FileManager.default.moveItem(atPath: staging, toPath: output)
        }
        published = true
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let modules = Set(tensors.map(\.0)).count
        if json {
            printJSON(.object([("router", .string(output)), ("method", .string(method)), ("experts", .number(Double(library.experts.count), text: "\(library.experts.count)")),
                               ("top_k", .number(Double(k), text: "\(k)")), ("mixing", .string(mixing)), ("tensors", .number(Double(modules), text: "\(modules)")),
                               ("seconds", .number(seconds, text: String(format: "%.3f", seconds))),
                               ("prototype_seconds", computeSeconds.map { .number($0, text: String(format: "%.3f", $0)) } ?? .null)]))
        } else {
            print("wrote \(output): \(method) over \(library.experts.count) experts of \(experts), top-k \(k == 0 ? "all" : String(k)), \(mixing), \(modules) tensors (\(String(format: "%.2f", seconds)) s)")
        }
    }

    func gliderDescriptions(_ library: LoadedExpertLibrary, resolver: CheckpointResolver) throws -> [String] {
        if let descriptions {
            guard let bytes = FileManager.default.contents(atPath: descriptions), let json = try? JSONParser.parse(Array(bytes)), json.objectValue != nil else {
                throw TesseraError(.invalidParameter, "\(descriptions) is not a JSON object {expert name: description}", hint: "write one, e.g. {\"sst2\": \"Sentiment of movie reviews\"}")
            }
            return try library.names.map { name in
                guard let text = json[name]?.stringValue, !text.isEmpty else {
                    throw TesseraError(.notFound, "\(descriptions) has no description for expert '\(name)'", hint: "add one")
                }
                return text
            }
        }
        guard let baseName = base ?? library.index.base, case let .causal(lm, tokenizer) = try ResolvedModel.resolve(baseName, resolver: resolver).kind else {
            throw TesseraError(.usage, "Glider descriptions are written by the library's language model, and \(base ?? library.index.base ?? "the library") names none",
                               hint: "pass --base MODEL or --descriptions FILE")
        }
        return try library.names.map { name in
            let examples = GliderFiles.examples(of: ExpertLibraryFiles.path(library.spec, name), resolver: resolver)
            guard !examples.isEmpty else {
                throw TesseraError(.notFound, "expert '\(name)' has no readable training examples to describe (training.json names task files not found here)",
                                   hint: "pass --descriptions FILE with one description per expert")
            }
            return try GliderFiles.describe(examples: examples, lm: lm, tokenizer: tokenizer, template: ChatPromptFormat())
        }
    }
}

/// Tensors held in memory, as a source (a router checked before it is written).
final class InMemoryTensors: TensorSource {
    let tensors: [(String, RawTensor)]
    init(_ tensors: [(String, RawTensor)]) { self.tensors = tensors }
    var sourceName: String { "router" }
    var tensorNames: [String] { tensors.map(\.0) }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { tensors.first { $0.0 == name }.map { ($0.1.dtype, $0.1.shape) } }
    func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = tensors.first(where: { $0.0 == name }) else { throw TesseraError(.notFound, "no tensor '\(name)'") }
        return t.1
    }
    var metadata: [(String, String)] { [] }
    var allowsConcurrentReads: Bool { false }
}
