import Foundation
import Testing
import TesseraEngine
import TesseraMath

/// Decoding multiplies by the GGUF's own Q4_1/Q8_0 blocks. Checked against the float32 dequantisation (itself checked
/// against the gguf package in GGUFTests), on SmolLM2's real tensors, in every kernel set the CPU has (AVX-512, AVX2
/// forced below it, portable).
@Suite(.serialized, .enabled(if: EngineFixtures.hasSmolLM2, "SmolLM2 GGUF not installed (scripts/setup.sh)"))
struct BlockQuantizedMatrixTests {
    /// max |W·x − reference| relative to max |reference|, the reference summed in Double from dequantised weights.
    enum Level: String, CaseIterable { case widest, avx2, portable }

    func relativeError(_ names: [String], accumulate: Bool, level: Level) throws -> Double {
        let gguf = try GGUFFile(path: EngineFixtures.smolLM2Path)
        let matrix = try #require(BlockQuantizedMatrix(gguf: gguf, names: names))
        let weights = try names.flatMap { try gguf.dequantized($0) }
        let cols = matrix.columns, rows = matrix.rows
        #expect(weights.count == rows * cols)
        let x = (0..<cols).map { Float(sin(Double($0) * 0.37)) * 0.8 }
        let start = (0..<rows).map { Float(cos(Double($0))) }
        var y = accumulate ? start : [Float](repeating: .nan, count: rows)
        if level == .portable { CPUKernels.forcePortable(true) }
        if level == .avx2 { CPUKernels.forceAVX2(true) }
        defer {
            if level == .portable { CPUKernels.forcePortable(false) }
            if level == .avx2 { CPUKernels.forceAVX2(false) }
        }
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in matrix.apply(xp.baseAddress!, yp.baseAddress!, accumulate: accumulate, threads: 2) }
        }
        var worst = 0.0, scale = 0.0
        for r in 0..<rows {
            var s = accumulate ? Double(start[r]) : 0
            for c in 0..<cols { s += Double(weights[r * cols + c]) * Double(x[c]) }
            worst = max(worst, abs(Double(y[r]) - s))
            scale = max(scale, abs(s))
        }
        return worst / scale
    }

    @Test(arguments: Level.allCases)
    func q4_1MatchesDequantisedWeights(level: Level) throws {
        // Q/K/V stacked, as the model fuses them; and the down projection, accumulated into the residual.
        let fused = try relativeError(["blk.3.attn_q.weight", "blk.3.attn_k.weight", "blk.3.attn_v.weight"], accumulate: false, level: level)
        let down = try relativeError(["blk.7.ffn_down.weight"], accumulate: true, level: level)
        print("Q4_1 (\(level.rawValue) kernels): relative errors \(fused), \(down)")
        #expect(fused < 1e-5 && down < 1e-5, "relative errors \(fused), \(down)")
    }

    @Test(arguments: Level.allCases)
    func q8_0MatchesDequantisedWeights(level: Level) throws {
        let head = try relativeError(["token_embd.weight"], accumulate: false, level: level)
        #expect(head < 1e-5, "relative error \(head)")
    }

    /// Several tokens at once (a scoring batch through the blocks): every token's row equals the one-token product's
    /// reference, for token counts around the kernel's 16-token chunks.
    @Test(arguments: [2, 16, 19])
    func severalTokensMatchDequantisedWeights(tokens: Int) throws {
        let gguf = try GGUFFile(path: EngineFixtures.smolLM2Path)
        for names in [["blk.5.ffn_gate.weight", "blk.5.ffn_up.weight"], ["token_embd.weight"]] {
            let matrix = try #require(BlockQuantizedMatrix(gguf: gguf, names: names))
            let weights = try names.flatMap { try gguf.dequantized($0) }
            let cols = matrix.columns, rows = matrix.rows
            let x = (0..<(tokens * cols)).map { Float(sin(Double($0) * 0.37)) * 0.8 }
            let start = (0..<(tokens * rows)).map { Float(cos(Double($0))) }
            var y = start
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { matrix.apply(xp.baseAddress!, tokens: tokens, $0.baseAddress!, accumulate: true, threads: 2) }
            }
            var worst = 0.0, scale = 0.0
            for t in 0..<tokens {
                for r in stride(from: 0, to: rows, by: 7) {
                    var s = Double(start[t * rows + r])
                    for c in 0..<cols { s += Double(weights[r * cols + c]) * Double(x[t * cols + c]) }
                    worst = max(worst, abs(Double(y[t * rows + r]) - s))
                    scale = max(scale, abs(s))
                }
            }
            #expect(worst / scale < 1e-5, "\(names[0]), \(tokens) tokens: relative error \(worst / scale)")
        }
    }

    @Test func otherFormatsStayOnTheFloatPath() throws {
        let gguf = try GGUFFile(path: EngineFixtures.smolLM2Path)
        #expect(BlockQuantizedMatrix(gguf: gguf, names: ["blk.0.attn_norm.weight"]) == nil)  // F32, one dimension
        #expect(BlockQuantizedMatrix(gguf: gguf, names: ["blk.0.attn_q.weight", "token_embd.weight"]) == nil)  // Q4_1 + Q8_0
    }
}
