import Foundation
import TesseraCore
import TesseraIO

/// How a routed layer combines the experts its router weighted, per token. The two differ by about half the LoRA
/// contribution, so a router records which one it was built for and evaluation never picks one silently.
public enum ExpertMixing: String, Sendable, CaseIterable {
    /// Σₑ wₑ · sₑ·Bₑ·Aₑ·x: a mixture of the experts' outputs (mttl's `lora_merge_after`).
    case mergeAfter = "merge-after"
    /// (Σₑ wₑ·sₑ·Bₑ) · (Σₑ wₑ·Aₑ) · x: a mixture of the experts' parameters, then one LoRA product (mttl's default).
    /// Factors of lower rank are padded with zeros to the highest rank among a module's experts.
    case mergeBefore = "merge-before"
}

/// One adapted module of a routed model: its PEFT name, its input width, and which experts of the library adapt it
/// (indices into the library, ascending). A router's weights for the module are over these experts, in this order.
public struct RoutedModule: Sendable, Equatable {
    public var name: String
    public var inputs: Int
    public var experts: [Int]

    public init(name: String, inputs: Int, experts: [Int]) {
        self.name = name
        self.inputs = inputs
        self.experts = experts
    }
}

/// What a router may know about the input beyond a layer's rows, set before each forward pass by whoever runs the
/// model (`RoutedLanguageModel`): the current example's task (the oracle router) and per-expert scores of the whole
/// input (Glider's global router). One context is shared by every routed layer of a model.
public final class RoutingContext: @unchecked Sendable {
    private let lock = NSLock()
    private var _task: String?
    private var _globalScores: [Float]?

    public init() {}

    /// The task the current example belongs to (the evaluation task's name), if known.
    public var task: String? {
        get { lock.withLock { _task } }
        set { lock.withLock { _task = newValue } }
    }

    /// Per-expert scores of the whole current input (library order), if a global router computed them.
    public var globalScores: [Float]? {
        get { lock.withLock { _globalScores } }
        set { lock.withLock { _globalScores = newValue } }
    }
}

/// A router: per token and per adapted module, a weight for each expert that adapts the module.
///
/// Routers are built once per model (everything they need checked then: `prepare`), and `route` runs inside the
/// forward pass, where nothing can throw; a router that cannot route a row (the oracle with no expert for the task)
/// writes zeros, i.e. the base model alone, and `prepare` or `RoutedLanguageModel` has said so beforehand. `route`
/// is called concurrently for different modules of one projection (decoding routes q, k and v on separate cores), so
/// it reads only what `init` and `prepare` left and the context, and writes only `weights`.
public protocol ExpertRouter: AnyObject {
    /// The method's name as `route build --method` and router.json spell it.
    var method: String { get }
    /// Checks the router has what it needs for every module (prototypes, gates), before any forward pass.
    func prepare(modules: [RoutedModule]) throws
    /// Writes `rows × module.experts.count` weights, row-major, for the input rows `x` (row t at `x + t·stride`,
    /// `module.inputs` floats).
    func route(_ x: UnsafePointer<Float>, stride: Int, rows: Int, module: RoutedModule, context: RoutingContext,
               into weights: UnsafeMutablePointer<Float>)
}

/// Top-k selection and the softmax over what it selected, as mttl's selectors compute them: the k largest logits
/// (ties broken towards the lower expert index, as a stable descending sort does), a softmax over those k, zeros
/// elsewhere. `k <= 0` or `k >= count` keeps all.
public enum TopKSoftmax {
    public static func apply(_ logits: UnsafeMutablePointer<Float>, count: Int, k: Int) {
        guard count > 0 else { return }
        if k <= 0 || k >= count {
            softmax(logits, count: count) { _ in true }
            return
        }
        if count <= 64 {
            // Per token and module in the forward pass: a bit mask, no allocation. Each pass takes the largest logit
            // not yet kept (the first on a tie), as a stable descending sort would.
            var kept: UInt64 = 0
            for _ in 0..<k {
                var best = -1
                for i in 0..<count where kept & (1 << UInt64(i)) == 0 {
                    if best < 0 || logits[i] > logits[best] || (logits[best].isNaN && !logits[i].isNaN) { best = i }
                }
                if best >= 0 { kept |= 1 << UInt64(best) }
            }
            softmax(logits, count: count) { kept & (1 << UInt64($0)) != 0 }
            return
        }
        var order = Array(0..<count)
        order.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        var keep = [Bool](repeating: false, count: count)
        for i in order.prefix(k) { keep[i] = true }
        softmax(logits, count: count) { keep[$0] }
    }

    private static func softmax(_ v: UnsafeMutablePointer<Float>, count: Int, keep: (Int) -> Bool) {
        var high = -Float.infinity
        for i in 0..<count where keep(i) { high = max(high, v[i]) }
        guard high.isFinite else {
            // Every logit NaN or infinite: no expert can be preferred; the base model alone.
            for i in 0..<count { v[i] = 0 }
            return
        }
        var sum: Float = 0
        for i in 0..<count {
            if keep(i) {
                v[i] = Foundation.exp(v[i] - high)
                sum += v[i]
            } else {
                v[i] = 0
            }
        }
        for i in 0..<count { v[i] /= sum }
    }
}
