import Foundation

/// A deterministic pseudo-random generator for test data (independent of the library's DropRNG).
public struct TestRNG {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        var x = state
        x ^= x >> 33; x = x &* 0xff51afd7ed558ccd; x ^= x >> 33
        return x
    }
    public mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) }
    public mutating func normal() -> Float {
        let u1 = max(Double(uniform()), 1e-7), u2 = Double(uniform())
        return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
    }
}
