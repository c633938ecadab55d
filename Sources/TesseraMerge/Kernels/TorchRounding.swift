import TesseraCore
import TesseraMath

/// mergekit's arithmetic in a 16-bit merge dtype, one torch op at a time.
///
/// mergekit 0.1.5 loads every input in the config's `dtype` (when it is missing: the inputs' own dtype, promoted
/// across inputs) and runs each method's torch ops on tensors of that dtype. On CPU, torch computes an elementwise op
/// on float16 or bfloat16 tensors in float32 (both operands are exact in float32; a Python number or a 0-dim float32
/// tensor operand keeps its float32 value) and rounds the result to the dtype, to nearest even; reductions (`sum`,
/// `norm`) accumulate in float32 and round once at the end. So a method reproduces mergekit bit for bit by computing
/// each op in float32 and passing its result through `TorchRounding` where the torch code has a tensor of the merge
/// dtype. In float32 the rounding is the identity, and the methods keep their float32 loops (checked with
/// `isIdentity`) so that emulating costs nothing there.
///
/// What is not reproduced exactly: reductions over a whole 16-bit tensor (`sum`, `norm`, `dot`) accumulate here in
/// double precision (`TorchReductions.wideSum` and its kin), rounded once to float32 and then to the dtype, while torch
/// sums float32 partial sums in its own vectorised cascade order; the two agree to an ulp or so of float32, which
/// changes a 16-bit result only when it sits within that distance of a rounding boundary.
///
/// Public so that the tests can check the rounding against `HalfFloat`'s conversions.
public struct TorchRounding: Sendable {
    let half: TesseraMath.FloatCodec.Half?

    /// The rounding of a merge in `dtype`: the identity unless it is float16 or bfloat16.
    public init(_ dtype: DType) {
        switch dtype {
        case .f16: half = .f16
        case .bf16: half = .bf16
        default: half = nil
        }
    }

    /// True for float32 (and wider) dtypes, where the methods keep their plain float32 loops.
    public var isIdentity: Bool { half == nil }

    /// x rounded to the dtype (nearest, ties to even), as a float32: what `HalfFloat`'s conversion there and back
    /// gives, computed here on the float's bits so that it inlines into the methods' loops (one call per op).
    @inline(__always)
    public func callAsFunction(_ x: Float) -> Float {
        switch half {
        case nil: return x
        case .bf16?: return Self.bf16(x)
        case .f16?: return Self.f16(x)
        }
    }

    @inline(__always)
    /// x rounded to bfloat16, as a float32.
    public static func bf16(_ x: Float) -> Float {
        if x.isNaN { return x }
        let bits = x.bitPattern
        // Adding 0x7FFF plus the lowest kept bit rounds to nearest even; a carry moves into the exponent (up to inf).
        return Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
    }

    @inline(__always)
    /// x rounded to float16, as a float32 (±infinity past 65504).
    public static func f16(_ x: Float) -> Float {
        if x.isNaN { return x }
        let magnitude = abs(x)
        if magnitude < 6.103515625e-05 {
            // float16 subnormals (and zero): multiples of 2^-24; scaling by 2^24 is exact.
            return (x * 16_777_216).rounded(.toNearestOrEven) * 5.9604644775390625e-08
        }
        let bits = x.bitPattern
        let r = Float(bitPattern: (bits &+ 0x0FFF &+ ((bits >> 13) & 1)) & 0xFFFF_E000)
        // Past float16's largest finite value (65504) the rounding gives infinity.
        return abs(r) > 65504 ? (x < 0 ? -.infinity : .infinity) : r
    }

    /// Rounds every value in place (the result of an elementwise op on whole tensors).
    public func round(_ x: inout [Float]) {
        guard let half else { return }
        x.withUnsafeMutableBufferPointer { TesseraMath.FloatCodec.round($0, to: half) }
    }

    /// A reduction's result as torch returns it in the merge dtype: accumulated wider, rounded once to float32, then
    /// to the dtype.
    @inline(__always)
    func reduced(_ x: Double) -> Float { self(Float(x)) }
}
