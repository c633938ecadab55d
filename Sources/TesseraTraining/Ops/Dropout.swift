/// PEFT's `lora_dropout` on a LoRA module's input: each element kept with probability 1 − p and scaled by 1/(1 − p).
/// The mask is a hash of (seed, module stream, element index), not a sequential generator, so the backward pass
/// recomputes exactly the forward's mask without storing it, and a seed gives the same masks whatever the threads do.
struct DropoutMasks {
    let probability: Float
    let seed: UInt64

    /// Whether element `index` of stream `stream` is kept.
    @inline(__always)
    func keeps(stream: UInt64, index: Int) -> Bool {
        var z = seed &+ (stream &* 0x9E37_79B9_7F4A_7C15) &+ (UInt64(truncatingIfNeeded: index) &* 0xD1B5_4A32_D192_ED03)
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Float(z >> 40) * (1 / 16_777_216) >= probability
    }

    /// out = x ⊙ mask / (1 − p) over `count` elements (`out` may be `x`).
    func apply(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int, stream: UInt64) {
        let keep = 1 / (1 - probability)
        RowParallel.forRows(count, minimum: 16384) { range in
            for i in range { out[i] = keeps(stream: stream, index: i) ? x[i] * keep : 0 }
        }
    }

    /// dx += g ⊙ mask / (1 − p): the gradient through the dropout.
    func accumulate(_ g: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>, count: Int, stream: UInt64) {
        let keep = 1 / (1 - probability)
        RowParallel.forRows(count, minimum: 16384) { range in
            for i in range where keeps(stream: stream, index: i) { dx[i] += g[i] * keep }
        }
    }
}
