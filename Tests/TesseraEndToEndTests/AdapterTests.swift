import Foundation
import Testing
import TesseraTestSupport

/// PEFT adapters through the binary and real git: `ls`, `git diff`, `git merge` on ΔW, `tessera merge` of adapter
/// folders, `lora apply` and `lora extract`, and refusals. ΔW is computed here with Foundation only (not Tessera's
/// reader), from Tests/Fixtures/peft/ (scripts/make_peft_fixtures.py).
@Suite struct AdapterTests {
    static let fixtures = PackagePaths.fixtures + "/peft"

    /// Each module's ΔW = (lora_alpha / r)·B·A in double precision, keyed by module.
    static func deltas(_ folder: String) throws -> [String: [Double]] {
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/adapter_config.json"))) as! [String: Any]
        let scaling = (config["lora_alpha"] as! NSNumber).doubleValue / (config["r"] as! NSNumber).doubleValue
        let t = try readF32Tensors(folder + "/adapter_model.safetensors")
        let shapes = try shapesOf(folder + "/adapter_model.safetensors")
        var out: [String: [Double]] = [:]
        for (name, a) in t where name.hasSuffix(".lora_A.weight") {
            let module = String(name.dropLast(".lora_A.weight".count))
            let b = try #require(t[module + ".lora_B.weight"])
            let r = shapes[name]![0], dIn = shapes[name]![1], dOut = shapes[module + ".lora_B.weight"]![0]
            var d = [Double](repeating: 0, count: dOut * dIn)
            for o in 0..<dOut { for k in 0..<r { for i in 0..<dIn { d[o * dIn + i] += scaling * Double(b[o * r + k]) * Double(a[k * dIn + i]) } } }
            out[module] = d
        }
        return out
    }

    static func shapesOf(_ path: String) throws -> [String: [Int]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as! [String: Any]
        var out: [String: [Int]] = [:]
        for (k, v) in header where k != "__metadata__" { out[k] = ((v as! [String: Any])["shape"] as! [NSNumber]).map(\.intValue) }
        return out
    }

    /// A float32 safetensors file written with Foundation (keys sorted).
    static func writeF32(_ tensors: [String: (values: [Float], shape: [Int])], to path: String) throws {
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var data = Data(), at = 0
        for name in tensors.keys.sorted() {
            let t = tensors[name]!
            let bytes = t.values.withUnsafeBytes { Data($0) }
            header[name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [at, at + bytes.count]]
            data += bytes
            at += bytes.count
        }
        var h = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while h.count % 8 != 0 { h.append(0x20) }
        var out = Data()
        var n = UInt64(h.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        try (out + h + data).write(to: URL(fileURLWithPath: path))
    }

    static func relative(_ x: [Double], _ y: [Double]) -> Double {
        var num = 0.0, den = 0.0
        for k in x.indices { num += (x[k] - y[k]) * (x[k] - y[k]); den += y[k] * y[k] }
        return (num / max(den, 1e-300)).squareRoot()
    }

    static func norm(_ x: [Double]) -> Double { x.reduce(0) { $0 + $1 * $1 }.squareRoot() }

    func repositoryWithAdapter(_ s: Sandbox, _ adapter: String = "a") throws -> String {
        let repo = try s.makeRepository()
        try s.run("mkdir -p adapters && cp -r '\(Self.fixtures)/adapters/\(adapter)' adapters/x && git add -A && git commit -qm adapter", in: repo)
        return repo
    }

    /// `ls` of an adapter folder, on disk and at a revision: rank, alpha, scaling, targets and every module's ‖ΔW‖_F.
    @Test func lsShowsTheAdapter() throws {
        let s = try Sandbox()
        let repo = try repositoryWithAdapter(s, "b")
        let expected = try Self.deltas(Self.fixtures + "/adapters/b")
        for target in ["adapters/x", "HEAD:adapters/x"] {
            let text = try s.run("\"$T\" ls \(target)", in: repo).stdout
            #expect(text.contains("r=4  lora_alpha=16  scaling=4  target_modules: k_proj, q_proj, up_proj, v_proj"), "\(text)")
            #expect(text.contains("8 modules"))
            let json = try s.run("\"$T\" ls \(target) --json", in: repo).stdout
            let parsed = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
            #expect(parsed["r"] as? Int == 4 && parsed["scaling"] as? Double == 4)
            let modules = parsed["modules"] as! [[String: Any]]
            #expect(modules.count == expected.count)
            for m in modules {
                let name = m["module"] as! String
                let want = Self.norm(try #require(expected["base_model.model." + name]))
                let got = (m["delta_norm"] as! NSNumber).doubleValue
                #expect(abs(got - want) <= 1e-6 * want, "\(name): \(got) vs \(want)")
            }
        }
    }

    /// PEFT's older `adapter_model.bin` (a torch.save zip, scripts/make_peft_bin_fixture.py) is read without executing
    /// its pickle and serves what the safetensors file of the same adapter serves: the same ls, and a merge with it
    /// gives the same adapter as a merge with the safetensors folder.
    @Test func binAdapterFolderReadsLikeItsSafetensors() throws {
        let s = try Sandbox()
        try s.run("cp -r '\(Self.fixtures)/adapters-bin/a' bin && cp -r '\(Self.fixtures)/adapters/a' st && cp -r '\(Self.fixtures)/adapters/b' b")
        let fromBin = try s.run("\"$T\" ls bin --json").stdout
        let fromSafetensors = try s.run("\"$T\" ls st --json").stdout
        #expect(fromBin.contains("\"delta_norm\""), "\(fromBin)")
        #expect(fromBin.replacingOccurrences(of: "\"bin\"", with: "\"st\"") == fromSafetensors)
        // The same names in both merges: the output's provenance names its inputs.
        try s.run("mkdir x y && cp -r bin x/a && cp -r st y/a && cp -r b x/b && cp -r b y/b")
        try s.run("cd x && \"$T\" merge a b -o m && cd ../y && \"$T\" merge a b -o m && cmp ../x/m/adapter_model.safetensors m/adapter_model.safetensors")
    }

    /// A config-only change is a ΔW change: doubling lora_alpha shows every module's ΔW doubling (rel = 1), in a
    /// commit diff and in the worktree diff; and .gitattributes sends adapter_config.json through tessera's diff.
    @Test func diffShowsADoubledAlpha() throws {
        let s = try Sandbox()
        let repo = try repositoryWithAdapter(s)
        #expect(try String(contentsOfFile: s.path("\(repo)/.gitattributes"), encoding: .utf8).contains("adapter_config.json !filter diff=tessera"))
        let config = s.path("\(repo)/adapters/x/adapter_config.json")
        let text = try String(contentsOfFile: config, encoding: .utf8)
        #expect(text.contains("\"lora_alpha\": 8,"))
        try text.replacingOccurrences(of: "\"lora_alpha\": 8,", with: "\"lora_alpha\": 16,").write(toFile: config, atomically: true, encoding: .utf8)
        for diff in ["git diff", "git commit -qam alpha && git diff HEAD~1 HEAD"] {
            let out = try s.run(diff, in: repo).stdout
            #expect(out.contains("config    lora_alpha: 8 -> 16"), "\(out)")
            #expect(out.contains("6 modules changed, 0 added, 0 removed, 0 unchanged"), "\(out)")
            let changed = out.split(separator: "\n").filter { $0.contains("changed   model.layers") }
            #expect(changed.count == 6)
            for line in changed { #expect(line.hasSuffix("rel=1"), "\(line)") }
        }
    }

    /// New weights: the diff of adapter_model.safetensors pairs each version with its own config, and reports
    /// ‖ΔW_new − ΔW_old‖ per module.
    @Test func diffOfNewWeights() throws {
        let s = try Sandbox()
        let repo = try repositoryWithAdapter(s)
        try s.run("cp '\(Self.fixtures)/combined/linear_ab/adapter_model.safetensors' '\(Self.fixtures)/combined/linear_ab/adapter_config.json' adapters/x/ && git commit -qam retrained", in: repo)
        let out = try s.run("git diff HEAD~1 HEAD -- adapters/x/adapter_model.safetensors", in: repo).stdout
        let old = try Self.deltas(Self.fixtures + "/adapters/a"), new = try Self.deltas(Self.fixtures + "/combined/linear_ab")
        let q = "model.layers.0.self_attn.q_proj"
        let line = try #require(out.split(separator: "\n").first { $0.contains("changed   \(q)") }, "\(out)")
        let o = old["base_model.model." + q]!, n = new["base_model.model." + q]!
        let want = Self.norm(zip(n, o).map { $0 - $1 })
        let field = try #require(line.split(separator: " ").first { $0.hasPrefix("|dW_new-dW_old|=") })
        let got = try #require(Double(field.dropFirst("|dW_new-dW_old|=".count)))
        #expect(abs(got - want) <= 1e-3 * want, "\(line) vs \(want)")  // printed with 4 significant digits
        #expect(out.contains("added     model.layers.0.self_attn.k_proj"))
    }

    /// Two branches change the same adapter: git merge gives ΔW = base + (ours − base) + (theirs − base) exactly for
    /// every module (not an average of factors), stops for the new config, and commits cleanly after `git add`.
    @Test func gitMergeOfTwoAdapterBranchesIsExactOnDelta() throws {
        let s = try Sandbox()
        let repo = try repositoryWithAdapter(s)
        let weights = s.path("\(repo)/adapters/x/adapter_model.safetensors")
        let base = try readF32Tensors(weights), shapes = try Self.shapesOf(weights)
        func variant(_ changes: [String: Float]) throws {
            var t: [String: (values: [Float], shape: [Int])] = [:]
            for (name, v) in base { t[name] = (v, shapes[name]!) }
            for (name, f) in changes { t[name]!.values = t[name]!.values.enumerated().map { $0.element * f + Float($0.offset % 7) * 0.01 } }
            try Self.writeF32(t, to: weights)
        }
        let q0A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        let v1B = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        let o0A = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"
        try s.run("git switch -q -c ours", in: repo)
        try variant([q0A: 1.5, o0A: 0.5])
        try s.run("git commit -qam ours", in: repo)
        try s.run("git switch -q -c theirs main", in: repo)
        try variant([v1B: -2, o0A: 2])
        try s.run("git commit -qam theirs", in: repo)
        try s.run("git switch -q ours", in: repo)
        let folders = ["main", "ours", "theirs"]
        var versions: [String: [String: [Double]]] = [:]
        for rev in folders {
            try s.run("rm -rf ../v-\(rev) && mkdir ../v-\(rev) && git show \(rev):adapters/x/adapter_config.json > ../v-\(rev)/adapter_config.json && git cat-file --filters \(rev):adapters/x/adapter_model.safetensors > ../v-\(rev)/adapter_model.safetensors", in: repo)
            versions[rev] = try Self.deltas(s.path("v-\(rev)"))
        }
        let r = try s.run("git merge --no-edit theirs </dev/null", in: repo, check: false)
        #expect(r.status != 0)
        #expect(r.stdout.contains("adapters merged on ΔW") || r.stderr.contains("adapters merged on ΔW"), "\(r.stdout)\n\(r.stderr)")
        try s.run("git add adapters/x && git commit -qm merged", in: repo)
        #expect(try s.run("git status --porcelain", in: repo).stdout.isEmpty)
        let merged = try Self.deltas(s.path("\(repo)/adapters/x"))
        #expect(Set(merged.keys) == Set(versions["main"]!.keys))
        var changedBoth = 0
        for (module, m) in merged {
            let b = versions["main"]![module]!, o = versions["ours"]![module]!, t = versions["theirs"]![module]!
            let expected = b.indices.map { o[$0] + t[$0] - b[$0] }
            #expect(Self.relative(m, expected) <= 1e-6, "\(module)")
            if o != b && t != b { changedBoth += 1 }
        }
        #expect(changedBoth == 1)  // o_proj of layer 0 changed on both branches
        // The merged config says the new rank, and the adapter is a valid one (ls reads it).
        let ls = try s.run("\"$T\" ls HEAD:adapters/x", in: repo).stdout
        #expect(ls.contains("scaling=1"), "\(ls)")
    }

    /// When the branches' configs differ, the merged config is not defined by the weights: the merge stops with one
    /// line and leaves our version (no factor averaging, no guess).
    @Test func gitMergeRefusesDifferingConfigs() throws {
        let s = try Sandbox()
        let repo = try repositoryWithAdapter(s)
        try s.run("git switch -q -c theirs && cp '\(Self.fixtures)/adapters/b/adapter_model.safetensors' adapters/x/ && sed -i 's/\"lora_alpha\": 8,/\"lora_alpha\": 32,/' adapters/x/adapter_config.json && git commit -qam theirs", in: repo)
        try s.run("git switch -q main && cp '\(Self.fixtures)/adapters/c/adapter_model.safetensors' adapters/x/ && git commit -qam ours", in: repo)
        let ours = try readF32Tensors(s.path("\(repo)/adapters/x/adapter_model.safetensors"))
        let r = try s.run("git merge --no-edit theirs </dev/null", in: repo, check: false)
        #expect(r.status != 0)
        let line = r.stderr.split(separator: "\n").filter { $0.hasPrefix("tessera:") }
        #expect(line.count == 1 && line[0].contains("adapter_config.json differ"), "\(r.stderr)")
        #expect(try readF32Tensors(s.path("\(repo)/adapters/x/adapter_model.safetensors")) == ours)
    }

    /// `tessera merge` of adapter folders writes a PEFT folder equal on ΔW to PEFT's add_weighted_adapter.
    @Test(arguments: [("cat_abc", "a b c --weights 1,-0.5,2"), ("ties_svd_ab", "a b --weights 0.7,0.5 --combination ties_svd --param density=0.5")])
    func mergeOfAdapterFolders(name: String, arguments: String) throws {
        let s = try Sandbox()
        let args = arguments.split(separator: " ").map { ["a", "b", "c"].contains(String($0)) ? "'\(Self.fixtures)/adapters/\($0)'" : String($0) }.joined(separator: " ")
        try s.run("\"$T\" merge \(args) -o out")
        let got = try Self.deltas(s.path("out")), want = try Self.deltas(Self.fixtures + "/combined/" + name)
        #expect(Set(got.keys) == Set(want.keys))
        for (module, w) in want { #expect(Self.relative(got[module]!, w) <= 1e-5, "\(module)") }
        // Refused: a model among adapters, an unknown combination.
        let mixed = try s.run("\"$T\" merge '\(Self.fixtures)/adapters/a' '\(Self.fixtures)/base' -o out2", check: false)
        #expect(mixed.status != 0 && mixed.stderr.contains("not a PEFT adapter folder"))
        let unknown = try s.run("\"$T\" merge '\(Self.fixtures)/adapters/a' '\(Self.fixtures)/adapters/b' --combination average -o out3", check: false)
        #expect(unknown.status != 0 && unknown.stderr.contains("unknown combination"))
    }

    /// `lora apply` is PEFT's merge_and_unload bit for bit; `BASE+ADAPTER` names the same model everywhere.
    @Test func loraApplyAndBasePlusAdapter() throws {
        let s = try Sandbox()
        try s.run("\"$T\" lora apply '\(Self.fixtures)/base' '\(Self.fixtures)/adapters/a' -o applied")
        let got = try readF32Tensors(s.path("applied/model.safetensors")), want = try readF32Tensors(Self.fixtures + "/applied/f32/model.safetensors")
        #expect(got == want)
        #expect(FileManager.default.fileExists(atPath: s.path("applied/config.json")))
        // A folder tessera did not write is refused.
        try s.run("mkdir mine && touch mine/notes.txt")
        let refused = try s.run("\"$T\" lora apply '\(Self.fixtures)/base' '\(Self.fixtures)/adapters/a' -o mine", check: false)
        #expect(refused.status != 0 && refused.stderr.contains("nothing was written"))
        // The same model as BASE+ADAPTER, through the shared resolution (here: a task vector against the base).
        try s.run("\"$T\" taskvec compute --base '\(Self.fixtures)/base' --finetuned '\(Self.fixtures)/base+\(Self.fixtures)/adapters/a' -o tau.safetensors")
        let tau = try readF32Tensors(s.path("tau.safetensors")), base = try readF32Tensors(Self.fixtures + "/base/model.safetensors")
        let q = "model.layers.0.self_attn.q_proj.weight"
        #expect(tau[q]! == zip(want[q]!, base[q]!).map { $0 - $1 })
        // An adapter folder itself is not a model: a task vector of its factors is refused, pointing at BASE+ADAPTER.
        let factors = try s.run("\"$T\" taskvec compute --base '\(Self.fixtures)/adapters/b' --finetuned '\(Self.fixtures)/adapters/a' -o tau2.safetensors", check: false)
        #expect(factors.status != 0 && factors.stderr.contains("BASE+ADAPTER") && factors.stderr.split(separator: "\n").count == 1, "\(factors.stderr)")
    }

    /// `lora extract` writes mergekit-extract-lora's adapter (ΔW within float32 SVD rounding).
    @Test func loraExtract() throws {
        let s = try Sandbox()
        let out = try s.run("\"$T\" lora extract '\(Self.fixtures)/base' '\(Self.fixtures)/finetuned' --rank 4 -o ex").stdout
        #expect(out.contains("14 modules decomposed, 7 tensors saved whole"))
        let got = try Self.deltas(s.path("ex")), want = try Self.deltas(Self.fixtures + "/extracted")
        #expect(Set(got.keys) == Set(want.keys))
        for (module, w) in want { #expect(Self.relative(got[module]!, w) <= 1e-5, "\(module)") }
        let ls = try s.run("\"$T\" ls ex").stdout
        #expect(ls.contains("r=4  lora_alpha=4  scaling=1"))
    }

    /// Hostile adapter folders: one line each, no crash.
    @Test func hostileAdaptersAreRefused() throws {
        let s = try Sandbox()
        func folder(_ name: String, config: String, tensors: [String: (values: [Float], shape: [Int])]) throws {
            try s.run("mkdir -p \(name)")
            try config.write(toFile: s.path("\(name)/adapter_config.json"), atomically: true, encoding: .utf8)
            try Self.writeF32(tensors, to: s.path("\(name)/adapter_model.safetensors"))
        }
        let good = #"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"]}"#
        let a = "base_model.model.l.q_proj.lora_A.weight", b = "base_model.model.l.q_proj.lora_B.weight"
        try folder("lying", config: good, tensors: [a: ([Float](repeating: 1, count: 8), [2, 4]), b: ([Float](repeating: 1, count: 12), [4, 3])])
        try folder("rank0", config: #"{"peft_type":"LORA","r":0,"lora_alpha":4}"#, tensors: [a: ([Float](repeating: 1, count: 8), [2, 4]), b: ([Float](repeating: 1, count: 8), [4, 2])])
        try folder("noalpha", config: #"{"peft_type":"LORA","r":2}"#, tensors: [a: ([Float](repeating: 1, count: 8), [2, 4]), b: ([Float](repeating: 1, count: 8), [4, 2])])
        try s.run("mkdir -p bin && printf '%s' '\(good)' > bin/adapter_config.json && printf '\\200\\002junk' > bin/adapter_model.bin")
        for (name, expected) in [("lying", "shapes"), ("rank0", "no valid lora_alpha or r"), ("noalpha", "no valid lora_alpha or r"), ("bin", "adapter_model.bin")] {
            let r = try s.run("\"$T\" ls \(name)", check: false)
            #expect(r.status != 0, "\(name)")
            let lines = r.stderr.split(separator: "\n").filter { !$0.hasPrefix("  hint") && !$0.hasPrefix("hint") }
            #expect(r.stderr.contains(expected), "\(name): \(r.stderr)")
            #expect(lines.count <= 2, "\(name): \(r.stderr)")
        }
    }
}
