import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

@Suite struct TaskVectorTests {
    let base: SafetensorsFile
    let fts: [SafetensorsFile]
    let ref: SafetensorsFile
    init() throws {
        base = try ReferenceData.file("inputs/base.safetensors")
        fts = try (1...3).map { try ReferenceData.file("inputs/ft\($0).safetensors") }
        ref = try ReferenceData.file("task_vectors/task_vectors_reference.safetensors")
    }

    @Test func taskVectorsMatchReference() throws {
        for (i, ft) in fts.enumerated() {
            var out: [String: RawTensor] = [:]
            try TaskVectors.subtract(finetuned: ft, base: base) { out[$0] = $1 }
            for name in base.tensorNames {
                #expect(relativeError(try out[name]!.floats(), try ref.floats("tau\(i + 1).\(name)")) <= 1e-6)
            }
            // The lazy source gives the same values.
            let lazy = try TaskVectorSource(finetuned: ft, base: base)
            for name in base.tensorNames {
                #expect(try lazy.floats(name) == out[name]!.floats())
            }
        }
    }

    @Test(arguments: [
        ("sum_tau123.apply_to_scaling0.5", [1.0, 1.0, 1.0], 0.5),
        ("sum_tau123.apply_to_scaling1.0", [1.0, 1.0, 1.0], 1.0),
        ("tau1_plus_tau2_minus_tau3.apply_to_scaling0.5", [1.0, 1.0, -1.0], 0.5),
        ("neg_tau1.apply_to_scaling1.0", [-1.0, 0.0, 0.0], 1.0),
    ])
    func applicationMatchesReference(prefix: String, coefficients: [Double], scaling: Double) throws {
        let vectors = try zip(fts, coefficients).filter { $0.1 != 0 }.map { (vector: try TaskVectorSource(finetuned: $0.0, base: base) as TensorSource, coefficient: $0.1) }
        var out: [String: RawTensor] = [:]
        try TaskVectors.apply(base: base, vectors: vectors, scaling: scaling) { out[$0] = $1 }
        for name in base.tensorNames {
            let err = relativeError(try out[name]!.floats(), try ref.floats("\(prefix).\(name)"))
            #expect(err <= 1e-6, "\(prefix) \(name): \(err)")
        }
    }

    @Test func missingTensorIsNamed() throws {
        let partial = try MemorySource("partial.safetensors", floats: [("layer.bias", [16], [Float](repeating: 0, count: 16))])
        let e = #expect(throws: TesseraError.self) { try TaskVectors.subtract(finetuned: partial, base: base) { _, _ in } }
        #expect(e?.message.contains("layer.weight") == true)
    }
}

@Suite struct FisherTests {
    @Test func fisherMergeMatchesMatenaRaffel() throws {
        let yaml = """
        merge_method: fisher
        models:
          - model: inputs/ft1.safetensors
            parameters: {weight: 0.3333333333333333, fisher: inputs/fisher1.safetensors}
          - model: inputs/ft2.safetensors
            parameters: {weight: 0.3333333333333333, fisher: inputs/fisher2.safetensors}
          - model: inputs/ft3.safetensors
            parameters: {weight: 0.3333333333333333, fisher: inputs/fisher3.safetensors}
        """
        let plan = try MergeConfig.parse(yaml: yaml).plan { try SafetensorsFile(path: ReferenceData.path($0)) }
        let out = try runMerge(plan)
        let ref = try ReferenceData.file("fisher/fisher_reference.safetensors")
        for name in ["layer.bias", "layer.weight", "proj.weight"] {
            let err = relativeError(try out[name]!.floats(), try ref.floats("fisher.c333.defaults.\(name)"))
            #expect(err <= 1e-6, "\(name): \(err)")
        }
    }

    @Test func fisherNormsMatchReference() throws {
        let ref = try ReferenceData.file("fisher/fisher_reference.safetensors")
        for i in 1...3 {
            let norm = try FisherMerge.l2Norm(of: try ReferenceData.file("inputs/fisher\(i).safetensors"))
            let expected = Double(try ref.floats("fisher_l2norm.model\(i)")[0])
            #expect(abs(norm - expected) / expected <= 1e-6)
        }
    }

    @Test func softmaxFisherEstimationMatchesReference() throws {
        let ref = try ReferenceData.file("fisher/fisher_reference.safetensors")
        let (fw, fb) = try DiagonalFisher.softmaxClassifier(w: try ref.floats("fisher_estimation.W"), b: try ref.floats("fisher_estimation.b"),
                                                            x: try ref.floats("fisher_estimation.X"), inputs: 4, classes: 3)
        #expect(relativeError(fw, try ref.floats("fisher_estimation.fisher_W")) <= 1e-6)
        #expect(relativeError(fb, try ref.floats("fisher_estimation.fisher_b")) <= 1e-6)
    }
}

@Suite struct LoRACombinationTests {
    static func adapters() throws -> [LoRACombination.Adapter] {
        let f = try ReferenceData.file("inputs/lora_experts.safetensors")
        return try (0..<3).map { e in
            try LoRACombination.Adapter(a: try f.tensor("expert\(e).lora_A"), b: try f.tensor("expert\(e).lora_B"), scaling: 2.0)
        }
    }
    static let weights: [Float] = [0.5, 0.3, 0.2]

    @Test func sourceDeltasMatch() throws {
        let ref = try ReferenceData.file("peft/add_weighted_adapter.safetensors")
        for (e, a) in try Self.adapters().enumerated() {
            let dW = try LoRACombination.deltaWeight([a], weights: [1])
            #expect(relativeError(dW, try ref.floats("source.e\(e).delta_weight")) <= 1e-6)
        }
    }

    @Test func catIsExact() throws {
        let ref = try ReferenceData.file("peft/add_weighted_adapter.safetensors")
        let cat = try LoRACombination.cat(try Self.adapters(), weights: Self.weights)
        #expect(cat.rank == 12)
        #expect(relativeError(cat.a, try ref.floats("cat_w0p5_0p3_0p2.lora_A")) <= 1e-6)
        #expect(relativeError(cat.b, try ref.floats("cat_w0p5_0p3_0p2.lora_B")) <= 1e-6)
        #expect(relativeError(cat.deltaWeight, try ref.floats("cat_w0p5_0p3_0p2.delta_weight")) <= 1e-6)
        #expect(try ref.floats("cat_w0p5_0p3_0p2.scaling")[0] == cat.scaling)
    }

    /// The reference SVD ran in float32 (torch): ΔW's rank-4 truncation agrees to ~2e-6 of its largest entry whichever
    /// float32 or float64 SVD computes it, so the tolerance here is 1e-5; factors agree up to each component's sign.
    @Test func svdIsTheBestRankRApproximation() throws {
        let ref = try ReferenceData.file("peft/add_weighted_adapter.safetensors")
        let svd = try LoRACombination.svd(try Self.adapters(), weights: Self.weights, rank: 4)
        #expect(relativeError(svd.deltaWeight, try ref.floats("svd_w0p5_0p3_0p2.delta_weight")) <= 1e-5)
        let refA = try ref.floats("svd_w0p5_0p3_0p2.lora_A"), refB = try ref.floats("svd_w0p5_0p3_0p2.lora_B")
        for r in 0..<4 {
            let a = Array(svd.a[(r * 16)..<((r + 1) * 16)]), ra = Array(refA[(r * 16)..<((r + 1) * 16)])
            let sign: Float = zip(a, ra).map { $0 * $1 }.reduce(0, +) >= 0 ? 1 : -1
            #expect(relativeError(a.map { $0 * sign }, ra) <= 1e-4, "A row \(r)")
            let b = (0..<16).map { svd.b[$0 * 4 + r] * sign }, rb = (0..<16).map { refB[$0 * 4 + r] }
            #expect(relativeError(b, rb) <= 1e-4, "B column \(r)")
        }
        #expect(throws: TesseraError.self) { try LoRACombination.svd(try Self.adapters(), weights: Self.weights, rank: 17) }
    }
}
