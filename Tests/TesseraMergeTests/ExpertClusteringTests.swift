import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// Experts built in memory for the library tests: PEFT adapter folders whose bytes the test writes.
enum LibraryFixtures {
    struct ModuleSpec {
        var name: String
        /// A [r, d_in], B [d_out, r] (PEFT layout).
        var a: [Float]
        var b: [Float]
        var rank: Int
        var inFeatures: Int
        var outFeatures: Int
    }

    /// An adapter folder with `modules`, r = the first module's rank, lora_alpha = `alpha`; modules of another rank
    /// get a rank_pattern and an alpha_pattern entry (`patternAlpha`, default their rank, so scaling 1).
    static func expert(_ name: String, _ modules: [ModuleSpec], alpha: Double, fanInFanOut: Bool = false, patternAlpha: Double? = nil,
                       extraTensors: [(String, [Float], [Int])] = []) throws -> AdapterFolder {
        let r = modules.first?.rank ?? 1
        let other = modules.filter { $0.rank != r }
        let config: JSONValue = .object([
            ("peft_type", .string("LORA")), ("r", .int(r)), ("lora_alpha", .double(alpha)), ("fan_in_fan_out", .bool(fanInFanOut)),
            ("target_modules", .array(Set(modules.map { String($0.name.split(separator: ".").last ?? "") }).sorted().map { .string($0) })),
            ("rank_pattern", .object(other.map { ($0.name, .int($0.rank)) })),
            ("alpha_pattern", .object(other.map { ($0.name, .double(patternAlpha ?? Double($0.rank))) })),
        ])
        var tensors: [(String, [Float], [Int])] = []
        for m in modules {
            tensors.append((LoRAAdapter.peftPrefix + m.name + ".lora_A.weight", m.a, [m.rank, m.inFeatures]))
            tensors.append((LoRAAdapter.peftPrefix + m.name + ".lora_B.weight", m.b, [m.outFeatures, m.rank]))
        }
        tensors += extraTensors
        let out = AdapterOutput(config: config, tensors: [], rank: r)
        return try AdapterFolder(configBytes: out.configBytes, tensors: FloatTensors(tensors), name: name)
    }

    static func transpose(_ x: [Float], rows: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        for i in 0..<rows { for j in 0..<cols { out[j * rows + i] = x[i * cols + j] } }
        return out
    }

    static func random(_ count: Int, _ rng: inout TestRNG) -> [Float] { (0..<count).map { _ in rng.normal() } }

    /// The six MBC experts of the mttl reference (mttl layout lora_a = Aᵀ [16, 4], lora_b = Bᵀ [4, 16]) as PEFT
    /// adapters of one module "layer".
    static func mttlExperts() throws -> [AdapterFolder] {
        let f = try ReferenceData.file("mttl/mttl_reference.safetensors")
        return try (0..<6).map { e in
            let la = try f.floats("mbc.e\(e).lora_a"), lb = try f.floats("mbc.e\(e).lora_b")
            return try expert("e\(e)", [ModuleSpec(name: "layer", a: transpose(la, rows: 16, cols: 4), b: transpose(lb, rows: 4, cols: 16),
                                                   rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8)
        }
    }
}

/// Float32 tensors held in memory, written bit for bit (NaN included, which AdapterOutput's writer refuses).
final class FloatTensors: TensorSource {
    let tensors: [(name: String, raw: RawTensor)]
    init(_ values: [(String, [Float], [Int])]) {
        tensors = values.map { name, v, shape in
            (name, RawTensor(dtype: .f32, shape: shape, bytes: v.flatMap { x in withUnsafeBytes(of: x.bitPattern.littleEndian) { Array($0) } }))
        }
    }
    var sourceName: String { "memory" }
    var tensorNames: [String] { tensors.map(\.name) }
    func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? { tensors.first { $0.name == name }.map { ($0.raw.dtype, $0.raw.shape) } }
    func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = tensors.first(where: { $0.name == name }) else { throw TesseraError(.notFound, "no \(name)") }
        return t.raw
    }
    var metadata: [(String, String)] { [] }
}

/// MBC (mttl's model-based clustering) against mttl 1.0.2's reference values (Tests/Fixtures/reference/merge/mttl/,
/// vendored from the project's shared reference set; see Tests/Fixtures/SOURCES.md).
@Suite struct ExpertClusteringTests {
    /// The flattened vector is mttl's: lora_a = Aᵀ then lora_b = Bᵀ, value for value. A layout with A instead of
    /// Aᵀ, or B before A, fails this even though the cosine would not notice (it is permutation invariant).
    @Test func flattensInMttlLayout() throws {
        let f = try ReferenceData.file("mttl/mttl_reference.safetensors")
        let experts = try LibraryFixtures.mttlExperts()
        for (e, expert) in experts.enumerated() {
            let v = try ExpertClustering.parameterVector(expert, modules: ["layer"])
            #expect(v == (try f.floats("mbc.e\(e).lora_a")) + (try f.floats("mbc.e\(e).lora_b")), "e\(e)")
        }
    }

    /// The reference's cosine similarity to 1e-6 (measured: 2.4e-7, the reference is float32) and its partition
    /// {e0,e3}, {e1,e4}, {e2,e5}, equal to the reference labels up to renaming, for several seeds.
    @Test func reproducesMttlReference() throws {
        let f = try ReferenceData.file("mttl/mttl_reference.safetensors")
        let expected = try f.floats("mbc.thr0.5.cos_sim")
        let raw = try f.rawTensor("mbc.thr0.5.labels")
        #expect(raw.dtype == .i32)
        let referenceLabels = stride(from: 0, to: raw.bytes.count, by: 4).map {
            Int(Int32(littleEndian: raw.bytes[$0..<$0 + 4].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }))
        }
        let experts = try LibraryFixtures.mttlExperts()
        for seed: UInt64 in [0, 1, 42, 12345] {
            let r = try ExpertClustering.cluster(experts, options: .init(k: 3, sparsity: 0.5, seed: seed))
            #expect(r.similarity.count == 36)
            var worst = 0.0
            for k in 0..<36 { worst = max(worst, abs(r.similarity[k] - Double(expected[k]))) }
            #expect(worst < 1e-6, "cos_sim off by \(worst)")
            #expect(r.clusters == [[0, 3], [1, 4], [2, 5]], "seed \(seed): \(r.clusters)")
            #expect(r.labels == [0, 1, 2, 0, 1, 2])
            // Same partition as the reference labels: i, j together here exactly when together there.
            for i in 0..<6 { for j in 0..<6 { #expect((r.labels[i] == r.labels[j]) == (referenceLabels[i] == referenceLabels[j])) } }
            #expect(r.modules == ["layer"] && r.parameterCount == 128)
            // Half of each expert's 128 entries are zeroed (mttl asserts this fraction).
            #expect(r.thresholds.count == 6 && r.thresholds.allSatisfy { $0 > 0 })
        }
    }

    /// The kept run is the best partition: on the reference's similarity rows, k-means' inertia equals the minimum
    /// over all 3-partitions of the six rows (enumerated), and the same seed gives the same run.
    @Test func kMeansFindsTheOptimalPartition() throws {
        let experts = try LibraryFixtures.mttlExperts()
        let r = try ExpertClustering.cluster(experts, options: .init(k: 3, sparsity: 0.5))
        let rows = (0..<6).map { Array(r.similarity[($0 * 6)..<($0 * 6 + 6)]) }
        var best = Double.infinity
        // Every labelling of 6 points with 3 labels, all used.
        for code in 0..<729 {
            var c = code, labels: [Int] = []
            for _ in 0..<6 { labels.append(c % 3); c /= 3 }
            guard Set(labels).count == 3 else { continue }
            var inertia = 0.0
            for l in 0..<3 {
                let members = rows.indices.filter { labels[$0] == l }
                var mean = [Double](repeating: 0, count: 6)
                for m in members { for d in 0..<6 { mean[d] += rows[m][d] / Double(members.count) } }
                for m in members { for d in 0..<6 { inertia += (rows[m][d] - mean[d]) * (rows[m][d] - mean[d]) } }
            }
            best = min(best, inertia)
        }
        #expect(abs(r.inertia - best) < 1e-12, "inertia \(r.inertia), optimum \(best)")
        let again = try ExpertClustering.cluster(experts, options: .init(k: 3, sparsity: 0.5))
        #expect(again.labels == r.labels && again.inertia == r.inertia)
    }

    /// k-means on planted, well separated groups (given in shuffled order) finds them, clusters numbered by their
    /// smallest member; k = 1 puts everything in one cluster; k = n gives singletons.
    @Test func kMeansRecoversPlantedGroups() {
        var rng = TestRNG(state: 7)
        let centers: [[Double]] = [[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]]
        let group = [2, 0, 3, 1, 1, 0, 2, 3, 3, 2, 0, 1]
        let points = group.map { g in centers[g].map { $0 + Double(rng.normal()) * 0.3 } }
        let km = ExpertClustering.kMeans(points, k: 4, restarts: 10, seed: 3, maxIterations: 300, tolerance: 1e-4)
        for i in points.indices { for j in points.indices { #expect((km.labels[i] == km.labels[j]) == (group[i] == group[j])) } }
        let one = ExpertClustering.kMeans(points, k: 1, restarts: 2, seed: 0, maxIterations: 300, tolerance: 1e-4)
        #expect(Set(one.labels) == [0])
        let all = ExpertClustering.kMeans(points, k: points.count, restarts: 2, seed: 0, maxIterations: 300, tolerance: 1e-4)
        #expect(Set(all.labels).count == points.count && all.inertia == 0)
    }

    /// numpy's linear quantile, both interpolation branches and the ends: np.quantile([1, 2, 3, 4], q) is 1.0, 1.9,
    /// 2.5, 3.1, 4.0 for q = 0, 0.3, 0.5, 0.7, 1; sparsify zeroes entries at or below it.
    @Test func quantileIsNumpys() {
        let s: [Double] = [1, 2, 3, 4]
        for (q, v) in [(0.0, 1.0), (0.3, 1.9), (0.5, 2.5), (0.7, 3.1), (1.0, 4.0)] {
            #expect(abs(ExpertClustering.quantile(sorted: s, q) - v) < 1e-15, "q \(q)")
        }
        var x: [Float] = [-4, 1, 0.5, -2, 3, 0]
        let t = ExpertClustering.sparsify(&x, sparsity: 0.5)  // |x| sorted 0, 0.5, 1, 2, 3, 4: h = 2.5 → 1.5
        #expect(t == 1.5)
        #expect(x == [-4, 0, 0, -2, 3, 0])
    }

    /// Modules shared by all experts are compared, in sorted order; an expert's extra module is left out.
    @Test func comparesSharedModulesOnly() throws {
        var rng = TestRNG(state: 11)
        func spec(_ name: String) -> LibraryFixtures.ModuleSpec {
            .init(name: name, a: LibraryFixtures.random(2 * 4, &rng), b: LibraryFixtures.random(3 * 2, &rng), rank: 2, inFeatures: 4, outFeatures: 3)
        }
        let e0 = try LibraryFixtures.expert("e0", [spec("m.v"), spec("m.q")], alpha: 2)
        let e1 = try LibraryFixtures.expert("e1", [spec("m.q"), spec("m.k"), spec("m.v")], alpha: 2)
        let shared = try ExpertClustering.sharedModules([e0, e1])
        #expect(shared == ["m.q", "m.v"])
        let r = try ExpertClustering.cluster([e0, e1], options: .init(k: 1, sparsity: 0))
        #expect(r.parameterCount == 2 * (8 + 6))
        let v0 = try ExpertClustering.parameterVector(e0, modules: ["m.q", "m.v"])
        let q = try ExpertClustering.parameterVector(e0, modules: ["m.q"]), v = try ExpertClustering.parameterVector(e0, modules: ["m.v"])
        #expect(v0 == q + v)
    }

    /// An all-zero expert has similarity 0 with the others and 1 with itself (no NaN), and clusters alone.
    @Test func allZeroExpertIsDefined() throws {
        var experts = try LibraryFixtures.mttlExperts()
        experts.append(try LibraryFixtures.expert("zero", [.init(name: "layer", a: [Float](repeating: 0, count: 64), b: [Float](repeating: 0, count: 64),
                                                                 rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8))
        let r = try ExpertClustering.cluster(experts, options: .init(k: 4, sparsity: 0.5))
        #expect(!r.similarity.contains { !$0.isFinite })
        for j in 0..<7 { #expect(r.similarity[6 * 7 + j] == (j == 6 ? 1 : 0)) }
        #expect(r.clusters == [[0, 3], [1, 4], [2, 5], [6]])
    }

    /// Bad inputs are one-line errors: k outside 1...n, sparsity outside [0, 1), shapes or ranks that differ, no
    /// shared module, a non-finite factor.
    @Test func refusesBadInputs() throws {
        let experts = try LibraryFixtures.mttlExperts()
        func fails(_ what: String, _ experts: [AdapterFolder], _ o: ExpertClustering.Options, _ words: String) {
            do {
                _ = try ExpertClustering.cluster(experts, options: o)
                Issue.record("\(what): no error")
            } catch let e as TesseraError {
                #expect(e.message.contains(words), "\(what): \(e.message)")
                #expect(!e.description.contains("\n"))
            } catch { Issue.record("\(what): \(error)") }
        }
        fails("k > n", experts, .init(k: 7), "k = 7 clusters for 6 experts")
        fails("k = 0", experts, .init(k: 0), "k = 0")
        fails("no experts", [], .init(k: 1), "at least one expert")
        for s in [1.0, -0.1, 1.5, .nan, .infinity] { fails("sparsity \(s)", experts, .init(k: 2, sparsity: s), "sparsity") }
        fails("restarts", experts, .init(k: 2, restarts: 0), "restarts")
        var rng = TestRNG(state: 5)
        let wide = try LibraryFixtures.expert("wide", [.init(name: "layer", a: LibraryFixtures.random(4 * 8, &rng), b: LibraryFixtures.random(16 * 4, &rng),
                                                             rank: 4, inFeatures: 8, outFeatures: 16)], alpha: 8)
        fails("shape", experts + [wide], .init(k: 2), "maps 8 → 16 features in wide")
        let rank2 = try LibraryFixtures.expert("rank2", [.init(name: "layer", a: LibraryFixtures.random(2 * 16, &rng), b: LibraryFixtures.random(16 * 2, &rng),
                                                              rank: 2, inFeatures: 16, outFeatures: 16)], alpha: 8)
        fails("rank", experts + [rank2], .init(k: 2), "has rank 2 in rank2 but 4 in e0")
        let elsewhere = try LibraryFixtures.expert("other", [.init(name: "other", a: LibraryFixtures.random(64, &rng), b: LibraryFixtures.random(64, &rng),
                                                                  rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8)
        fails("disjoint", [experts[0], elsewhere], .init(k: 1), "share no adapted module")
        var a = LibraryFixtures.random(64, &rng)
        a[5] = .nan
        let nan = try LibraryFixtures.expert("nan", [.init(name: "layer", a: a, b: LibraryFixtures.random(64, &rng), rank: 4, inFeatures: 16, outFeatures: 16)], alpha: 8)
        fails("nan", experts + [nan], .init(k: 2), "not finite")
    }
}
