import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMath
import TesseraRepository
import TesseraRouting

/// Timings of the engine on one model, for bench/bench_engine.py (which runs PyTorch on the same model beside it).
struct BenchEngineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-engine",
        abstract: "Time prefill, decode with the KV cache and ARC-Easy scoring (for bench/bench_engine.py).",
        discussion: "Example:\n  tessera bench-engine smollm2 --prefill 512 --decode 64 --arc 2376",
        shouldDisplay: false
    )

    @Argument(help: "A model folder (single or sharded), .gguf file, REV:path or REV:folder.") var model: String
    @Option(help: "Prompt length for the prefill timing.") var prefill: Int = 512
    @Option(help: "Tokens to generate for the decode timing.") var decode: Int = 64
    @Option(help: "Decode after this many tokens in the KV cache (prompt not timed, as llama-bench's -d); default: generation from a 16-token prompt, prompt timed.")
    var depth: Int?
    @Option(help: "ARC-Easy test questions to score (0 skips).") var arc: Int = 0
    @Option(help: "Threads for matrix products (default: $OPENBLAS_NUM_THREADS, else the number of cores).") var threads: Int = Linalg.defaultThreads
    @Option(help: "Where the data is (default: the project's data/).") var dataDir: String?
    @Option(name: .customLong("adapter"), help: "A PEFT LoRA adapter folder to run unmerged (bench/bench_adapter.py). Repeatable.")
    var adapters: [String] = []
    @Option(help: "An expert library to route (bench/bench_routing.py), with --router.") var experts: String?
    @Option(help: "With --experts: a router folder, or arrow|uniform (computed here).") var router: String?
    @Option(help: "With --router arrow: experts per token and module.") var topK: Int = 2

    func run() throws {
        Linalg.setThreads(threads)
        let resolver = CheckpointResolver(directory: ".", hashesFileInputs: false)
        let adapters = try self.adapters.map { try EvalAdapter.resolve($0, resolver: resolver).input }
        let resolved = try ResolvedModel.resolve(model, resolver: resolver, adapters: adapters)
        guard case let .causal(lm, tokenizer) = resolved.kind, let decoder = lm as? any DecoderArchitecture else {
            throw TesseraError(.usage, "\(model) is not a decoder language model")
        }
        if let experts {
            // The routed adapters sit on the model's projections; the decoder is timed as it is.
            let routing: RoutedEvaluation
            if let router, RoutedEvaluation.isRouterFolder(router, resolver: resolver) {
                routing = try RoutedEvaluation.open(router: router, resolver: resolver).routing
            } else {
                routing = try RoutedEvaluation.adHoc(library: experts, method: router ?? "arrow", topK: topK, mixing: .mergeAfter, resolver: resolver)
            }
            _ = try routing.attach(lm, tokenizer: tokenizer)
        }
        let clock = ContinuousClock()
        var pairs: [(String, JSONValue)] = [("model", .string(model)), ("threads", .int(threads))]
        // Prefill: a deterministic prompt of `prefill` tokens, logits of the last position (as PyTorch's side does).
        let vocab = decoder.vocabularySize
        let tokens = (0..<prefill).map { ($0 * 7919) % (vocab - 200) + 100 }
        var best = Double.infinity
        for _ in 0..<2 {
            let state = decoder.makeState(capacity: prefill + decode + 1)
            let t0 = clock.now
            _ = try decoder.forward(tokens, state: state, logitRows: [prefill - 1])
            best = min(best, (clock.now - t0) / .seconds(1))
        }
        pairs.append(("prefill_tokens_per_s", .double(Double(prefill) / best)))
        // Decode: greedy, one token at a time with the KV cache, after a 16-token prompt.
        let prompt = Array(tokens.prefix(16))
        let t1 = clock.now
        let generated = try decoder.generate(prompt: prompt, maxNewTokens: decode, sampling: .greedy, stop: [])
        let decodeSeconds = (clock.now - t1) / .seconds(1)
        pairs.append(("decode_tokens_per_s", .double(Double(generated.count) / decodeSeconds)))
        pairs.append(("decode_tokens", .int(generated.count)))
        if let depth {
            // Decode at a depth: the prompt fills the cache untimed, then `decode` single-token steps are timed.
            let context = (0..<max(1, depth)).map { ($0 * 7919) % (vocab - 200) + 100 }
            let state = decoder.makeState(capacity: context.count + decode + 1)
            var logits = try decoder.forward(context, state: state, logitRows: [context.count - 1])
            let t3 = clock.now
            for _ in 0..<decode {
                let next = logits.indices.max { logits[$0] < logits[$1] } ?? 0
                logits = try decoder.forward([next], state: state, logitRows: [0])
            }
            pairs.append(("decode_at_depth_tokens_per_s", .double(Double(decode) / ((clock.now - t3) / .seconds(1)))))
            pairs.append(("decode_depth", .int(context.count)))
        }
        // FLOP rate of the prefill's matrix products (2·params·tokens for the linear layers, approximately).
        if arc > 0 {
            let data = EvalDataDirectory.resolve(explicit: dataDir, default: EvalCommand.shippedData)
            let prepared = try EvalRunner.prepare([try EvalTaskRegistry.task("arc-easy:\(arc)")], data: data)
            let t2 = clock.now
            let results = try EvalRunner.run(prepared, models: EvalModels(languageModel: lm, tokenizer: tokenizer), revision: model)
            pairs.append(("arc_easy_questions", .int(arc)))
            pairs.append(("arc_easy_seconds", .double((clock.now - t2) / .seconds(1))))
            for r in results { pairs.append(("arc_easy_\(r.metric)", .double(r.value))) }
        }
        print(JSONValue.object(pairs).serialized())
    }
}
