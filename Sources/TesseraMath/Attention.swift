import CKernels

/// Where the new tokens of a forward pass sit. Tokens are stored in the cache at slots start..<start+tokens. Token t
/// belongs to a segment beginning at token `segmentStarts[t]`; it sits at position contextEnd + (t − segmentStart)
/// (for RoPE / position embeddings) and sees the context slots 0..<contextEnd plus its own segment's slots up to
/// itself. A plain causal pass is one segment starting at token 0 with contextEnd = start.
public struct TokenLayout: Sendable {
    public let tokens: Int
    public let start: Int
    public let contextEnd: Int
    public let segmentStarts: [Int]
    public let positions: [Int]

    /// One sequence continuing the cached one.
    public init(causal tokens: Int, start: Int) {
        self.tokens = tokens
        self.start = start
        contextEnd = start
        segmentStarts = Array(repeating: 0, count: tokens)
        positions = (0..<tokens).map { start + $0 }
    }

    /// Several independent continuations of the cached context (slots 0..<start), concatenated.
    public init(segments lengths: [Int], start: Int) {
        var starts: [Int] = [], positions: [Int] = []
        var offset = 0
        for m in lengths {
            for j in 0..<m { starts.append(offset); positions.append(start + j) }
            offset += m
        }
        tokens = offset
        self.start = start
        contextEnd = start
        segmentStarts = starts
        self.positions = positions
    }

    /// The cache slots token t may attend to: a context range and a range of its own segment (inclusive of itself).
    @inline(__always)
    public func visibleKeys(_ t: Int, window: Int?) -> (context: Range<Int>, own: Range<Int>) {
        let offset = t - segmentStarts[t]
        let position = contextEnd + offset
        let ownStart = start + segmentStarts[t]
        guard let w = window else { return (0..<contextEnd, ownStart..<(start + t + 1)) }
        let earliest = position - w + 1  // earliest visible position
        let contextLow = min(contextEnd, max(0, earliest))
        return (contextLow..<contextEnd, (ownStart + max(0, offset - w + 1))..<(start + t + 1))
    }
}

/// Causal grouped-query attention over a KV cache laid out [kvHeads, capacity, headDim] per layer.
public enum Attention {
    /// Multi-head attention of `layout.tokens` new queries over the cached keys and values of one layer (the new
    /// tokens' own keys already stored at slots start..<start+tokens). Query head h reads KV head h / (heads / kvHeads)
    /// (grouped-query attention). Each query sees the keys `layout.visibleKeys` gives: causal over one sequence, or
    /// context + own segment when several continuations are scored in one pass; `window`, if set, keeps only the
    /// `window` most recent positions (GPT-Neo local layers).
    ///
    /// Several tokens: tiles of query rows sharing a KV head through `tessera_attend_tile` (CKernels), split over
    /// cores. One token: `tessera_attend_decode` per run of query heads sharing a KV head (each key and value loaded
    /// once per run), the heads split over `threads` cores. `scratch` needs `scratchCount` floats.
    public static func attend(
        q: UnsafePointer<Float>, ldq: Int, layout: TokenLayout,
        keys: UnsafePointer<Float>, values: UnsafePointer<Float>, cacheCapacity: Int,
        heads: Int, kvHeads: Int, headDim: Int, scale: Float, window: Int?, threads: Int,
        scratch: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, ldo: Int
    ) {
        let group = heads / kvHeads
        let tokens = layout.tokens
        if tokens == 1 && layout.start == layout.contextEnd {
            // One token continuing its sequence (decoding): keys first...start are contiguous.
            let start = layout.start
            let first = layout.visibleKeys(0, window: window).context.lowerBound
            let n = start + 1 - first
            // Query heads in `parts` contiguous runs; a run that crosses KV heads is cut at each KV head.
            let parts = heads > 1 && n * heads >= 2048 ? min(max(1, threads), heads) : 1
            let run = { (part: Int) in
                var h = part * heads / parts
                let end = (part + 1) * heads / parts
                while h < end {
                    let kvh = h / group
                    let last = min(end, (kvh + 1) * group)
                    tessera_attend_decode(last - h, q + h * headDim,
                                          keys + (kvh * cacheCapacity + first) * headDim,
                                          values + (kvh * cacheCapacity + first) * headDim,
                                          n, headDim, scale, scratch + h * n, out + h * headDim)
                    h = last
                }
            }
            if parts == 1 { run(0) } else { Parallel.forEach(parts, run) }
            return
        }
        // Several tokens: per KV head, its keys are transposed once; then tiles of up to 12 query rows (the heads of
        // the GQA group for a few consecutive tokens) go through `tessera_attend_tile`, which loads each key and value
        // once per tile. Tiles are split over cores. No BLAS: hundreds of small sgemm calls per layer cost more than
        // their arithmetic, and would wake OpenBLAS's threads.
        let span = layout.start + tokens
        let ldkt = span + 8
        let keysT = scratch  // [kvHeads][headDim][ldkt]
        let tileScores = scratch + kvHeads * headDim * ldkt
        let maxRows = 12
        let headsPerTile = min(group, maxRows)
        let tokensPerTile = max(1, maxRows / headsPerTile)
        let tokenTiles = (tokens + tokensPerTile - 1) / tokensPerTile
        let headTiles = (group + headsPerTile - 1) / headsPerTile
        let tilesPerKVHead = tokenTiles * headTiles
        let tiles = kvHeads * tilesPerKVHead
        let chunks = min(tileChunks, tiles)
        // Every KV head's keys transposed (heads in parallel), then all tiles of all heads in one parallel pass: two
        // synchronisations per layer rather than two per KV head.
        Parallel.forEach(kvHeads) { kvh in
            let kh = keys + kvh * cacheCapacity * headDim
            let khT = keysT + kvh * headDim * ldkt
            for d in 0..<headDim {
                let row = khT + d * ldkt
                for j in 0..<span { row[j] = kh[j * headDim + d] }
                for j in span..<ldkt { row[j] = 0 }
            }
        }
        Parallel.forEach(chunks) { c in
            let chunkScores = tileScores + c * 2 * maxRows * (span + 8)
            withUnsafeTemporaryAllocation(of: UnsafePointer<Float>?.self, capacity: maxRows) { qs in
              withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<Float>?.self, capacity: maxRows) { outs in
                withUnsafeTemporaryAllocation(of: Int.self, capacity: 4 * maxRows) { ranges in
                    guard let qsBase = qs.baseAddress, let outsBase = outs.baseAddress, let rangesBase = ranges.baseAddress else { return }
                    var index = c
                    while index < tiles {
                        let kvh = index / tilesPerKVHead, tile = index % tilesPerKVHead
                        let t0 = (tile / headTiles) * tokensPerTile, g0 = (tile % headTiles) * headsPerTile
                        var rows = 0
                        for t in t0..<min(tokens, t0 + tokensPerTile) {
                            let v = layout.visibleKeys(t, window: window)
                            for g in g0..<min(group, g0 + headsPerTile) {
                                let h = kvh * group + g
                                qsBase[rows] = q + t * ldq + h * headDim
                                outsBase[rows] = out + t * ldo + h * headDim
                                rangesBase[4 * rows] = v.context.lowerBound; rangesBase[4 * rows + 1] = v.context.upperBound
                                rangesBase[4 * rows + 2] = v.own.lowerBound; rangesBase[4 * rows + 3] = v.own.upperBound
                                rows += 1
                            }
                        }
                        tessera_attend_tile(rows, qsBase, outsBase, rangesBase,
                                            keysT + kvh * headDim * ldkt, ldkt, values + kvh * cacheCapacity * headDim,
                                            headDim, scale, chunkScores)
                        index += chunks
                    }
                }
              }
            }
        }
    }

    /// Parallel chunks of attention tiles (a few per core, so uneven causal tiles even out).
    static let tileChunks = 4

    /// Floats of scratch `attend` needs: transposed keys and per-chunk tile scores (several tokens), or a row of
    /// scores per head (one token).
    public static func scratchCount(tokens: Int, start: Int, heads: Int, kvHeads: Int, headDim: Int) -> Int {
        let span = start + tokens + 8
        return max(heads * span, kvHeads * headDim * span + tileChunks * 2 * 12 * span)
    }
}
