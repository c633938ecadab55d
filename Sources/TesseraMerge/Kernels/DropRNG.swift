import TesseraMath

/// The random numbers behind DARE's drop masks: SplitMix64 used as a counter-based generator.
///
/// Element j of model m's task vector for tensor `name` under seed s is kept when
///     u = mix64(streamKey(s, name, m) + (j + 1) * 0x9E3779B97F4A7C15) >> 11      (53 random bits)
///     u < floor(density * 2^53)
/// where mix64 is SplitMix64's output function (Steele, Lea & Flood 2014) and
///     streamKey = mix64(mix64(mix64(s + 0x9E3779B97F4A7C15) ^ fnv1a64(utf8(name))) ^ m).
/// Every element's draw depends only on (seed, tensor name, model position, flat index), so the result is the same
/// whatever the thread count, the tensor order or the other tensors in the file, and a merge can be replayed from its
/// provenance (which records the seed and `DropRNG.generatorName`).
public enum DropRNG {
    public static let generatorName = "splitmix64-counter/fnv1a64(tensor)/model-index"
    static let golden: UInt64 = 0x9E37_79B9_7F4A_7C15

    @inline(__always)
    public static func mix64(_ z0: UInt64) -> UInt64 { MergeKernels.mix64(z0) }

    public static func fnv1a64(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }

    public static func streamKey(seed: UInt64, tensor: String, model: Int) -> UInt64 {
        mix64(mix64(mix64(seed &+ golden) ^ fnv1a64(tensor)) ^ UInt64(model))
    }

    /// The keep threshold on 53-bit draws for a keep probability `density` in (0, 1].
    static func threshold(density: Double) -> UInt64 {
        UInt64((density * 9_007_199_254_740_992.0).rounded(.down))
    }

    /// DARE's drop: keeps each entry with probability `density` and zeroes the rest, in place (the kept fraction is
    /// density in expectation). Rescaling is the caller's.
    static func drop(_ x: UnsafeMutableBufferPointer<Float>, density: Double, key: UInt64) {
        MergeKernels.randomDrop(x, key: key, increment: golden, limit: threshold(density: density))
    }
}
