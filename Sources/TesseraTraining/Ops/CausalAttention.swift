import Foundation
import TesseraMath

/// Causal multi-head attention with grouped key/value heads (query head h reads KV head h / (heads / kvHeads)), over
/// Q, K and V held in one row-major buffer [tokens, ·] at column offsets; optional local window (GPT-Neo: query t
/// sees keys t − window + 1 … t). Every product is an sgemm over a block of query rows and only the keys that block
/// can see, so the causal mask costs about half of the full square. The probabilities are kept for the backward when
/// the caller gives room for them (`probabilityCount`, 12 MB per SmolLM2 layer at 8 × 256 tokens); otherwise the
/// backward recomputes each block's scores (one product and a softmax) from Q and K.
enum CausalAttention {
    struct Shape {
        var heads: Int
        var kvHeads: Int
        var headDim: Int
        var scale: Float
        var window: Int?
        /// Row stride of the Q/K/V buffer and column offsets of Q, K, V in it.
        var ld: Int
        var qOffset: Int, kOffset: Int, vOffset: Int
        /// Row stride of the output [tokens, heads · headDim].
        var ldo: Int
        /// Bidirectional (BERT): every query sees every key of its sequence.
        var bidirectional = false
    }

    /// Query rows per block.
    static let block = 64

    /// Floats of scratch one call needs: each (sequence, head) work item gets two [block, length] score blocks.
    static func scratchCount(sequences: [Range<Int>], heads: Int) -> Int {
        2 * block * heads * sequences.reduce(0) { $0 + $1.count }
    }

    /// Floats one head of a sequence of `length` tokens keeps: each block of query rows times the keys it sees.
    static func probabilitiesPerHead(length: Int, _ s: Shape) -> Int {
        var total = 0, r0 = 0
        while r0 < length {
            let r1 = min(length, r0 + block)
            total += (r1 - r0) * keyRange(r0, r1, length: length, s).count
            r0 = r1
        }
        return total
    }

    /// Floats of the probabilities kept for the backward of one call.
    static func probabilityCount(sequences: [Range<Int>], _ s: Shape) -> Int {
        sequences.reduce(0) { $0 + s.heads * probabilitiesPerHead(length: $1.count, s) }
    }

    /// Where head `h` of the `index`-th sequence keeps its probabilities (blocks one after another).
    static func probabilityOffsets(sequences: [Range<Int>], _ s: Shape) -> [Int] {
        var offsets: [Int] = [], total = 0
        for sequence in sequences {
            offsets.append(total)
            total += s.heads * probabilitiesPerHead(length: sequence.count, s)
        }
        return offsets
    }

    /// The keys rows r0..<r1 may see, and for one row its own visible range.
    @inline(__always)
    static func keyRange(_ r0: Int, _ r1: Int, length: Int, _ s: Shape) -> Range<Int> {
        if s.bidirectional { return 0..<length }
        let low = s.window.map { max(0, r0 - $0 + 1) } ?? 0
        return low..<r1
    }

    @inline(__always)
    static func visible(_ t: Int, length: Int, _ s: Shape) -> Range<Int> {
        if s.bidirectional { return 0..<length }
        let low = s.window.map { max(0, t - $0 + 1) } ?? 0
        return low..<(t + 1)
    }

    /// Runs `body(sequence, group, scratch)` for every sequence and `groups` work items per sequence, spread over the
    /// cores with OpenBLAS on one thread: a head's products ([64, 64] · [64, ≤ length]) are too small for BLAS's own
    /// threads, whose hand-offs would cost more than they save.
    static func forEachItem(_ sequences: [Range<Int>], groups: Int, scratch: UnsafeMutablePointer<Float>,
                            _ body: (Int, Range<Int>, Int, UnsafeMutablePointer<Float>) -> Void) {
        var items: [(Int, Range<Int>, Int, Int)] = []
        var offset = 0
        for (index, sequence) in sequences.enumerated() {
            for g in 0..<groups {
                items.append((index, sequence, g, offset))
                offset += 2 * block * sequence.count
            }
        }
        let threads = Linalg.threads
        if threads > 1 { Linalg.setThreads(1) }
        defer { if threads > 1 { Linalg.setThreads(threads) } }
        let shared = SharedMutablePointer(scratch)
        items.withUnsafeBufferPointer { list in
            Parallel.forEach(list.count) { i in body(list[i].0, list[i].1, list[i].2, shared.base + list[i].3) }
        }
    }

    /// out[t, h·hd ..< (h+1)·hd] for every token of each sequence (`sequences`: row ranges of the buffers).
    /// `scratch` holds `scratchCount` floats; `probabilities`, if given, `probabilityCount` floats, where the
    /// probabilities are kept for `backward`.
    static func forward(_ qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, sequences: [Range<Int>], shape s: Shape,
                        scratch: UnsafeMutablePointer<Float>, probabilities: UnsafeMutablePointer<Float>? = nil) {
        let group = s.heads / s.kvHeads, hd = s.headDim
        let output = SharedMutablePointer(out), input = SharedPointer(qkv)
        let kept = probabilities.map { SharedMutablePointer($0) }, offsets = probabilities == nil ? [] : probabilityOffsets(sequences: sequences, s)
        forEachItem(sequences, groups: s.heads, scratch: scratch) { index, sequence, h, scratch in
            let T = sequence.count
            let base = input.base + sequence.lowerBound * s.ld, o = output.base + sequence.lowerBound * s.ldo
            let g = h / group
            var stored = kept.map { $0.base + offsets[index] + h * probabilitiesPerHead(length: T, s) }
            var r0 = 0
            while r0 < T {
                let r1 = min(T, r0 + block), keys = keyRange(r0, r1, length: T, s), nk = keys.count
                let p = stored ?? scratch
                stored = stored.map { $0 + (r1 - r0) * nk }
                Linalg.sgemm(transposeB: true, m: r1 - r0, n: nk, k: hd, alpha: s.scale, base + r0 * s.ld + s.qOffset + h * hd, lda: s.ld,
                             base + keys.lowerBound * s.ld + s.kOffset + g * hd, ldb: s.ld, p, ldc: nk)
                softmaxRows(p, rows: r0..<r1, keys: keys, length: T, s)
                Linalg.sgemm(m: r1 - r0, n: hd, k: nk, p, lda: nk, base + keys.lowerBound * s.ld + s.vOffset + g * hd, ldb: s.ld,
                             o + r0 * s.ldo + h * hd, ldc: s.ldo)
                r0 = r1
            }
        }
    }

    /// Masked softmax of a block's score rows in place (entries outside a row's visible keys become 0).
    static func softmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Range<Int>, keys: Range<Int>, length: Int, _ s: Shape) {
        let nk = keys.count
        for t in rows {
            let row = p + (t - rows.lowerBound) * nk
            let v = visible(t, length: length, s)
            let lo = v.lowerBound - keys.lowerBound, hi = v.upperBound - keys.lowerBound
            for j in 0..<lo { row[j] = 0 }
            for j in hi..<nk { row[j] = 0 }
            VectorKernels.softmaxInPlace(row + lo, count: hi - lo)
        }
    }

    /// dqkv's Q, K and V columns (zeroed here) receive the gradients for `dOut` [tokens, heads · hd]. One work item per
    /// (sequence, KV head): the query heads sharing a KV head add into its dK and dV, which no other item touches.
    /// `probabilities`: what `forward` kept, or nil to recompute them.
    static func backward(_ qkv: UnsafePointer<Float>, dOut: UnsafePointer<Float>, dqkv: UnsafeMutablePointer<Float>, sequences: [Range<Int>],
                         shape s: Shape, scratch: UnsafeMutablePointer<Float>, probabilities: UnsafePointer<Float>? = nil) {
        let group = s.heads / s.kvHeads, hd = s.headDim
        let input = SharedPointer(qkv), gradient = SharedPointer(dOut), output = SharedMutablePointer(dqkv)
        let kept = probabilities.map { SharedPointer($0) }, offsets = probabilities == nil ? [] : probabilityOffsets(sequences: sequences, s)
        forEachItem(sequences, groups: s.kvHeads, scratch: scratch) { index, sequence, g, scratch in
            let T = sequence.count
            let base = input.base + sequence.lowerBound * s.ld, dbase = output.base + sequence.lowerBound * s.ld
            let dO = gradient.base + sequence.lowerBound * s.ldo
            for t in 0..<T {
                (dbase + t * s.ld + s.qOffset + g * group * hd).update(repeating: 0, count: group * hd)
                (dbase + t * s.ld + s.kOffset + g * hd).update(repeating: 0, count: hd)
                (dbase + t * s.ld + s.vOffset + g * hd).update(repeating: 0, count: hd)
            }
            for h in (g * group)..<((g + 1) * group) {
                let q = base + s.qOffset + h * hd, k = base + s.kOffset + g * hd, v = base + s.vOffset + g * hd
                let dq = dbase + s.qOffset + h * hd, dk = dbase + s.kOffset + g * hd, dv = dbase + s.vOffset + g * hd
                var stored = kept.map { $0.base + offsets[index] + h * probabilitiesPerHead(length: T, s) }
                var r0 = 0
                while r0 < T {
                    let r1 = min(T, r0 + block), rows = r1 - r0, keys = keyRange(r0, r1, length: T, s), nk = keys.count
                    let dp = scratch + block * nk
                    let k0 = keys.lowerBound * s.ld
                    let p: UnsafePointer<Float>
                    if let kept = stored {
                        p = kept
                        stored = kept + rows * nk
                    } else {
                        Linalg.sgemm(transposeB: true, m: rows, n: nk, k: hd, alpha: s.scale, q + r0 * s.ld, lda: s.ld, k + k0, ldb: s.ld, scratch, ldc: nk)
                        softmaxRows(scratch, rows: r0..<r1, keys: keys, length: T, s)
                        p = UnsafePointer(scratch)
                    }
                    // dV += Pᵀ · dO ; dP = dO · Vᵀ
                    Linalg.sgemm(transposeA: true, m: nk, n: hd, k: rows, p, lda: nk, dO + r0 * s.ldo + h * hd, ldb: s.ldo, beta: 1, dv + k0, ldc: s.ld)
                    Linalg.sgemm(transposeB: true, m: rows, n: nk, k: hd, dO + r0 * s.ldo + h * hd, lda: s.ldo, v + k0, ldb: s.ld, dp, ldc: nk)
                    // dS = scale · P ⊙ (dP − Σ P ⊙ dP), in dp
                    for i in 0..<rows {
                        let pr = p + i * nk, dr = dp + i * nk
                        var dot: Float = 0
                        for j in 0..<nk { dot += pr[j] * dr[j] }
                        for j in 0..<nk { dr[j] = s.scale * pr[j] * (dr[j] - dot) }
                    }
                    // dQ = dS · K ; dK += dSᵀ · Q
                    Linalg.sgemm(m: rows, n: hd, k: nk, dp, lda: nk, k + k0, ldb: s.ld, dq + r0 * s.ld, ldc: s.ld)
                    Linalg.sgemm(transposeA: true, m: nk, n: hd, k: rows, dp, lda: nk, q + r0 * s.ld, ldb: s.ld, beta: 1, dk + k0, ldc: s.ld)
                    r0 = r1
                }
            }
        }
    }
}
