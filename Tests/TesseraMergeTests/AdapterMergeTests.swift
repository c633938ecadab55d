import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// Adapter arithmetic, application and extraction against what PEFT 0.21.2 and mergekit 0.1.5 computed on the same
/// inputs (Tests/Fixtures/peft/, written by scripts/make_peft_fixtures.py).
@Suite struct AdapterMergeTests {
    static func path(_ rel: String) -> String { PackagePaths.fixtures + "/peft/" + rel }

    static func folder(_ rel: String) throws -> AdapterFolder {
        let config = Array(try Data(contentsOf: URL(fileURLWithPath: path(rel + "/adapter_config.json"))))
        return try AdapterFolder(configBytes: config, tensors: try SafetensorsFile(path: path(rel + "/adapter_model.safetensors")), name: rel)
    }

    /// Each module's ΔW = s·B·A in double precision, [d_out, d_in] (B·A layout).
    static func deltas(_ f: AdapterFolder) throws -> [String: [Double]] {
        var out: [String: [Double]] = [:]
        for m in f.adapter.modules {
            let (a, b) = try f.factors(m)
            var d = [Double](repeating: 0, count: m.outFeatures * m.inFeatures)
            for o in 0..<m.outFeatures { for r in 0..<m.rank { for i in 0..<m.inFeatures {
                d[o * m.inFeatures + i] += m.scaling * Double(b[o * m.rank + r]) * Double(a[r * m.inFeatures + i])
            } } }
            out[m.name] = d
        }
        return out
    }

    static func deltas(_ output: AdapterOutput) throws -> [String: [Double]] {
        let source = MemoryTensors(output)
        return try deltas(try AdapterFolder(configBytes: output.configBytes, tensors: source, name: "output"))
    }

    /// ‖x − y‖_F / ‖y‖_F.
    static func relative(_ x: [Double], _ y: [Double]) -> Double {
        var num = 0.0, den = 0.0
        for k in x.indices { num += (x[k] - y[k]) * (x[k] - y[k]); den += y[k] * y[k] }
        return (num / max(den, 1e-300)).squareRoot()
    }

    struct Case {
        var name: String
        var adapters: [String]
        var weights: [Double]
        var options: AdapterCombinationOptions
    }

    static func cases() throws -> [Case] {
        let json = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path("cases.json")))))
        return try (json.arrayValue ?? []).map { c in
            let name = try #require(c["name"]?.stringValue)
            let kind = try #require(AdapterCombination(rawValue: c["combination"]?.stringValue ?? ""))
            return Case(name: name, adapters: (c["adapters"]?.arrayValue ?? []).compactMap(\.stringValue),
                        weights: (c["weights"]?.arrayValue ?? []).compactMap(\.doubleValue),
                        options: AdapterCombinationOptions(combination: kind, svdRank: c["svd_rank"]?.intValue, density: c["density"]?.doubleValue,
                                                           majoritySignByFrequency: c["majority_sign_method"]?.stringValue == "frequency"))
        }
    }

    /// Every case PEFT computed (cat, svd, linear, ties, ties_svd with both sign methods, magnitude_prune and
    /// magnitude_prune_svd): same modules, same r and target_modules, same ΔW. Tolerance: the factor-wise and `cat`
    /// results are the same float32 operations in the same order, so they agree to rounding of the double-precision
    /// product used here (1e-6); the SVD-based ones are float32 SVDs (LAPACK gesdd here, torch's there) of the same
    /// float32 ΔW, whose truncation to rank r is stable because these random ΔW have well separated singular
    /// values: a float32 SVD's backward error is about n·ε·‖ΔW‖ ≈ 16 · 6e-8 ≈ 1e-6 relative (measured ≤ 1.1e-6);
    /// 1e-5 leaves room for another BLAS, and a wrong truncation or scaling is off by 1e-2 or more.
    @Test func combinationsEqualPEFT() throws {
        let cases = try Self.cases()
        #expect(cases.count >= 10)
        for c in cases {
            let inputs = try c.adapters.map { try Self.folder("adapters/" + $0) }
            let out = try AdapterMerge.combine(inputs, weights: c.weights, options: c.options)
            let peft = try Self.folder("combined/" + c.name)
            #expect(out.rank == peft.adapter.config.rank, "\(c.name): rank")
            #expect(out.config["lora_alpha"]?.doubleValue == peft.adapter.config.alpha, "\(c.name): lora_alpha")
            #expect(out.config["target_modules"] == peft.adapter.config.json["target_modules"], "\(c.name): target_modules")
            let got = try Self.deltas(out), expected = try Self.deltas(peft)
            #expect(Set(got.keys) == Set(expected.keys), "\(c.name): modules")
            let tolerance = c.options.combination.isSVD ? 1e-5 : 1e-6
            for (module, e) in expected {
                let g = try #require(got[module])
                let err = Self.relative(g, e)
                #expect(err <= tolerance, "\(c.name) \(module): relative ΔW error \(err)")
            }
        }
    }

    /// `cat` is exact: its ΔW is Σ wᵢ·ΔWᵢ of the inputs (not an average of factors), whatever the ranks.
    @Test func catIsTheWeightedSumOfDeltas() throws {
        let a = try Self.folder("adapters/a"), b = try Self.folder("adapters/b"), c = try Self.folder("adapters/c")
        let out = try AdapterMerge.combine([a, b, c], weights: [1, -0.5, 2], options: AdapterCombinationOptions(combination: .cat))
        #expect(out.rank == 10)
        let got = try Self.deltas(out)
        let da = try Self.deltas(a), db = try Self.deltas(b), dc = try Self.deltas(c)
        for (module, g) in got {
            var expected = [Double](repeating: 0, count: g.count)
            for (d, w) in [(da, 1.0), (db, -0.5), (dc, 2.0)] { if let x = d[module] { for k in x.indices { expected[k] += w * x[k] } } }
            #expect(Self.relative(g, expected) <= 1e-6, "\(module)")
        }
        // Averaging the factors instead (the lossy mode PEFT calls linear) is far from the mean ΔW.
        let linear = try Self.deltas(try AdapterMerge.combine([a, b], weights: [0.5, 0.5], options: AdapterCombinationOptions(combination: .linear)))
        let mean = try Self.deltas(try AdapterMerge.combine([a, b], weights: [0.5, 0.5], options: AdapterCombinationOptions(combination: .cat)))
        let q = "model.layers.0.self_attn.q_proj"
        #expect(Self.relative(try #require(linear[q]), try #require(mean[q])) > 0.1)
    }

    /// The three-way merge of adapter versions is ours + theirs − base on ΔW, module by module.
    @Test func threeWayIsExactOnDelta() throws {
        let base = try Self.folder("adapters/a"), ours = try Self.folder("combined/cat_ab"), theirs = try Self.folder("adapters/c")
        let out = try AdapterMerge.threeWay(base: base, ours: ours, theirs: theirs)
        let got = try Self.deltas(out)
        let b = try Self.deltas(base), o = try Self.deltas(ours), t = try Self.deltas(theirs)
        for (module, g) in got {
            let n = g.count
            var expected = [Double](repeating: 0, count: n)
            for (d, w) in [(o, 1.0), (t, 1.0), (b, -1.0)] { if let x = d[module] { for k in 0..<n { expected[k] += w * x[k] } } }
            #expect(Self.relative(g, expected) <= 1e-6, "\(module)")
        }
    }

    /// ‖ΔW‖_F from the r×r Gram matrices equals the norm of the formed ΔW.
    @Test func deltaNormWithoutFormingDelta() throws {
        let f = try Self.folder("adapters/b")
        let full = try Self.deltas(f)
        for m in f.adapter.modules {
            let direct = (try #require(full[m.name])).reduce(0) { $0 + $1 * $1 }.squareRoot()
            let viaGram = try f.deltaNorm(m)
            #expect(abs(viaGram - direct) <= 1e-9 * direct, "\(m.name)")
        }
    }

    /// PEFT's merge_and_unload, float32 and bfloat16: bit for bit.
    @Test(arguments: [("base", "applied/f32"), ("base-bf16", "applied/bf16")])
    func applyEqualsMergeAndUnload(base: String, expected: String) throws {
        let a = try Self.folder("adapters/a")
        let applied = try LoRAAppliedSource(base: try SafetensorsFile(path: Self.path(base + "/model.safetensors")), adapter: a.tensors,
                                            adapterConfig: a.configBytes, name: "applied")
        let reference = try SafetensorsFile(path: Self.path(expected + "/model.safetensors"))
        #expect(Set(applied.tensorNames) == Set(reference.tensorNames))
        for name in reference.tensorNames {
            let got = try applied.rawTensor(name), want = try reference.rawTensor(name)
            #expect(got.dtype == want.dtype && got.shape == want.shape && got.bytes == want.bytes, "\(expected) \(name)")
        }
    }

    /// mergekit-extract-lora's adapter (which PEFT loaded when the fixture was made): same modules, ranks and config,
    /// ΔW equal within float32 SVD rounding (see combinationsEqualPEFT), tensors saved whole bit for bit.
    @Test func extractEqualsMergekit() throws {
        let base = try SafetensorsFile(path: Self.path("base/model.safetensors")), ft = try SafetensorsFile(path: Self.path("finetuned/model.safetensors"))
        let out = try LoRAExtraction.extract(base: base, finetuned: ft, maxRank: 4, baseName: "base")
        let reference = try Self.folder("extracted")
        #expect(out.rank == 4)
        for key in ["r", "lora_alpha", "rank_pattern", "use_rslora"] { #expect(out.config[key] == reference.adapter.config.json[key], "\(key)") }
        let saved = Set((out.config["modules_to_save"]?.arrayValue ?? []).compactMap(\.stringValue))
        #expect(saved == Set((reference.adapter.config.json["modules_to_save"]?.arrayValue ?? []).compactMap(\.stringValue)))
        let got = try Self.deltas(out), expected = try Self.deltas(reference)
        #expect(Set(got.keys) == Set(expected.keys))
        for (module, e) in expected {
            let err = Self.relative(try #require(got[module]), e)
            #expect(err <= 1e-5, "\(module): relative ΔW error \(err)")
        }
        let whole = Dictionary(uniqueKeysWithValues: out.wholeTensors.map { ($0.name, $0.raw) })
        for (target, tensor) in reference.adapter.replacements {
            let mine = try #require(whole[tensor], "\(target)")
            #expect(mine.bytes == (try reference.tensors.rawTensor(tensor)).bytes)
        }
    }

    // MARK: hostile adapters

    static func adapterFile(_ entries: [(String, [Int])]) throws -> SafetensorsFile {
        var c = TestCheckpoint()
        for (k, e) in entries.enumerated() { c.add(e.0, shape: e.1, seed: UInt64(k + 1)) }
        let p = NSTemporaryDirectory() + "tessera-adapter-\(UUID().uuidString).safetensors"
        try c.write(to: p)
        defer { try? FileManager.default.removeItem(atPath: p) }
        return try SafetensorsFile(path: p)
    }

    static let config = Array(#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"]}"#.utf8)

    @Test func factorShapesThatLieAreRefused() throws {
        // B's rank (3) is not A's (4).
        let file = try Self.adapterFile([("base_model.model.l.q_proj.lora_A.weight", [4, 16]), ("base_model.model.l.q_proj.lora_B.weight", [16, 3])])
        #expect(throws: TesseraError.self) { _ = try AdapterFolder(configBytes: Self.config, tensors: file, name: "lying") }
        // Consistent factors whose ΔW does not fit the base weight.
        let fits = try Self.adapterFile([("base_model.model.l.q_proj.lora_A.weight", [4, 16]), ("base_model.model.l.q_proj.lora_B.weight", [8, 4])])
        let base = try Self.adapterFile([("l.q_proj.weight", [16, 16])])
        let applied = try LoRAAppliedSource(base: base, adapter: fits, adapterConfig: Self.config, name: "applied")
        do {
            _ = try applied.rawTensor("l.q_proj.weight")
            Issue.record("a ΔW of the wrong shape was applied")
        } catch let e as TesseraError {
            #expect(e.code == .shapeMismatch)
            #expect(!e.description.contains("\n"))
        }
        // An A with no B.
        let lone = try Self.adapterFile([("base_model.model.l.q_proj.lora_A.weight", [4, 16])])
        #expect(throws: TesseraError.self) { _ = try AdapterFolder(configBytes: Self.config, tensors: lone, name: "lone") }
    }

    @Test(arguments: [#"{"peft_type":"LORA","r":0,"lora_alpha":8}"#, #"{"peft_type":"LORA","lora_alpha":8}"#, #"{"peft_type":"LORA","r":4}"#,
                      #"{"peft_type":"LORA","r":-4,"lora_alpha":8}"#, #"{"peft_type":"LORA","r":4,"lora_alpha":"x"}"#, "[1,2]", "{",
                      #"{"peft_type":"IA3","r":4,"lora_alpha":8}"#, #"{"peft_type":"LORA","r":4,"lora_alpha":8,"use_dora":true}"#])
    func badConfigsAreRefused(config: String) throws {
        let file = try Self.adapterFile([("base_model.model.l.q_proj.lora_A.weight", [4, 16]), ("base_model.model.l.q_proj.lora_B.weight", [16, 4])])
        do {
            _ = try AdapterFolder(configBytes: Array(config.utf8), tensors: file, name: "bad")
            Issue.record("accepted \(config)")
        } catch let e as TesseraError {
            #expect(!e.description.contains("\n"))
        }
    }

    /// Extraction refuses what a LoRA cannot carry or what does not pair: one line each.
    @Test func extractionRefusals() throws {
        let base = try Self.adapterFile([("l.q_proj.weight", [8, 8]), ("l.q_proj.bias", [8])])
        let reshaped = try Self.adapterFile([("l.q_proj.weight", [8, 4]), ("l.q_proj.bias", [8])])
        let extra = try Self.adapterFile([("l.q_proj.weight", [8, 8]), ("l.q_proj.bias", [8]), ("l.k_proj.weight", [8, 8])])
        var biasChanged = TestCheckpoint()
        biasChanged.add("l.q_proj.weight", shape: [8, 8], seed: 1)
        biasChanged.add("l.q_proj.bias", shape: [8], seed: 99)
        let p = NSTemporaryDirectory() + "tessera-bias-\(UUID().uuidString).safetensors"
        try biasChanged.write(to: p)
        defer { try? FileManager.default.removeItem(atPath: p) }
        for (ft, why) in [(reshaped, "in the base"), (extra, "base model does not have"), (try SafetensorsFile(path: p), "bias")] as [(TensorSource, String)] {
            do {
                _ = try LoRAExtraction.extract(base: base, finetuned: ft, maxRank: 2, baseName: "base")
                Issue.record("accepted: \(why)")
            } catch let e as TesseraError {
                #expect(e.description.contains(why) && !e.description.contains("\n"), "\(e)")
            }
        }
        #expect(throws: TesseraError.self) { _ = try LoRAExtraction.extract(base: base, finetuned: base, maxRank: 0, baseName: "base") }
        // The same model: every decomposed module is a zero adapter.
        let zero = try LoRAExtraction.extract(base: base, finetuned: base, maxRank: 2, baseName: "base")
        #expect(zero.tensors.allSatisfy { $0.values.allSatisfy { $0 == 0 } })
    }

    /// A combination whose ranks or densities do not fit is one line, not a wrong result.
    @Test func combinationRefusals() throws {
        let a = try Self.folder("adapters/a"), c = try Self.folder("adapters/c")
        #expect(throws: TesseraError.self) { _ = try AdapterMerge.combine([a, c], weights: [1, 1], options: AdapterCombinationOptions(combination: .ties, density: 0.5)) }
        #expect(throws: TesseraError.self) { _ = try AdapterMerge.combine([a, a], weights: [1, 1], options: AdapterCombinationOptions(combination: .ties)) }
        #expect(throws: TesseraError.self) { _ = try AdapterMerge.combine([a, c], weights: [1], options: AdapterCombinationOptions(combination: .cat)) }
        #expect(throws: TesseraError.self) { _ = try AdapterMerge.combine([a, c], weights: [1, .nan], options: AdapterCombinationOptions(combination: .cat)) }
        #expect(throws: TesseraError.self) { _ = try AdapterMerge.combine([a, c], weights: [1, 1], options: AdapterCombinationOptions(combination: .svd, svdRank: 0)) }
    }

    /// DARE draws its masks from the seed: reproducible, and in expectation the undropped combination.
    @Test func dareIsSeededAndUnbiased() throws {
        let a = try Self.folder("adapters/a"), b = try Self.folder("adapters/b")
        let opts = AdapterCombinationOptions(combination: .dareLinearSVD, svdRank: 16, density: 0.5, seed: 7)
        let x = try Self.deltas(try AdapterMerge.combine([a, b], weights: [0.7, 0.5], options: opts))
        let y = try Self.deltas(try AdapterMerge.combine([a, b], weights: [0.7, 0.5], options: opts))
        #expect(x == y)
        var other = opts
        other.seed = 8
        let z = try Self.deltas(try AdapterMerge.combine([a, b], weights: [0.7, 0.5], options: other))
        #expect(x != z)
        let exact = try Self.deltas(try AdapterMerge.combine([a, b], weights: [0.7, 0.5], options: AdapterCombinationOptions(combination: .cat)))
        let q = "model.layers.0.self_attn.q_proj"
        // One draw of a 256-entry mask at density 0.5: about 1/√(density·n)·… off, far from 0 and far below 1.
        let err = Self.relative(try #require(x[q]), try #require(exact[q]))
        #expect(err > 0.05 && err < 2)
    }
}

/// An `AdapterOutput` as a tensor source (the factors encoded as the writer encodes them).
final class MemoryTensors: TensorSource {
    var tensors: [String: RawTensor] = [:]
    var order: [String] = []
    init(_ output: AdapterOutput) {
        try? output.write { name, raw in tensors[name] = raw; order.append(name) }
    }
    var sourceName: String { "output" }
    var tensorNames: [String] { order }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { tensors[name].map { ($0.dtype, $0.shape) } }
    func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = tensors[name] else { throw TesseraError(.notFound, "no \(name)", hint: "") }
        return t
    }
    var metadata: [(String, String)] { [] }
}
