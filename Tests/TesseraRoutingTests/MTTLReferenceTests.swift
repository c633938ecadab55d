import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraRouting
import TesseraTestSupport

/// Routers against mttl 1.0.2 on one routed linear layer (Tests/Fixtures/reference/merge: inputs/lora_experts and
/// mttl/mttl_reference, see its README): Arrow prototypes
/// and σ₁², and the per-token weights and outputs of Arrow top-2, PhatGOOSE top-2, uniform and oracle routing with
/// merge-after; merge-before against its definition on the same data.
@Suite struct MTTLReferenceTests {
    static let folder = PackagePaths.fixtures + "/reference/merge"
    let inputs: SafetensorsFile
    let reference: SafetensorsFile
    let experts = 3, rank = 4, d = 16, scaling: Float = 2

    init() throws {
        inputs = try SafetensorsFile(path: Self.folder + "/inputs/lora_experts.safetensors")
        reference = try SafetensorsFile(path: Self.folder + "/mttl/mttl_reference.safetensors")
    }

    func factors(_ e: Int) throws -> (a: [Float], b: [Float]) {
        (try inputs.floats("expert\(e).lora_A"), try inputs.floats("expert\(e).lora_B"))
    }

    func close(_ a: [Float], _ b: [Float], relative: Float = 2e-6) -> Bool {
        guard a.count == b.count else { return false }
        let scale = max(b.map(abs).max() ?? 1, 1e-6)
        return zip(a, b).allSatisfy { abs($0 - $1) <= relative * scale }
    }

    @Test func arrowPrototypesAndEigenvaluesMatchMTTL() throws {
        for e in 0..<experts {
            let (a, b) = try factors(e)
            let p = try ArrowRouter.prototype(a: a, b: b, rank: rank, inputs: d, outputs: d)
            let expected = try reference.floats("arrow.expert\(e).proto")
            // The sign is arbitrary in mttl; ours is canonical (largest entry positive).
            #expect(close(p.vector, expected, relative: 5e-6) || close(p.vector, expected.map { -$0 }, relative: 5e-6), "expert \(e)")
            let eig = try reference.floats("arrow.expert\(e).eigval")[0]
            #expect(abs(Float(p.eigenvalue) - eig) <= 2e-6 * eig, "expert \(e): \(p.eigenvalue) vs \(eig)")
            let largest = p.vector.indices.max { abs(p.vector[$0]) < abs(p.vector[$1]) }!
            #expect(p.vector[largest] > 0)
        }
    }

    /// A 16×16 layer with the three experts behind `router`; returns the outputs for route.x, example by example (each
    /// example its own forward, as the oracle needs its task).
    func routedOutputs(_ router: ExpertRouter, mixing: ExpertMixing, tasks: [String?] = [nil, nil], oneTokenAtATime: Bool = false) throws -> [Float] {
        let w0 = try reference.floats("route.base_weight"), x = try reference.floats("route.x")
        let projection = try Projection(name: "layer", tensor: "layer.weight", inputs: d, outputs: d, weights: w0)
        let module = RoutedModule(name: "layer", inputs: d, experts: [0, 1, 2])
        let factors = try (0..<experts).map { e -> RoutedLoRAAdapter.ExpertFactors in
            let (a, b) = try self.factors(e)
            return .init(expert: e, rank: rank, a: a, b: b, scaling: scaling)
        }
        let context = RoutingContext()
        try router.prepare(modules: [module])
        projection.adapter = try RoutedLoRAAdapter(inputs: d, outputs: d, groups: [.init(module: module, rows: 0..<d, experts: factors)],
                                                   router: router, context: context, mixing: mixing, name: "layer")
        var y = [Float](repeating: 0, count: x.count)
        let tokens = 5
        for example in 0..<2 {
            context.task = tasks[example]
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    if oneTokenAtATime {
                        // Decoding: the single-token path computes only the chosen experts.
                        for t in 0..<tokens {
                            projection.apply(xp.baseAddress! + (example * tokens + t) * d, rows: 1, into: yp.baseAddress! + (example * tokens + t) * d)
                        }
                    } else {
                        projection.apply(xp.baseAddress! + example * tokens * d, rows: tokens, into: yp.baseAddress! + example * tokens * d)
                    }
                }
            }
        }
        return y
    }

    func weights(_ router: ExpertRouter) throws -> [Float] {
        let x = try reference.floats("route.x")
        let module = RoutedModule(name: "layer", inputs: d, experts: [0, 1, 2])
        var w = [Float](repeating: 0, count: 10 * experts)
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeMutableBufferPointer { wp in
                router.route(xp.baseAddress!, stride: d, rows: 10, module: module, context: RoutingContext(), into: wp.baseAddress!)
            }
        }
        return w
    }

    func arrow(topK: Int) throws -> ArrowRouter {
        var vectors = RouterVectors(kind: ArrowRouter.kind, experts: experts)
        for e in 0..<experts {
            let (a, b) = try factors(e)
            try vectors.set("layer", expert: e, try ArrowRouter.prototype(a: a, b: b, rank: rank, inputs: d, outputs: d).vector)
        }
        return try ArrowRouter(prototypes: vectors, topK: topK, temperature: nil)
    }

    func phatgoose() throws -> PhatGOOSERouter {
        let gates = try inputs.floats("phatgoose_gates")
        var vectors = RouterVectors(kind: PhatGOOSERouter.kind, experts: experts)
        for e in 0..<experts { try vectors.set("layer", expert: e, Array(gates[(e * d)..<((e + 1) * d)])) }
        return try PhatGOOSERouter(gates: vectors, topK: 2, temperature: nil)
    }

    @Test func arrowTop2MergeAfterMatchesMTTL() throws {
        let router = try arrow(topK: 2)
        #expect(close(try weights(router), try reference.floats("route.arrow_top2_mergeafter.weights_dense"), relative: 1e-5))
        #expect(close(try routedOutputs(router, mixing: .mergeAfter), try reference.floats("route.arrow_top2_mergeafter.output")))
    }

    @Test func phatgooseTop2MergeAfterMatchesMTTL() throws {
        let router = try phatgoose()
        #expect(close(try weights(router), try reference.floats("route.phatgoose_top2_mergeafter.weights_dense"), relative: 1e-5))
        #expect(close(try routedOutputs(router, mixing: .mergeAfter), try reference.floats("route.phatgoose_top2_mergeafter.output")))
    }

    @Test func uniformMergeAfterMatchesMTTL() throws {
        #expect(close(try routedOutputs(UniformRouter(), mixing: .mergeAfter), try reference.floats("route.uniform_mergeafter.output")))
    }

    @Test func oracleSendsEachExampleToItsTasksExpert() throws {
        let router = OracleRouter(expertTasks: [["task0"], ["task1"], ["task2"]])
        let y = try routedOutputs(router, mixing: .mergeAfter, tasks: ["task1", "task2:100"])
        #expect(close(y, try reference.floats("route.oracle_task1_task2.output")))
        // A task no expert was trained on gets the base layer alone.
        let base = try routedOutputs(router, mixing: .mergeAfter, tasks: ["unknown", "unknown"])
        let w0 = try reference.floats("route.base_weight"), x = try reference.floats("route.x")
        var plain = [Float](repeating: 0, count: x.count)
        for t in 0..<10 { for o in 0..<d { plain[t * d + o] = (0..<d).reduce(0) { $0 + w0[o * d + $1] * x[t * d + $1] } } }
        #expect(close(base, plain))
    }

    /// Merge-before: per token, A_mix = Σ wₑ·Aₑ and B_mix = Σ wₑ·sₑ·Bₑ, one LoRA product — computed here from its
    /// definition in float64 with Arrow's top-2 weights (checked against mttl above), and different from merge-after.
    @Test func mergeBeforeMixesParametersNotOutputs() throws {
        let router = try arrow(topK: 2)
        let w = try weights(router)
        let x = try reference.floats("route.x"), w0 = try reference.floats("route.base_weight")
        let f = try (0..<experts).map { try factors($0) }
        var expected = [Float](repeating: 0, count: x.count)
        for t in 0..<10 {
            var aMix = [Double](repeating: 0, count: rank * d), bMix = [Double](repeating: 0, count: d * rank)
            for e in 0..<experts {
                let we = Double(w[t * experts + e])
                for i in 0..<(rank * d) { aMix[i] += we * Double(f[e].a[i]) }
                for i in 0..<(d * rank) { bMix[i] += we * Double(scaling) * Double(f[e].b[i]) }
            }
            var h = [Double](repeating: 0, count: rank)
            for r in 0..<rank { for i in 0..<d { h[r] += aMix[r * d + i] * Double(x[t * d + i]) } }
            for o in 0..<d {
                var y = 0.0
                for i in 0..<d { y += Double(w0[o * d + i]) * Double(x[t * d + i]) }
                for r in 0..<rank { y += bMix[o * rank + r] * h[r] }
                expected[t * d + o] = Float(y)
            }
        }
        let before = try routedOutputs(router, mixing: .mergeBefore)
        #expect(close(before, expected, relative: 1e-5))
        let after = try routedOutputs(router, mixing: .mergeAfter)
        #expect(!close(before, after, relative: 1e-3))
    }

    @Test func oneTokenAtATimeGivesTheSameOutputs() throws {
        for (router, name) in [(try arrow(topK: 2) as ExpertRouter, "route.arrow_top2_mergeafter.output"),
                               (try phatgoose(), "route.phatgoose_top2_mergeafter.output"), (UniformRouter(), "route.uniform_mergeafter.output")] {
            #expect(close(try routedOutputs(router, mixing: .mergeAfter, oneTokenAtATime: true), try reference.floats(name)), "\(name)")
        }
        let router = try arrow(topK: 2)
        #expect(close(try routedOutputs(router, mixing: .mergeBefore, oneTokenAtATime: true), try routedOutputs(router, mixing: .mergeBefore), relative: 1e-5))
        let oracle = OracleRouter(expertTasks: [["task0"], ["task1"], ["task2"]])
        #expect(close(try routedOutputs(oracle, mixing: .mergeAfter, tasks: ["task1", "task2"], oneTokenAtATime: true),
                      try reference.floats("route.oracle_task1_task2.output")))
    }

    @Test func topKZeroKeepsEveryExpertWithASoftmaxOverAll() throws {
        let w = try weights(try arrow(topK: 0))
        for t in 0..<10 {
            let row = w[(t * experts)..<((t + 1) * experts)]
            #expect(row.allSatisfy { $0 > 0 })
            #expect(abs(row.reduce(0, +) - 1) < 1e-6)
        }
    }

    @Test func vectorsOfTheWrongShapeAreRefusedWithOneLine() throws {
        var vectors = RouterVectors(kind: ArrowRouter.kind, experts: experts)
        try vectors.set("layer", expert: 0, [Float](repeating: 1, count: 8))
        let router = try ArrowRouter(prototypes: vectors, topK: 2, temperature: nil)
        #expect(throws: (any Error).self) { try router.prepare(modules: [RoutedModule(name: "layer", inputs: d, experts: [0, 1, 2])]) }
        #expect(throws: (any Error).self) { try router.prepare(modules: [RoutedModule(name: "other", inputs: 8, experts: [0])]) }
        #expect(throws: (any Error).self) { try vectors.set("layer", expert: 0, [Float](repeating: 1, count: 9)) }
        #expect(throws: (any Error).self) { try ArrowRouter(prototypes: vectors, topK: 2, temperature: -1) }
    }
}
