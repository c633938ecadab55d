import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

/// What `route build` and `eval --router` share: a router's vectors computed from (or read beside) a library, and a
/// routed model ready to evaluate.
enum RouterBuilding {
    static let gatesFileName = "phatgoose_gates.safetensors"

    /// Arrow prototypes of every module of every expert (library order).
    static func arrowPrototypes(_ library: LoadedExpertLibrary) throws -> RouterVectors {
        var vectors = RouterVectors(kind: ArrowRouter.kind, experts: library.experts.count)
        for (e, expert) in library.experts.enumerated() {
            for m in expert.input.adapter.modules where !m.isEmbedding {
                let a = try expert.input.tensors.floats(m.aName), b = try expert.input.tensors.floats(m.bName)
                let p = try ArrowRouter.prototype(a: a, b: b, rank: m.rank, inputs: m.inFeatures, outputs: m.outFeatures)
                try vectors.set(m.name, expert: e, p.vector)
            }
        }
        return vectors
    }

    /// Each expert's PhatGOOSE gates (`tessera train gates`): `GATES/NAME.safetensors` when a gates folder is given,
    /// else `phatgoose_gates.safetensors` in the expert's own folder; one `<module>.gate` vector per module.
    static func gates(_ library: LoadedExpertLibrary, folder gatesFolder: String?, resolver: CheckpointResolver) throws -> RouterVectors {
        var vectors = RouterVectors(kind: PhatGOOSERouter.kind, experts: library.experts.count)
        for (e, entry) in library.index.experts.enumerated() {
            let spec = gatesFolder.map { ExpertLibraryFiles.path($0, entry.name + ".safetensors") }
                ?? ExpertLibraryFiles.path(ExpertLibraryFiles.path(library.spec, entry.name), gatesFileName)
            let source: TensorSource
            do { source = try resolver.source(spec) } catch {
                throw TesseraError(.notFound, "expert '\(entry.name)' has no PhatGOOSE gates (\(spec))",
                                   hint: "train them: tessera train gates \(library.index.base ?? "BASE") --adapter \(ExpertLibraryFiles.path(library.spec, entry.name)) --task TASK.jsonl -o \(spec)")
            }
            let modules = Set(library.experts[e].input.adapter.modules.map(\.name))
            for name in source.tensorNames where name.hasSuffix(".gate") {
                let module = String(name.dropLast(".gate".count))
                guard modules.contains(module) else { continue }
                let values = try source.floats(name)
                guard values.allSatisfy(\.isFinite) else {
                    throw TesseraError(.invalidParameter, "\(spec): '\(name)' holds NaN or infinite values", hint: "retrain the gates")
                }
                try vectors.set(module, expert: e, values)
            }
            for m in modules where vectors.row(m, expert: e) == nil || vectors.modules[m] == nil {
                throw TesseraError(.notFound, "\(spec) has no gate for module '\(m)'", hint: "retrain the gates for this expert")
            }
        }
        return vectors
    }

    static func configExperts(_ library: LoadedExpertLibrary) -> [RouterConfig.Expert] {
        zip(library.index.experts, library.experts).map { RouterConfig.Expert(name: $0.name, sha256: $1.record.sha256, tasks: $0.tasks) }
    }
}

/// A library behind a router, to attach to a loaded model (`ResolvedModel.resolve(..., routing:)`).
final class RoutedEvaluation {
    let library: LoadedExpertLibrary
    let config: RouterConfig
    let router: ExpertRouter
    let context = RoutingContext()
    /// Glider: text → cosine similarity with each expert's description.
    let globalScorer: ((String) throws -> [Float])?
    /// What results name: the router folder, or "METHOD over LIBRARY".
    let label: String

    init(library: LoadedExpertLibrary, config: RouterConfig, router: ExpertRouter, globalScorer: ((String) throws -> [Float])?, label: String) {
        self.library = library
        self.config = config
        self.router = router
        self.globalScorer = globalScorer
        self.label = label
    }

    /// A router computed on the spot from the library alone (arrow, uniform, oracle): `eval --experts --router`,
    /// `bench-engine --experts`.
    static func adHoc(library spec: String, method: String, topK: Int?, mixing: ExpertMixing, resolver: CheckpointResolver) throws -> RoutedEvaluation {
        let library = try ExpertLibraryFiles.load(spec, resolver: resolver)
        let config = RouterConfig(method: method, mixing: mixing, topK: topK ?? (method == "arrow" ? 2 : 0), library: spec, base: library.index.base,
                                  experts: RouterBuilding.configExperts(library))
        let weights: TensorSource? = method == "arrow" ? InMemoryTensors(try RouterBuilding.arrowPrototypes(library).tensors()) : nil
        return RoutedEvaluation(library: library, config: config, router: try RouterRegistry.make(config, weights: weights), globalScorer: nil,
                                label: "\(method) over \(spec)")
    }

    /// Whether `spec` is a router folder (router.json in it).
    static func isRouterFolder(_ spec: String, resolver: CheckpointResolver) -> Bool {
        guard let folder = try? resolver.folder(spec), let names = try? folder.fileNames() else { return false }
        return names.contains(RouterConfig.fileName)
    }

    /// `base` and `library` of a router read at `spec`: paths in the repository, read at the router's revision.
    static func sibling(_ path: String, of spec: String) -> String {
        let trimmed = RevisionPath.trimmingSlashes(spec)
        if trimmed.contains(":"), !FileManager.default.fileExists(atPath: spec) {
            return RevisionPath(trimmed).rev + ":" + path
        }
        return path
    }

    /// A committed (or on-disk) router folder: its config, vectors and library, checked against each other.
    static func open(router spec: String, resolver: CheckpointResolver) throws -> (base: String, routing: RoutedEvaluation) {
        let folder = try resolver.folder(spec)
        let config = try RouterConfig(bytes: try folder.read(RouterConfig.fileName, limit: 16 << 20), name: folder.path(RouterConfig.fileName))
        guard let base = config.base else {
            throw TesseraError(.invalidParameter, "\(folder.path(RouterConfig.fileName)) names no base model", hint: "rebuild it with `tessera route build --base MODEL`")
        }
        let library = try ExpertLibraryFiles.load(sibling(config.library, of: spec), resolver: resolver)
        let names = library.index.experts.map(\.name), hashes = library.experts.map(\.record.sha256)
        guard names == config.experts.map(\.name), hashes == config.experts.map(\.sha256) else {
            throw TesseraError(.invalidParameter, "\(spec) was built for other experts than \(config.library) now holds (\(config.experts.map(\.name).joined(separator: ",")) vs \(names.joined(separator: ",")))",
                               hint: "rebuild the router: tessera route build --method \(config.method) --experts \(config.library) -o \(spec) --force")
        }
        let weights = try folder.fileNames().contains(RouterConfig.weightsName) ? try folder.openCheckpoint(RouterConfig.weightsName) : nil
        let router = try RouterRegistry.make(config, weights: weights)
        let scorer = try config.method == "glider" ? gliderScorer(config: config, weights: weights, spec: spec, resolver: resolver) : nil
        return (sibling(base, of: spec), RoutedEvaluation(library: library, config: config, router: router, globalScorer: scorer, label: spec))
    }

    /// Glider's global scorer: the embedder the router names, and the description embeddings it stored.
    static func gliderScorer(config: RouterConfig, weights: TensorSource?, spec: String, resolver: CheckpointResolver) throws -> ((String) throws -> [Float])? {
        guard let weights, let info = weights.tensorInfo(GliderFiles.embeddingsName), info.shape.count == 2, info.shape[0] == config.experts.count else {
            throw TesseraError(.notFound, "\(spec): the Glider router has no description embeddings [\(config.experts.count), d]", hint: "rebuild it with `tessera route build --method glider`")
        }
        let flat = try weights.floats(GliderFiles.embeddingsName), d = info.shape[1]
        let descriptions = (0..<config.experts.count).map { Array(flat[($0 * d)..<(($0 + 1) * d)]) }
        guard let embedderPath = config.embedder else {
            throw TesseraError(.invalidParameter, "\(spec): the Glider router names no embedder", hint: "rebuild it with `tessera route build --method glider --embedder DIR`")
        }
        let embedder = try GliderFiles.loadEmbedder(sibling(embedderPath, of: spec), resolver: resolver)
        return { text in GliderRouter.globalScores(input: try embedder.embed(text), descriptions: descriptions) }
    }

    /// Attaches the library behind the router to a loaded language model and wraps it so routers see each input.
    func attach(_ lm: any CausalLanguageModel, tokenizer: any TextTokenizer) throws -> any CausalLanguageModel {
        try RoutedAttachment.attach(library.inputs, router: router, mixing: config.mixing, context: context, to: lm)
        return RoutedLanguageModel(lm, context: context, tokenizer: tokenizer, globalScorer: globalScorer)
    }

    /// Sets the oracle's task before each evaluation task, saying once when no expert was trained on it.
    func taskWillStart(_ task: String) {
        context.task = task
        if let oracle = router as? OracleRouter, oracle.experts(for: task).isEmpty {
            printError("tessera: note: no expert of \(library.spec) was trained on \(task); the oracle runs the base model alone on it")
        }
    }
}
