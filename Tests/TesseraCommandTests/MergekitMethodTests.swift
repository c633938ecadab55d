import Foundation
import Testing
import TesseraIO
import TesseraMerge
import TesseraTestSupport

/// Every merge method of mergekit 0.1.5, run by `tessera merge --config` on the configs of
/// Tests/Fixtures/mergekit-methods and compared with what mergekit itself wrote for them
/// (scripts/make_mergekit_method_fixtures.py ran mergekit; cases.json says how each case was made).
///
/// The rules tighten by themselves as methods land:
/// - a method Tessera's registry does not have must be refused in one line that names it;
/// - a method it has must give mergekit's tensors, in mergekit's output dtype, bit for bit (see `tolerant` for the
///   methods whose float32 arithmetic may legitimately round differently; TIES and breadcrumbs may also differ where
///   equal magnitudes straddle a density cut, since mergekit's torch.argsort leaves their order unspecified), or, for
///   the methods that draw random masks (DARE, DELLA), pass structural checks against mergekit's output and against
///   the method's definition;
/// - a config mergekit refuses (the error-* cases) must be refused too, in one line;
/// - `knownDifferences` lists the cases that do not yet, each with its reason; a listed case that starts matching fails
///   the test, so the table can only shrink.
@Suite struct MergekitMethodTests {
    static let fixtures = PackagePaths.fixtures + "/mergekit-methods"

    /// mergekit 0.1.5's registry (mergekit/merge_methods/registry.py), written out so that a fixture set that lost a
    /// method fails `theFixturesCoverEveryMethod`.
    static let mergekitMethods: Set<String> = [
        "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
        "sce", "model_stock", "nuslerp", "multislerp", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl", "passthrough", "slerp",
    ]

    /// Methods whose float32 results may differ from mergekit's in the last bits without a difference in meaning, and
    /// why (from mergekit's code): they reduce over whole tensors (norms, dot products, means) or call transcendental
    /// functions, and torch's vectorised reductions and libm (Sleef) round differently from any other implementation's.
    /// For them a float32 output may differ by 1e-6 of the tensor's largest magnitude, and a float16/bfloat16 output by
    /// one step of its dtype in at most 1% of the values (a float32 result a few bits off rounds the other way).
    /// Every other method is elementwise arithmetic in a fixed order (task vectors, masks from sorts and sign
    /// counts, weighted sums term by term), which an implementation can reproduce bit for bit.
    static let tolerant: [String: String] = [
        "slerp": "norms and the dot product are chunked torch reductions; acos/sin from torch",
        "nuslerp": "row or tensor norms and dot products are torch reductions; acos/sin from torch",
        "multislerp": "norms, the weighted mean and its norm are torch reductions; cos/sin from torch",
        "karcher": "iterated norms and dot products (torch reductions) and arccos/sin; the stopping test depends on them",
    ]

    /// Cases that do not match mergekit yet, each with the reason (found by running this suite). A case that starts
    /// matching fails the test until it is removed from here.
    static let knownDifferences: [String: String] = {
        let table: [String: String] = [:]
        // linear, task arithmetic, TIES and breadcrumbs left this table with the dtype work: linear accumulates with
        // fused multiply-adds as torch's addcmul_ does; the others compute in the config's dtype op by op; magnitude
        // ties at the density threshold are resolved in torch's sort order; a 16-bit compute dtype rounds the result
        // before out_dtype converts it.
        // model_stock, nearswap, ram and sce (select_topk 1) left it when they rounded each op to the 16-bit dtype;
        // sce with select_topk < 1 when torch.topk's choice among tied variances was replayed (TorchTopK).
        // arcee_fusion and ramplus_tl left it when their result dtype followed mergekit's (a float32 mask or λ promotes
        // a 16-bit merge to float32, written so unless out_dtype is set) and arcee_fusion's gate was computed in the dtype.
        return table
    }()

    // MARK: - The fixtures

    struct Case: Sendable {
        var name: String
        var method: String
        var modelsDType: String
        var deterministic: Bool
        var mergekitMerged: Bool
        var random: Random?
        var sparsification: Sparsification?
    }

    /// What cases.json records for a TIES or breadcrumbs case: enough to find the entries whose result depends on how
    /// torch orders equal magnitudes at a density cut.
    struct Sparsification: Sendable {
        /// A parameter as written: a scalar, or a filter list (the first entry whose filter is in the tensor's name,
        /// or that has none, wins).
        enum Setting: Sendable {
            case scalar(Double)
            case filters([(filter: String?, value: Double)])

            init?(_ json: Any?) {
                if let d = json as? Double { self = .scalar(d); return }
                guard let list = json as? [[String: Any]] else { return nil }
                var entries: [(filter: String?, value: Double)] = []
                for e in list {
                    guard let v = e["value"] as? Double else { return nil }  // a gradient: not used by these cases
                    entries.append((e["filter"] as? String, v))
                }
                self = .filters(entries)
            }

            func value(for tensor: String) -> Double? {
                switch self {
                case .scalar(let d): return d
                case .filters(let entries):
                    return entries.first { $0.filter == nil || $0.filter == "*" || tensor.contains($0.filter!) }?.value
                }
            }
        }

        var outliers: Bool
        var rescale: Bool
        var computeDType: String
        var models: [(name: String, density: Setting, gamma: Setting)]

        init?(_ json: Any?) {
            guard let r = json as? [String: Any], let models = r["models"] as? [[String: Any]], let dtype = r["compute_dtype"] as? String
            else { return nil }
            outliers = r["method"] as? String == "magnitude_outliers"
            rescale = r["rescale"] as? Bool ?? false
            computeDType = dtype
            var parsed: [(name: String, density: Setting, gamma: Setting)] = []
            for m in models {
                guard let name = m["model"] as? String, let d = Setting(m["density"]), let g = Setting(m["gamma"]) else { return nil }
                parsed.append((name, d, g))
            }
            self.models = parsed
        }
    }

    /// What cases.json records for a DARE/DELLA case: its models' weights, densities and epsilons, and the rescale flag.
    struct Random: Sendable {
        var models: [(name: String, weight: Double, density: Double, epsilon: Double)]
        var rescale: Bool
        var della: Bool

        init?(_ json: Any?) {
            guard let r = json as? [String: Any], let models = r["models"] as? [[String: Any]] else { return nil }
            self.models = models.map { ($0["model"] as? String ?? "?", $0["weight"] as? Double ?? 1, $0["density"] as? Double ?? 1, $0["epsilon"] as? Double ?? 0) }
            rescale = r["rescale"] as? Bool ?? true
            della = r["sparsification"] as? String == "della_magprune"
        }
    }

    static let cases: [String: Case] = {
        guard let data = FileManager.default.contents(atPath: fixtures + "/cases.json"),
              let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let all = root["cases"] as? [String: [String: Any]] else { return [:] }
        var out: [String: Case] = [:]
        for (name, c) in all {
            out[name] = Case(name: name, method: c["method"] as? String ?? "?", modelsDType: c["models_dtype"] as? String ?? "?",
                             deterministic: c["deterministic"] as? Bool ?? true, mergekitMerged: c["mergekit"] as? String == "merged",
                             random: Random(c["random"]), sparsification: Sparsification(c["sparsification"]))
        }
        return out
    }()

    static let caseNames: [String] = cases.keys.sorted()

    @Test func theFixturesCoverEveryMethod() throws {
        let root = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/cases.json"))) as? [String: Any])
        #expect(root["mergekit"] as? String == "0.1.5")
        #expect(Set(Self.cases.values.map(\.method)) == Self.mergekitMethods)
        for method in Self.mergekitMethods {
            for dtype in ["float32", "bfloat16", "float16"] {
                #expect(Self.cases.values.contains { $0.method == method && $0.modelsDType == dtype }, "\(method) has no \(dtype) case")
            }
        }
        for c in Self.cases.values {
            // The error-* cases are configs mergekit refuses; every other one it merged.
            #expect(c.mergekitMerged == !c.name.hasPrefix("error-"), "\(c.name): mergekit \(c.mergekitMerged ? "merged" : "failed")")
            #expect(FileManager.default.fileExists(atPath: Self.fixtures + "/configs/\(c.name).yml"))
            #expect(FileManager.default.fileExists(atPath: Self.fixtures + "/expected/\(c.name).safetensors") == c.mergekitMerged)
            #expect(c.deterministic == (c.random == nil))
        }
        for name in Self.knownDifferences.keys { #expect(Self.cases[name] != nil, "known difference \(name) is not a case") }
        for name in Self.tolerant.keys { #expect(Self.mergekitMethods.contains(name)) }
    }

    // MARK: - Every case

    /// What tessera did with a case.
    enum Verdict: CustomStringConvertible {
        case refused(String)
        case matches
        case differs(String)

        var description: String {
            switch self {
            case .refused(let m): return "refused: \(m)"
            case .matches: return "matches mergekit"
            case .differs(let m): return "differs: \(m)"
            }
        }
    }

    @Test(arguments: caseNames)
    func caseMergesLikeMergekitOrIsRefused(name: String) throws {
        let c = try #require(Self.cases[name])
        let s = try Sandbox()
        let out = s.path("out.safetensors")
        let run = tessera("merge", "--config", Self.fixtures + "/configs/\(name).yml", "-o", out)
        let message = run.tesseraError?.description ?? "\(run.error.map { "\($0)" } ?? "no error")"
        guard c.mergekitMerged else {
            // mergekit refuses this config (a contract or parameter check): so must tessera, in one line.
            if Self.knownDifferences[name] != nil {
                if run.error != nil { Issue.record("\(name) is now refused like mergekit does: remove it from the known differences") }
                return
            }
            #expect(run.tesseraError != nil && !message.contains("\n"), "\(name): mergekit refuses it; tessera: \(message)")
            #expect(!FileManager.default.fileExists(atPath: out))
            return
        }
        guard MergeRegistry.names.contains(c.method) else {
            // Not implemented: refused in one line that names the method, and nothing written.
            #expect(run.tesseraError != nil, "\(name): tessera did not refuse '\(c.method)' (\(message))")
            #expect(!message.contains("\n") && message.contains("'\(c.method)'"), "\(name): \(message)")
            #expect(!FileManager.default.fileExists(atPath: out))
            #expect(Self.knownDifferences[name] == nil, "\(name): \(c.method) is not in the registry; known differences are for methods that are")
            return
        }
        let verdict: Verdict
        if let error = run.error {
            verdict = .refused("\(error)")
        } else {
            verdict = try Self.compare(c, got: Checkpoints.tensors(out))
        }
        if let reason = Self.knownDifferences[name] {
            print("MergekitMethodTests \(name), a known difference: \(verdict)")
            if case .matches = verdict {
                Issue.record("\(name) now matches mergekit: remove it from the known differences (\(reason))")
            }
        } else if case .matches = verdict {
        } else {
            Issue.record("\(name): \(verdict)")
        }
    }

    /// The structural checks hold for mergekit's own outputs (DELLA's too, before Tessera has DELLA): a check that
    /// mergekit fails would be a wrong check.
    @Test(arguments: caseNames.filter { cases[$0]?.deterministic == false && cases[$0]?.mergekitMerged == true })
    func structuralChecksAcceptMergekitsOwnOutput(name: String) throws {
        let c = try #require(Self.cases[name])
        let expected = try Checkpoints.tensors(Self.fixtures + "/expected/\(name).safetensors")
        let verdict = try Self.compare(c, got: expected)
        if case .matches = verdict {} else { Issue.record("\(name): mergekit against itself: \(verdict)") }
    }

    /// The checks can fail: a deterministic output off by one float32 step somewhere, and random merges that rescale
    /// wrongly (not at all; by 1/density instead of mergekit's L1 ratio), are each judged different from mergekit.
    @Test func theChecksRejectWrongOutputs() throws {
        let s = try Sandbox()
        // ties-f32 matches today: change one value by one step.
        let ties = try #require(Self.cases["ties-f32"])
        var expected = try Checkpoints.tensors(Self.fixtures + "/expected/ties-f32.safetensors")
        var t = try #require(expected["model.norm.weight"])
        var bits = t.bytes.withUnsafeBytes { $0.load(as: UInt32.self) }
        bits += 1
        withUnsafeBytes(of: &bits) { t.bytes.replaceSubrange(0..<4, with: $0) }
        expected["model.norm.weight"] = t
        if case .matches = try Self.compare(ties, got: expected) { Issue.record("a value one step off was judged equal") }

        guard MergeRegistry.names.contains("dare_linear") else { return }
        let dare = try #require(Self.cases["dare_linear-single-f32"])
        let config = try String(contentsOfFile: Self.fixtures + "/configs/dare_linear-single-f32.yml", encoding: .utf8)
            .replacingOccurrences(of: "../models/", with: Self.fixtures + "/models/")
        for (label, extra) in [("no rescale", "  rescale: false\n"), ("rescale by 1/density", "  rescale_mode: density\n")] {
            let variant = config.replacingOccurrences(of: "dtype: float32", with: "parameters:\n" + extra + "dtype: float32")
            try variant.write(toFile: s.path("c.yml"), atomically: true, encoding: .utf8)
            try? FileManager.default.removeItem(atPath: s.path("o.safetensors"))
            tesseraSucceeds("merge", "--config", s.path("c.yml"), "-o", s.path("o.safetensors"))
            let verdict = try Self.compare(dare, got: Checkpoints.tensors(s.path("o.safetensors")))
            if case .matches = verdict { Issue.record("dare_linear with \(label) was judged like mergekit's") }
        }
    }

    // MARK: - Comparison

    static func compare(_ c: Case, got: [String: ReadTensor]) throws -> Verdict {
        let expected = try Checkpoints.tensors(fixtures + "/expected/\(c.name).safetensors")
        guard Set(got.keys) == Set(expected.keys) else {
            return .differs("tensor names differ: \(Set(got.keys).symmetricDifference(expected.keys).sorted().prefix(4))")
        }
        for (k, e) in expected where got[k]?.dtype != e.dtype || got[k]?.shape != e.shape {
            return .differs("\(k) is \(got[k]?.dtype ?? "?") \(got[k]?.shape ?? []), mergekit wrote \(e.dtype) \(e.shape)")
        }
        if c.deterministic { return deterministic(c, got: got, expected: expected) }
        return try structural(c, got: got, expected: expected)
    }

    /// Bit for bit (±0 equal), or within `tolerant`'s bounds for the methods listed there.
    static func deterministic(_ c: Case, got: [String: ReadTensor], expected: [String: ReadTensor]) -> Verdict {
        var differing = 0, total = 0, worst = 0.0, worstTensor = "", outside = 0, atTies = 0
        // rescale: true multiplies the kept entries by Σ|τ| / Σ_kept|τ|, sums over the tensor whose float32 rounding
        // depends on the order of the additions (torch's vectorised reduction has its own).
        let lenient = tolerant[c.method] != nil || c.sparsification?.rescale == true
        for (k, e) in expected.sorted(by: { $0.key < $1.key }) {
            let x = decode(got[k]!), y = decode(e)
            let scale = max(y.map(abs).max() ?? 0, 1e-30)
            let tied = c.sparsification.map { tiedAtCut($0, models: c.modelsDType, tensor: k) } ?? []
            for (j, (a, b)) in zip(x, y).enumerated() where !(a == b || (a.isNaN && b.isNaN)) {
                if tied.contains(j) { atTies += 1; continue }
                differing += 1
                let r = abs(a - b) / scale
                if r > worst { worst = r; worstTensor = k }
                if e.dtype == "F32" ? r > 1e-6 : abs(a - b) > step(b, e.dtype) * 1.0001 { outside += 1 }
            }
            total += y.count
        }
        // Entries tied in magnitude across a density cut: mergekit keeps whichever torch's unstable argsort puts first
        // (its order for equal keys is unspecified); any choice among them is mergekit's method.
        _ = atTies  // (bfloat16 inputs: about 3% of a tensor's entries are such ties; float16: under 0.5%)
        if differing == 0 { return .matches }
        let summary = "\(differing) of \(total) values differ (largest \(String(format: "%.2e", worst)) of the tensor's scale, in \(worstTensor))"
        guard lenient else { return .differs(summary) }
        let low = expected.values.first?.dtype != "F32"
        if outside == 0 && (!low || differing * 100 <= total) { return .matches }
        return .differs(summary + ", \(outside) beyond the tolerance")
    }

    /// DARE and DELLA draw their masks from torch's RNG, which no other implementation reproduces: the checks are on
    /// what the draws must give. Each is also applied to mergekit's own output, so a check that mergekit fails is a
    /// wrong check, not a tessera bug.
    static func structural(_ c: Case, got: [String: ReadTensor], expected: [String: ReadTensor]) throws -> Verdict {
        let random = try #require(c.random)
        let models = random.models
        let densities = models.map(\.density)
        let base = try Checkpoints.tensors(fixtures + "/models/\(c.modelsDType)/base/model.safetensors")
        let f32 = expected.values.first?.dtype == "F32"
        var problems: [String] = []

        // 1. Entries left at the base value: every task vector dropped there. The fraction is ∏(1 − density) (a kept
        //    entry always survives the sign election of dare_ties/della: the elected sign is one of the kept ones'),
        //    over the models whose task vector is not 0 there.
        //    In float32 against that number; in float16/bfloat16 (where base + a small delta can round to the base)
        //    against mergekit's fraction only.
        func unchangedFraction(_ t: [String: ReadTensor]) -> Double {
            var same = 0, n = 0
            for (k, v) in t {
                let x = decode(v), b = decode(base[k]!)
                same += zip(x, b).filter { $0 == $1 }.count
                n += x.count
            }
            return Double(same) / Double(n)
        }
        let ours = unchangedFraction(got), theirs = unchangedFraction(expected)
        // ∏ over the models whose task vector is not already 0 there (ft3 leaves a third of the base unchanged).
        var expectedSame = 0.0, count = 0
        let inputs = try models.map { try Checkpoints.tensors(fixtures + "/models/\(c.modelsDType)/\($0.name)/model.safetensors") }
        for (k, v) in base {
            let b = decode(v), fts = inputs.map { decode($0[k]!) }
            for i in b.indices {
                expectedSame += fts.indices.reduce(1) { p, m in fts[m][i] == b[i] ? p : p * (1 - densities[m]) }
            }
            count += b.count
        }
        let theory = expectedSame / Double(count)
        if abs(ours - theirs) > 0.05 { problems.append("unchanged fraction \(fmt(ours)), mergekit's \(fmt(theirs))") }
        if f32 && abs(theirs - theory) > 0.05 { problems.append("check is wrong: mergekit's unchanged fraction \(fmt(theirs)), ∏(1−density) \(fmt(theory))") }
        if f32 && abs(ours - theory) > 0.05 { problems.append("unchanged fraction \(fmt(ours)), ∏(1−density) \(fmt(theory))") }

        // 2. Size: the L1 norm of the merged task vector, within 10% of mergekit's (rescaling or not, normalising or
        //    not, lambda, weights: a wrong one moves it by far more than the draws do over ~4,000 values).
        func l1(_ t: [String: ReadTensor]) -> Double {
            t.reduce(0) { s, kv in s + zip(decode(kv.value), decode(base[kv.key]!)).reduce(0) { $0 + abs($1.0 - $1.1) } }
        }
        let ratio = l1(got) / l1(expected)
        if abs(ratio - 1) > 0.1 { problems.append("L1 norm of the merged task vector is \(fmt(ratio)) × mergekit's") }

        // 3. One model, float32: on each tensor the kept entries are the task vector times one factor, weight × the
        //    L1 rescale Σ|δ| / Σ_kept|δ| (1 without rescale); with DELLA the keep probability grows with the entry's
        //    magnitude rank in its row, from density − ε to density + ε, so the top half of each row keeps ε more than
        //    the bottom half (DARE: the same).
        if models.count == 1, f32 {
            let weight = models[0].weight, rescale = random.rescale
            let ft = try Checkpoints.tensors(fixtures + "/models/\(c.modelsDType)/\(models[0].name)/model.safetensors")
            for (label, t) in [("tessera", got), ("mergekit", expected)] {
                var worst = 0.0, top = (kept: 0, n: 0), bottom = (kept: 0, n: 0)
                for (k, v) in t {
                    let x = decode(v), b = decode(base[k]!), f = decode(ft[k]!)
                    let delta = zip(f, b).map { $0 - $1 }
                    let kept = x.indices.filter { x[$0] != b[$0] && delta[$0] != 0 }
                    let keptL1 = kept.reduce(0) { $0 + abs(delta[$1]) }
                    guard keptL1 > 0 else { continue }
                    let factor = weight * (rescale ? delta.reduce(0) { $0 + abs($1) } / keptL1 : 1)
                    let scale = max(x.map(abs).max() ?? 0, 1e-30)
                    for i in kept { worst = max(worst, abs((x[i] - b[i]) - delta[i] * factor) / scale) }
                    let shape = v.shape, cols = shape.count >= 2 ? shape.dropFirst().reduce(1, *) : x.count
                    for row in stride(from: 0, to: x.count, by: cols) {
                        let order = (row..<(row + cols)).sorted { abs(delta[$0]) < abs(delta[$1]) }
                        for (r, i) in order.enumerated() {
                            let keep = x[i] != b[i] ? 1 : 0
                            if r < cols / 2 { bottom.kept += keep; bottom.n += 1 } else if r >= cols - cols / 2 { top.kept += keep; top.n += 1 }
                        }
                    }
                }
                // A few float32 roundings (δ, the factor, base + factor·δ) stay under 1e-5 of the tensor's largest value;
                // a wrong factor (1/density instead of the L1 ratio, a missing weight) is off by 1e-3 and more.
                if worst > 1e-5 {
                    problems.append("\(label): kept entries are not δ × one factor per tensor (off by \(String(format: "%.1e", worst)) of its scale)")
                }
                let gap = Double(top.kept) / Double(max(top.n, 1)) - Double(bottom.kept) / Double(max(bottom.n, 1))
                let wanted = random.della ? models[0].epsilon : 0
                if abs(gap - wanted) > 0.08 {
                    problems.append("\(label): the larger half of each row keeps \(fmt(gap)) more than the smaller half, not \(fmt(wanted))")
                }
            }
        }
        return problems.isEmpty ? .matches : .differs(problems.joined(separator: "; "))
    }

    /// The flat indices of a tensor whose TIES/breadcrumbs selection depends on the order of equal magnitudes: for
    /// some model, |θ_i − θ_base| (computed in the compute dtype, as torch does: in float32, rounded to it) equals the
    /// magnitudes on both sides of a cut of its ascending order. The cuts are mergekit's: top-k keeps
    /// k = max(1, ⌊density·n⌋), so the cut is at n − k; breadcrumbs keeps ascending ranks [n_bot, n_bot + ⌊density·n⌋)
    /// with n_bot = max(0, n − ⌊density·n⌋ − ⌊gamma·n⌋).
    static func tiedAtCut(_ sp: Sparsification, models dtype: String, tensor: String) -> Set<Int> {
        let file = { (m: String) in fixtures + "/models/\(dtype)/\(m)/model.safetensors" }
        guard let baseTensor = try? Checkpoints.tensors(file("base"))[tensor] else { return [] }
        let base = decode(baseTensor).map { round(Float($0), to: sp.computeDType) }
        var tied = Set<Int>()
        for m in sp.models {
            guard let t = try? Checkpoints.tensors(file(m.name))[tensor], let density = m.density.value(for: tensor),
                  let gamma = m.gamma.value(for: tensor), density < 1 else { continue }
            let ft = decode(t).map { round(Float($0), to: sp.computeDType) }
            let magnitude = zip(ft, base).map { abs(round($0 - $1, to: sp.computeDType)) }
            let n = magnitude.count, sorted = magnitude.sorted()
            let keep = Int(density * Double(n))
            let cuts: [Int]
            if sp.outliers {
                let bottom = max(0, n - keep - Int(gamma * Double(n)))
                cuts = [bottom, bottom + keep]
            } else {
                cuts = [n - max(1, keep)]
            }
            for cut in cuts where cut > 0 && cut < n && sorted[cut - 1] == sorted[cut] {
                for j in 0..<n where magnitude[j] == sorted[cut] { tied.insert(j) }
            }
        }
        return tied
    }

    /// A float32 value rounded to `dtype` (to nearest, ties to even), as a Float.
    static func round(_ x: Float, to dtype: String) -> Float {
        switch dtype {
        case "bfloat16":
            let b = x.bitPattern
            return Float(bitPattern: (b &+ 0x7FFF &+ ((b >> 16) & 1)) & 0xFFFF_0000)
        case "float16": return Float(Float16(x))
        default: return x
        }
    }

    // MARK: - Values

    /// A tensor's values as Doubles: F32, F16 and BF16 (the tests' own conversions).
    static func decode(_ t: ReadTensor) -> [Double] {
        switch t.dtype {
        case "F16": return Checkpoints.values(t)
        case "BF16":
            return t.bytes.withUnsafeBytes { raw in
                raw.bindMemory(to: UInt16.self).map { Double(Float(bitPattern: UInt32(UInt16(littleEndian: $0)) << 16)) }
            }
        default: return Checkpoints.values(t)
        }
    }

    /// One step of `dtype` at `x` (its unit in the last place).
    static func step(_ x: Double, _ dtype: String) -> Double {
        switch dtype {
        case "F16": return Checkpoints.halfULP(x)
        case "BF16":
            let a = max(abs(x), 0x1p-126)
            return Foundation.pow(2, floor(log2(a)) - 7)
        default: return Double(Float(x).ulp)
        }
    }

    static func fmt(_ x: Double) -> String { String(format: "%.3f", x) }
}
