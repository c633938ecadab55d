import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraTestSupport

/// Expert libraries and routed checkouts through the `tessera` binary, with real git, on the tiny Llama of the engine's
/// fixtures: `experts add|list|show|remove`, `route build`, and `eval` of a router folder, on disk and committed
/// (`REV:routers/x`, read from git and the store with no checkout). Independent checks: the oracle router, and any
/// router over a one-expert library, must score exactly what `eval --adapter` scores with that expert (the plain,
/// unrouted LoRA path); a routed library must differ from the base.
@Suite(.serialized) struct RoutingCommandTests {
    /// Tiny Llama module shapes (hidden 64, 4 heads of 16, 2 KV heads, MLP 128): (name, inputs, outputs).
    static func modules(layers: Range<Int> = 0..<2) -> [(String, Int, Int)] {
        layers.flatMap { i -> [(String, Int, Int)] in
            let p = "model.layers.\(i)."
            return [(p + "self_attn.q_proj", 64, 64), (p + "self_attn.k_proj", 64, 32), (p + "self_attn.v_proj", 64, 32),
                    (p + "self_attn.o_proj", 64, 64), (p + "mlp.down_proj", 128, 64)]
        }
    }

    /// A seeded PEFT adapter (rank `rank`, B nonzero) on `modules`.
    static func writeAdapter(_ folder: String, seed: UInt64, rank: Int = 4, modules: [(String, Int, Int)] = modules(), baseName: String? = nil) throws {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return (Float(state >> 40) / Float(1 << 24) - 0.5) * 0.5
        }
        var tensors: [(String, RawTensor)] = []
        for (name, i, o) in modules {
            tensors.append(("base_model.model.\(name).lora_A.weight", try RawTensor(floats: (0..<(rank * i)).map { _ in next() }, shape: [rank, i], dtype: .f32)))
            tensors.append(("base_model.model.\(name).lora_B.weight", try RawTensor(floats: (0..<(o * rank)).map { _ in next() }, shape: [o, rank], dtype: .f32)))
        }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try SafetensorsWriter.write(tensors: tensors, to: folder + "/adapter_model.safetensors")
        let base = baseName.map { #", "base_model_name_or_path": "\#($0)""# } ?? ""
        try #"{"peft_type": "LORA", "r": \#(rank), "lora_alpha": \#(2 * rank), "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]\#(base)}"#
            .write(toFile: folder + "/adapter_config.json", atomically: true, encoding: .utf8)
    }

    static func writeTask(_ path: String, name: String) throws {
        let lines = [#"{"tessera_task": 1, "type": "perplexity", "name": "\#(name)"}"#,
                     #"{"text": "abc abd abe the sky is blue and the grass is green"}"#,
                     #"{"text": "one two three four five six seven"}"#]
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// The nll `eval --json` printed for each revision label.
    static func nll(_ stdout: String) throws -> [String: Double] {
        let json = try JSONParser.parse(stdout)
        var out: [String: Double] = [:]
        for r in json["results"]?.arrayValue ?? [] where r["metric"]?.stringValue == "nll" {
            if let rev = r["revision"]?.stringValue, let v = r["value"]?.doubleValue { out[rev] = v }
        }
        return out
    }

    /// A repository with the tiny model, a library of three experts (tasks t0, t1, t2) and a task file per expert.
    func library(_ sandbox: Sandbox) throws -> String {
        let repo = try sandbox.makeRepository()
        _ = try sandbox.tinyLlamaFolder(repo + "/tiny")
        for e in 0..<3 {
            try Self.writeAdapter(sandbox.path("adapters/e\(e)"), seed: UInt64(e + 1), rank: e == 2 ? 2 : 4)
            try Self.writeTask(sandbox.path("t\(e).jsonl"), name: "t\(e)")
            try sandbox.run("$T experts add experts ../adapters/e\(e) --base tiny --task t\(e)", in: repo)
        }
        return repo
    }

    @Test func aRoutedCheckoutIsAnOrdinaryCommit() throws {
        let sandbox = try Sandbox()
        let repo = try library(sandbox)
        let list = try sandbox.run("$T experts list experts", in: repo).stdout
        #expect(list.contains("3 experts for tiny") && list.contains("e0") && list.contains("t2") && list.contains("4 "))
        for method in ["arrow", "uniform", "oracle"] {
            try sandbox.run("$T route build --method \(method) --experts experts -o routers/\(method)", in: repo)
        }
        try sandbox.run("git add . && git commit -qm 'tiny + library of 3 + routers'", in: repo)
        // The store holds the routers' and experts' tensors; the worktree copies can go.
        try sandbox.run("rm -rf routers experts tiny && git checkout -- . 2>/dev/null; true", in: repo)
        let task = sandbox.path("t1.jsonl")
        let disk = try Self.nll(sandbox.run("$T eval routers/arrow routers/oracle tiny --task \(task) --json", in: repo).stdout)
        let committed = try Self.nll(sandbox.run("$T eval HEAD:routers/arrow HEAD:routers/oracle --task \(task) --json", in: repo).stdout)
        let plain = try Self.nll(sandbox.run("$T eval tiny --adapter experts/e1 --task \(task) --json", in: repo).stdout)
        let base = try #require(disk["tiny"]), arrow = try #require(disk["routers/arrow"]), oracle = try #require(disk["routers/oracle"])
        #expect(committed["HEAD:routers/arrow"] == arrow, "a committed router scores what its working copy does")
        #expect(committed["HEAD:routers/oracle"] == oracle)
        // The oracle sends task t1 to expert e1 alone: exactly the unrouted adapter path.
        let e1 = try #require(plain["tiny + experts/e1"])
        #expect(abs(oracle - e1) <= 1e-6 * abs(e1), "oracle \(oracle) vs --adapter \(e1)")
        #expect(abs(arrow - base) > 1e-4, "the routed library changes the model")
        // Results name every expert with its hash.
        let json = try JSONParser.parse(sandbox.run("$T eval HEAD:routers/arrow --task \(task) --json", in: repo).stdout)
        let adapters = json["results"]?.arrayValue?.first?["adapters"]?.arrayValue ?? []
        #expect(adapters.count == 3 && adapters.allSatisfy { ($0["sha256"]?.stringValue?.count ?? 0) == 64 })
    }

    @Test func aOneExpertLibraryRoutesToThatExpertWhateverTheMethod() throws {
        let sandbox = try Sandbox()
        let repo = try sandbox.makeRepository()
        _ = try sandbox.tinyLlamaFolder(repo + "/tiny")
        try Self.writeAdapter(sandbox.path("adapters/only"), seed: 7)
        try Self.writeTask(sandbox.path("t.jsonl"), name: "t")
        try sandbox.run("$T experts add lib ../adapters/only --base tiny --task t", in: repo)
        let task = sandbox.path("t.jsonl")
        let plain = try #require(Self.nll(sandbox.run("$T eval tiny --adapter ../adapters/only --task \(task) --json", in: repo).stdout).values.first)
        for method in ["arrow", "uniform"] {
            for mixing in ["merge-after", "merge-before"] {
                let routed = try #require(Self.nll(sandbox.run("$T eval tiny --experts lib --router \(method) --mixing \(mixing) --task \(task) --json", in: repo).stdout).values.first)
                #expect(abs(routed - plain) <= 1e-6 * abs(plain), "\(method) \(mixing): \(routed) vs \(plain)")
            }
        }
    }

    @Test func expertsThatDoNotFitTheBaseAreRefusedWithOneLine() throws {
        let sandbox = try Sandbox()
        let repo = try library(sandbox)
        // Shapes of another model.
        try Self.writeAdapter(sandbox.path("adapters/wide"), seed: 9, modules: [("model.layers.0.self_attn.q_proj", 96, 96)])
        var r = try sandbox.run("$T experts add experts ../adapters/wide", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("q_proj") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        // A module the base does not have.
        try Self.writeAdapter(sandbox.path("adapters/deep"), seed: 9, modules: [("model.layers.7.self_attn.q_proj", 64, 64)])
        r = try sandbox.run("$T experts add experts ../adapters/deep", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("layers.7") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        // Another base's name.
        try Self.writeAdapter(sandbox.path("adapters/named"), seed: 3, baseName: "org/other-model")
        try Self.writeAdapter(sandbox.path("adapters/named2"), seed: 4, baseName: "org/tiny")
        try sandbox.run("$T experts add lib2 ../adapters/named2 --base tiny", in: repo)
        r = try sandbox.run("$T experts add lib2 ../adapters/named", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("org/other-model"), "\(r.stderr)")
        // A name taken, without --force; the library is unchanged.
        let before = try sandbox.bytes(repo + "/experts/library.json")
        r = try sandbox.run("$T experts add experts ../adapters/e0 --name e1", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("already has an expert 'e1'"))
        #expect(try sandbox.bytes(repo + "/experts/library.json") == before)
        // An expert edited after it was added: routing refuses it rather than naming the wrong weights.
        try Self.writeAdapter(sandbox.path(repo + "/experts/e0"), seed: 99)
        r = try sandbox.run("$T route build --method arrow --experts experts -o routers/a", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("changed since it was added"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sandbox.path(repo + "/routers/a")))
    }

    @Test func aRouterBuiltForOtherExpertsIsRefused() throws {
        let sandbox = try Sandbox()
        let repo = try library(sandbox)
        try sandbox.run("$T route build --method arrow --experts experts -o routers/arrow", in: repo)
        var r = try sandbox.run("$T route build --method arrow --experts experts -o routers/arrow", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("already exists"))
        try sandbox.run("$T experts remove experts e2", in: repo)
        #expect(!FileManager.default.fileExists(atPath: sandbox.path(repo + "/experts/e2")))
        r = try sandbox.run("$T eval routers/arrow --task \(sandbox.path("t0.jsonl"))", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("rebuild the router"), "\(r.stderr)")
        // PhatGOOSE needs gates; their absence is one line naming the command that makes them.
        r = try sandbox.run("$T route build --method phatgoose --experts experts -o routers/pg", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("train gates"), "\(r.stderr)")
    }

    @Test func showPrintsTheExpertsProvenance() throws {
        let sandbox = try Sandbox()
        let repo = try library(sandbox)
        let shown = try sandbox.run("$T experts show experts e2", in: repo).stdout
        #expect(shown.contains("tasks: t2") && shown.contains("r=2") && shown.contains("10 modules"))
        let json = try JSONParser.parse(sandbox.run("$T experts show experts e2 --json", in: repo).stdout)
        #expect(json["name"]?.stringValue == "e2" && json["sha256"] == json["sha256_now"])
    }

    @Test func clusterPrintsAndSavesAPartitionOfTheLibrary() throws {
        let sandbox = try Sandbox()
        let repo = try library(sandbox)
        // e2 has rank 2, the others 4: MBC compares factors entry by entry, so mixed ranks are refused in one line.
        var r = try sandbox.run("$T experts cluster experts --k 2", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.contains("rank") && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        try sandbox.run("$T experts remove experts e2", in: repo)
        // A copy of e0 (the same seed): e0 and its copy cluster together, apart from e1.
        try Self.writeAdapter(sandbox.path("adapters/e0copy"), seed: 1)
        try sandbox.run("$T experts add experts ../adapters/e0copy --task t0", in: repo)
        let out = try sandbox.run("$T experts cluster experts --k 2 --sparsity 0.5 --seed 3", in: repo).stdout
        #expect(out.contains("cluster 0: e0 e0copy") && out.contains("cluster 1: e1"), "\(out)")
        let saved = try JSONParser.parse(Array(sandbox.bytes(repo + "/experts/clusters.json")))
        #expect(saved["labels"]?.arrayValue?.count == 3 && saved["clusters"]?.arrayValue?.count == 2)
        r = try sandbox.run("$T experts cluster experts --k 9", in: repo, check: false)
        #expect(r.status != 0 && r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
    }

    @Test func mergedCheckoutsOfALibrary() throws {
        let sandbox = try Sandbox()
        let repo = try sandbox.makeRepository()
        _ = try sandbox.tinyLlamaFolder(repo + "/tiny")
        try Self.writeAdapter(sandbox.path("adapters/only"), seed: 5)
        try Self.writeTask(sandbox.path("t.jsonl"), name: "t")
        try sandbox.run("$T experts add one ../adapters/only --base tiny --task t", in: repo)
        let task = sandbox.path("t.jsonl")
        // The average of a one-expert library is that expert: as a full checkpoint, and as a full-rank adapter.
        try sandbox.run("$T experts merge one --method average -o merged/", in: repo)
        try sandbox.run("$T experts merge one --method average --rank 4 -o merged-adapter", in: repo)
        let plain = try #require(Self.nll(sandbox.run("$T eval tiny --adapter ../adapters/only --task \(task) --json", in: repo).stdout).values.first)
        let merged = try #require(Self.nll(sandbox.run("$T eval merged --task \(task) --json", in: repo).stdout).values.first)
        let adapter = try #require(Self.nll(sandbox.run("$T eval tiny --adapter merged-adapter --task \(task) --json", in: repo).stdout).values.first)
        #expect(abs(merged - plain) <= 1e-5 * abs(plain), "\(merged) vs \(plain)")
        #expect(abs(adapter - plain) <= 1e-5 * abs(plain), "\(adapter) vs \(plain)")
        // TIES over three experts; bad parameters are one line.
        let other = try Sandbox()
        let lib = try library(other)
        try other.run("$T experts merge experts --method ties --density 0.5 --rank 4 -o ties", in: lib)
        #expect(FileManager.default.fileExists(atPath: other.path(lib + "/ties/adapter_config.json")))
        let r = try other.run("$T experts merge experts --method weighted --weights 1,2 -o w", in: lib, check: false)
        #expect(r.status != 0 && r.stderr.contains("3 numbers"), "\(r.stderr)")
    }

    @Test func mixedRanksAndTargetSetsRoute() throws {
        let sandbox = try Sandbox()
        let repo = try sandbox.makeRepository()
        _ = try sandbox.tinyLlamaFolder(repo + "/tiny")
        try Self.writeAdapter(sandbox.path("adapters/all"), seed: 11, rank: 4)
        // Rank 2, on two modules of one layer only.
        try Self.writeAdapter(sandbox.path("adapters/some"), seed: 12, rank: 2,
                              modules: [("model.layers.0.self_attn.q_proj", 64, 64), ("model.layers.0.self_attn.v_proj", 64, 32)])
        try Self.writeTask(sandbox.path("t.jsonl"), name: "t")
        try sandbox.run("$T experts add lib ../adapters/all --base tiny --task all && $T experts add lib ../adapters/some --task some", in: repo)
        let task = sandbox.path("t.jsonl")
        let base = try #require(Self.nll(sandbox.run("$T eval tiny --task \(task) --json", in: repo).stdout).values.first)
        let all = try #require(Self.nll(sandbox.run("$T eval tiny --adapter ../adapters/all --task \(task) --json", in: repo).stdout).values.first)
        for method in ["arrow", "uniform"] {
            for mixing in ["merge-after", "merge-before"] {
                try sandbox.run("$T route build --method \(method) --mixing \(mixing) --top-k 0 --experts lib -o r-\(method)-\(mixing)", in: repo)
                let routed = try #require(Self.nll(sandbox.run("$T eval r-\(method)-\(mixing) --task \(task) --json", in: repo).stdout).values.first)
                #expect(routed.isFinite && abs(routed - base) > 1e-4 && abs(routed - all) > 1e-6, "\(method) \(mixing): \(routed) (base \(base), all \(all))")
            }
        }
        // The oracle on task "all" uses the full expert alone, whatever the other covers.
        try sandbox.run("$T route build --method oracle --experts lib -o oracle", in: repo)
        try Self.writeTask(sandbox.path("all.jsonl"), name: "all")
        let oracle = try #require(Self.nll(sandbox.run("$T eval oracle --task \(sandbox.path("all.jsonl")) --json", in: repo).stdout).values.first)
        #expect(abs(oracle - all) <= 1e-6 * abs(all), "\(oracle) vs \(all)")
    }
}
