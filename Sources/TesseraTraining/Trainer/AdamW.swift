import Foundation

/// torch.optim.AdamW (its single-tensor CPU path, the one taken for CPU tensors) on float32 parameters: decoupled
/// weight decay, then the moments, then a bias-corrected step with ε added outside the square root. The scalars
/// (1 − lr·λ, the bias corrections, the step size) are computed in double as Python computes them, then rounded
/// to float32 as torch's kernels take them; each element is updated in float32 in torch's order of operations.
public struct AdamWSettings: Sendable, Equatable {
    public var beta1: Double
    public var beta2: Double
    public var epsilon: Double
    public var weightDecay: Double

    public init(beta1: Double = 0.9, beta2: Double = 0.999, epsilon: Double = 1e-8, weightDecay: Double = 0) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }
}

/// The state of one parameter tensor: its first and second moments (`exp_avg`, `exp_avg_sq`).
public struct AdamWMoments: Sendable, Equatable {
    public var firstMoment: [Float]
    public var secondMoment: [Float]

    public init(count: Int) {
        firstMoment = [Float](repeating: 0, count: count)
        secondMoment = [Float](repeating: 0, count: count)
    }

    public init(firstMoment: [Float], secondMoment: [Float]) {
        self.firstMoment = firstMoment
        self.secondMoment = secondMoment
    }
}

public enum AdamW {
    /// One update of `parameters` from `gradients` at optimizer step `step` (1-based: the first update is step 1),
    /// with learning rate `lr` (the schedule's value for this step).
    public static func update(_ parameters: inout [Float], gradients: [Float], moments: inout AdamWMoments,
                              step: Int, lr: Double, settings: AdamWSettings) {
        precondition(parameters.count == gradients.count && moments.firstMoment.count == parameters.count
                     && moments.secondMoment.count == parameters.count, "AdamW: sizes")
        precondition(step >= 1, "AdamW: steps count from 1")
        let decay = Float(1 - lr * settings.weightDecay)
        let oneMinusBeta1 = Float(1 - settings.beta1)
        let beta2 = Float(settings.beta2)
        let oneMinusBeta2 = Float(1 - settings.beta2)
        let biasCorrection1 = 1 - pow(settings.beta1, Double(step))
        let biasCorrection2 = 1 - pow(settings.beta2, Double(step))
        let stepSize = Float(lr / biasCorrection1)
        let biasCorrection2Sqrt = Float(biasCorrection2.squareRoot())
        let epsilon = Float(settings.epsilon)
        let applyDecay = settings.weightDecay != 0
        parameters.withUnsafeMutableBufferPointer { p in
            gradients.withUnsafeBufferPointer { g in
                moments.firstMoment.withUnsafeMutableBufferPointer { m in
                    moments.secondMoment.withUnsafeMutableBufferPointer { v in
                        for i in 0..<p.count {
                            if applyDecay { p[i] = p[i] * decay }
                            let gi = g[i]
                            // exp_avg.lerp_(grad, 1 − β1): weight < 0.5, so self + w·(end − self).
                            m[i] = m[i] + oneMinusBeta1 * (gi - m[i])
                            // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value=1 − β2)
                            v[i] = v[i] * beta2 + oneMinusBeta2 * gi * gi
                            let denom = v[i].squareRoot() / biasCorrection2Sqrt + epsilon
                            p[i] = p[i] + -stepSize * (m[i] / denom)
                        }
                    }
                }
            }
        }
    }
}
