import Foundation
import TesseraIO

/// The learning-rate schedules of transformers' `get_scheduler`, as multipliers of the base rate for optimizer step
/// k (0-based: the first update uses k = 0), computed in double as transformers' lambdas are.
public enum LearningRateSchedule: String, Sendable, CaseIterable, Equatable {
    /// `get_linear_schedule_with_warmup`: k/w during warm-up, then linearly down to 0 at the last step.
    case linear
    /// `get_cosine_schedule_with_warmup` (half a cycle): k/w, then 0.5·(1 + cos(π·progress)).
    case cosine
    /// `get_constant_schedule_with_warmup`: k/w, then 1.
    case constant

    public func multiplier(step k: Int, warmup w: Int, total t: Int) -> Double {
        if k < w { return Double(k) / Double(max(1, w)) }
        switch self {
        case .constant:
            return 1
        case .linear:
            return max(0, Double(t - k) / Double(max(1, t - w)))
        case .cosine:
            let progress = Double(k - w) / Double(max(1, t - w))
            return max(0, 0.5 * (1 + cos(Double.pi * 0.5 * 2 * progress)))
        }
    }

    public func rate(base: Double, step k: Int, warmup w: Int, total t: Int) -> Double {
        base * multiplier(step: k, warmup: w, total: t)
    }
}

/// `--warmup`: a number of steps (`100`) or a fraction of the total (`0.1`, transformers' `warmup_ratio`, rounded up
/// as transformers rounds it).
public enum WarmupSpec: Sendable, Equatable {
    case steps(Int)
    case ratio(Double)

    public init(parsing text: String) throws {
        let s = text.trimmingCharacters(in: .whitespaces)
        if let n = Int(s), n >= 0 {
            self = .steps(n)
        } else if let r = Double(s), r.isFinite, r >= 0, r < 1, s.contains(".") || s.contains("e") {
            self = .ratio(r)
        } else {
            throw TesseraError(.usage, "--warmup '\(text)' is neither a number of steps nor a ratio in [0, 1)",
                               hint: "e.g. --warmup 100 (steps) or --warmup 0.1 (a tenth of the steps)")
        }
    }

    public func steps(total: Int) -> Int {
        switch self {
        case let .steps(n): return n
        case let .ratio(r): return Int((Double(total) * r).rounded(.up))
        }
    }

    public var description: String {
        switch self {
        case let .steps(n): return String(n)
        case let .ratio(r): return String(r)
        }
    }
}
