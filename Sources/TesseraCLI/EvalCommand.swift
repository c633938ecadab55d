import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMath
import TesseraRepository
import TesseraRouting

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate commits (or model files) on built-in and user tasks, side by side, with no checkout.",
        discussion: """
        Built-in tasks: wikitext (perplexity), arc-easy and arc-challenge
        (lm-eval-harness recipe: acc, acc_norm), sst2 (sentence-embedding
        classification with a head checkpoint), selfinstruct (greedy generation,
        Rouge-L), and user tasks from JSONL files (docs/task-format.md). NAME:N
        evaluates the first N examples. Models: a Hugging Face folder (single or
        sharded), a safetensors file or shard index with config.json beside it,
        REV:path of a tracked checkpoint or REV:folder (config.json and tokenizer.json
        from the same folder of the same revision), REV (its one tracked checkpoint or
        checkpoint folder), or a .gguf file.
        --adapter DIR (or REV:DIR) runs a PEFT LoRA adapter unmerged on every model:
        W·x + s·B·(A·x) in each adapted layer, equal to evaluating the applied
        weights; several --adapter add their updates. Results record each
        adapter's path and content hash.
        A router folder (router.json, `tessera route build`), on disk or
        REV:folder, evaluates its routed checkout: the base and the library it
        names, read at the same revision. --experts LIB --router METHOD routes
        an ad-hoc library (arrow, uniform, oracle; phatgoose and glider read
        gates and descriptions from a built router).
        Examples:
          tessera eval main merged --task wikitext:20 --task arc-easy:50
          tessera eval HEAD~1:model HEAD:model --task arc-easy:100 --chart arc.svg
          tessera eval minilm/ --task sst2 --json
          tessera eval base/ --adapter lora/ --task wikitext:20
          tessera eval HEAD:routers/arrow --task data/experts/sst2-heldout.jsonl
          tessera eval smollm2 --experts experts --router uniform --task arc-easy
        """
    )

    @Argument(help: "Models to evaluate: REV[:PATH], REV:FOLDER, a model folder or file, or a .gguf file.")
    var targets: [String]

    @Option(name: .customLong("task"), help: "A task: NAME[:N] or a JSONL task file[:N]. Repeatable.")
    var tasks: [String]

    @Option(name: .customLong("adapter"), help: "A PEFT LoRA adapter folder (DIR or REV:DIR) to run unmerged on the models. Repeatable: the updates add.")
    var adapters: [String] = []

    @Option(help: "An expert library (DIR or REV:DIR) to route on every model (with --router).")
    var experts: String?

    @Option(help: "With --experts: the routing method (arrow, uniform, oracle).")
    var router: String?

    @Option(help: "With --router: experts kept per token and module (0: all; default 2 for arrow, else 0).")
    var topK: Int?

    @Option(help: "With --router: merge-after (mix outputs) or merge-before (mix parameters).")
    var mixing: String = "merge-after"

    @Option(help: "Where the built-in tasks' data is (default: the project's data/ folder, or $TESSERA_DATA_DIR).")
    var dataDir: String?

    @Option(help: "Write an SVG bar chart per task: a file (one task) or a prefix (several tasks).")
    var chart: String?

    @Option(help: "The SST-2 head checkpoint (default: minilm_sst2_head.safetensors in the data folder).")
    var head: String?

    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).")
    var threads: Int = Linalg.defaultThreads

    @Flag(help: "Print the results as JSON.")
    var json = false

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func validate() throws {
        if tasks.isEmpty { throw ValidationError("name at least one --task (wikitext, arc-easy, arc-challenge, sst2, selfinstruct, or a .jsonl file)") }
        if (experts == nil) != (router == nil) { throw ValidationError("--experts and --router go together") }
        if let router, !["arrow", "uniform", "oracle"].contains(router) {
            throw ValidationError("--router \(router): ad-hoc routing is arrow, uniform or oracle; build a phatgoose or glider router with `tessera route build`")
        }
        if let topK, topK < 0 { throw ValidationError("--top-k must be 0 (all) or more") }
        if ExpertMixing(rawValue: mixing) == nil { throw ValidationError("--mixing is merge-after or merge-before") }
        if experts != nil, !adapters.isEmpty { throw ValidationError("--adapter and --experts do not go together: add the adapter to the library") }
    }

    /// The data folder shipped with tessera: data/ beside the package (the binary lives in .build/<config>/).
    static var shippedData: String {
        let exe = URL(fileURLWithPath: ExecutablePath.current).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 {
            if FileManager.default.fileExists(atPath: dir.path + "/data/SOURCES.md") { return dir.path + "/data" }
            dir.deleteLastPathComponent()
        }
        return FileManager.default.currentDirectoryPath + "/data"
    }

    func run() throws {
        Linalg.setThreads(threads)
        let data = EvalDataDirectory.resolve(explicit: dataDir, default: Self.shippedData)
        let options = EvalTaskOptions(sst2HeadPath: head)
        // Every task's data is read and checked before any model is loaded.
        let prepared = try EvalRunner.prepare(try tasks.map { try EvalTaskRegistry.task($0, options: options) }, data: data)
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        let adapters = try self.adapters.map { try EvalAdapter.resolve($0, resolver: resolver) }
        var results: [EvalResult] = []
        let adHoc = try experts.map {
            try RoutedEvaluation.adHoc(library: $0, method: router ?? "uniform", topK: topK, mixing: ExpertMixing(rawValue: mixing) ?? .mergeAfter, resolver: resolver)
        }
        for target in targets {
            // A router folder names its base and library; anything else is a model (routed when --experts is given).
            var modelSpec = target, routing = adHoc
            if adHoc == nil, RoutedEvaluation.isRouterFolder(target, resolver: resolver) {
                let opened = try RoutedEvaluation.open(router: target, resolver: resolver)
                (modelSpec, routing) = (opened.base, opened.routing)
            }
            let model = try ResolvedModel.resolve(modelSpec, resolver: resolver, adapters: adapters.map(\.input), routing: routing)
            let applicable = prepared.filter { $0.requirement == model.requirement }
            if applicable.isEmpty {
                throw TesseraError(.usage, "\(target) is a \(model.requirement == .causalLanguageModel ? "language model" : "sentence encoder"); none of the tasks apply to it",
                                   hint: "language models: wikitext, arc-easy, arc-challenge, selfinstruct; encoders: sst2")
            }
            // The label names the adapters too, so the table tells the base from the adapted model.
            let label = ([target] + adapters.map(\.record.path) + (adHoc.map { ["\($0.config.method) over \($0.library.spec)"] } ?? [])).joined(separator: " + ")
            let records = adapters.map(\.record) + (routing.map { r in
                zip(r.library.index.experts, r.library.experts).map { EvalAdapterRecord(path: ExpertLibraryFiles.path(r.library.spec, $0.name), sha256: $1.record.sha256) }
            } ?? [])
            if let routing, !json {
                printError("routing \(target): \(routing.config.method), top-k \(routing.config.topK == 0 ? "all" : String(routing.config.topK)), \(routing.config.mixing.rawValue), \(routing.library.experts.count) experts of \(routing.library.spec) on \(modelSpec)")
            }
            results += try EvalRunner.run(applicable, models: model.models, revision: label).map {
                var r = $0
                r.adapters = records
                return r
            }
        }
        if !json {
            for a in adapters { print("adapter: \(a.record.path) sha256:\(a.record.sha256)") }
        }
        let report = EvalReport(results)
        if json { print(report.json()) } else { print(report.table()) }
        if let chart {
            let charts = report.svgCharts()
            for (task, svg) in charts {
                let path = charts.count == 1 && chart.hasSuffix(".svg") ? chart
                    : (chart.hasSuffix(".svg") ? String(chart.dropLast(4)) : chart) + "-" + EvalReport.chartFileName(task: task)
                try svg.write(toFile: path, atomically: true, encoding: .utf8)
                if !json { print("chart: \(path)") }
            }
        }
    }
}

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Write a Hugging Face model folder (model.safetensors, config.json, tokenizer.json, ...) from a GGUF file.",
        discussion: """
        Quantised tensors are dequantised to float32; Llama Q/K rows are put back in
        Hugging Face's order, so the folder evaluates exactly like the GGUF.
        generation_config.json and tokenizer_config.json (special tokens, chat
        template) are written as transformers sets them up from a GGUF. The output
        folder must not exist or be empty; it appears only once complete. Track the
        result with `tessera track`.
        Example:
          tessera import SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2
        """
    )

    @Argument(help: "The .gguf file.") var gguf: String
    @Option(name: [.customShort("o"), .long], help: "The output folder.") var output: String

    func run() throws {
        let file = try GGUFFile(path: gguf)
        let written = try GGUFImport.writeHuggingFaceDirectory(from: file, to: output)
        print("wrote \(output): \(written.joined(separator: ", "))")
    }
}
