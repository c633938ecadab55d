import Foundation
import TesseraCore
import TesseraIO

/// How a value is stored: which codec, with which element width, against which dependency. The one place where
/// that is decided (for tensors by the cleaner, for other byte runs by whoever stores them).
public struct EncodingPolicy: Sendable {
    /// Tensors smaller than this are never deltas: the gain cannot pay for reading the base.
    public var minimumDeltaBytes = 4096
    /// Elements sampled to decide whether a delta pays.
    public var deltaSample = 65536

    /// The deepest delta chain a new delta may start: its base is at most `maximumDeltaDepth - 1` deltas deep, so
    /// no object written is more than this many deltas from a whole one. A checkout decodes every level of the
    /// chain, and a tensor whose previous version is at the limit is stored whole, which starts a new chain. 4, from
    /// bench/bench_git.py's 8 successive dense fine-tunes: growth per version 0.71x raw at depth 1, 0.61x at 4, 0.57x
    /// at 8, while decoding (checkout, and the base a `git add` reads) costs one whole decode per level. `TESSERA_MAX_DELTA_DEPTH`
    /// overrides it (0 stores every tensor whole; readers accept up to `ObjectStore.maximumChainDepth`).
    public var maximumDeltaDepth = EncodingPolicy.configuredMaximumDeltaDepth

    public static let defaultMaximumDeltaDepth = 4

    /// `TESSERA_MAX_DELTA_DEPTH` when set to a number in 0...15, else `defaultMaximumDeltaDepth`.
    public static var configuredMaximumDeltaDepth: Int {
        if let text = ProcessInfo.processInfo.environment["TESSERA_MAX_DELTA_DEPTH"], let n = Int(text),
           (0..<ObjectTrailer.maximumDependencies).contains(n) {
            return n
        }
        return defaultMaximumDeltaDepth
    }

    public init() {}

    /// What a store does with raw bytes: the codec and width, and the base when it is a delta.
    public struct Choice {
        public var codec: any ObjectCodec.Type
        public var width: Int
        /// The objects the value is encoded against (a delta's base), in the codec's order.
        public var dependencies: [Manifest.Stored]
        /// The tensor's shape, for codecs that need it (a low-rank update's matrix); empty when unknown.
        public var shape: [Int]
        public var base: Manifest.Stored? { dependencies.first }
        public init(codec: any ObjectCodec.Type, width: Int, dependencies: [Manifest.Stored] = [], shape: [Int] = []) {
            self.codec = codec
            self.width = width
            self.dependencies = dependencies
            self.shape = shape
        }
    }

    /// The element width byte grouping uses for a dtype: its byte width for floating point, else 1 (no grouping).
    public static func width(for dtype: DType?) -> Int {
        guard let dtype, dtype.isFloatingPoint else { return 1 }
        return dtype.byteWidth
    }

    /// The codec for raw bytes of a given element width, with no base.
    public func plain(width: Int) -> Choice {
        width > 1 ? Choice(codec: ByteGroupedZstdCodec.self, width: width) : Choice(codec: ZstdCodec.self, width: 1)
    }

    /// Bytes without float elements (quantised blocks, integers) are stored raw unless zstd saves at least this share
    /// of them on a sample: GGUF's Q4 blocks gain about 3%, for which zstd doubled the time of an add and of a checkout
    /// (decoding raw is a copy). SmolLM2's Q8_0 token embedding gains 6% (1.9 of 30 MB); decoding it was a third of
    /// the 36 ms by which a checkout of that GGUF trailed git-lfs's copy, so 10% is asked.
    public var rawUnlessZstdSaves = 0.10
    /// Values smaller than this are not sampled: zstd is kept (what it costs is noise there). SmolLM2's 120 Q4_1
    /// matrices of 576 × 576 (207 kB each, 17 MB in all, 3.5% saved by zstd) are above it.
    public static let rawCandidateMinimum = 64 << 10
    static let rawSampleSlices = 4
    static let rawSampleSlice = 64 << 10

    /// `plain(width:)`, or the raw codec for bytes of width 1 that zstd barely shrinks (judged on evenly spaced
    /// slices).
    public func plain(raw: UnsafeRawBufferPointer, width: Int) -> Choice {
        guard width == 1, raw.count >= EncodingPolicy.rawCandidateMinimum, let start = raw.baseAddress else { return plain(width: width) }
        let compressor = ZstdCompressor(level: 1)
        var sampled = 0, compressed = 0
        let slices = EncodingPolicy.rawSampleSlices, slice = min(EncodingPolicy.rawSampleSlice, raw.count / slices)
        let step = (raw.count - slice) / (slices - 1)
        for k in 0..<slices {
            let piece = UnsafeRawBufferPointer(start: start + k * step, count: slice)
            sampled += slice
            do { try compressor.compress(piece, end: true) { compressed += $0.count } } catch { return plain(width: width) }
        }
        return Double(compressed) > (1 - rawUnlessZstdSaves) * Double(sampled) ? Choice(codec: RawCodec.self, width: 1) : plain(width: width)
    }

    /// The previous version of a tensor that may serve as the base of an XOR delta: a floating-point tensor of at
    /// least `minimumDeltaBytes` with multi-byte elements, whose previous version (same name) is in the store and is
    /// less than `maximumDeltaDepth - 1` deltas deep. Its depth comes from its trailers alone (a few 88-byte reads);
    /// a previous version whose chain cannot be walked (damaged, incomplete) is no base.
    public func deltaCandidate(for tensor: SafetensorsTensor, previous: Manifest.Stored?, store: ObjectStore) -> Manifest.Stored? {
        guard tensor.dtype.isFloatingPoint, tensor.dtype.byteWidth > 1, tensor.byteCount >= minimumDeltaBytes,
              let previous, maximumDeltaDepth > 0, store.contains(previous.objectID),
              let chain = try? store.dependencyChain(of: previous.objectID), chain.depth < maximumDeltaDepth else { return nil }
        return previous
    }

    /// Whether XOR against the previous version makes the value more compressible: in a fine-tune, sign and
    /// exponent rarely change, so the top byte of each XORed element is mostly zero. Decided on a sample.
    public func deltaPays(_ new: UnsafeRawBufferPointer, _ old: UnsafeRawBufferPointer, width: Int) -> Bool {
        let elements = min(new.count / width, deltaSample)
        guard elements > 0, old.count == new.count else { return false }
        var zero = 0
        for i in 0..<elements {
            let k = i * width + width - 1
            if new[k] ^ old[k] == 0 { zero += 1 }
        }
        return zero * 2 > elements
    }

    /// The choice for a value with a delta base whose raw bytes are `baseRaw` (the base only if it pays): among plain
    /// byte-grouped zstd, the XOR delta, the arithmetic delta, a low-rank update and a sparse update, the one whose
    /// size estimated on a sample (and on the exact count of changed elements) is smallest. Nothing is encoded twice:
    /// a 500 MB add can afford one pass of comparison, not five encodings.
    public func choose(raw: UnsafeRawBufferPointer, width: Int, base: Manifest.Stored?, baseRaw: UnsafeRawBufferPointer?,
                       dtype: DType? = nil, shape: [Int] = []) -> Choice {
        guard let base, let baseRaw, width > 1, baseRaw.count == raw.count, raw.count % width == 0 else { return plain(raw: raw, width: width) }
        let estimate = estimates(raw: raw, baseRaw: baseRaw, width: width, dtype: dtype, shape: shape)
        var best = plain(width: width)
        var bestSize = estimate.plain
        func consider(_ codec: any ObjectCodec.Type, _ size: Double?) {
            if let size, size < bestSize { best = Choice(codec: codec, width: width, dependencies: [base], shape: shape); bestSize = size }
        }
        consider(XORDeltaCodec.self, estimate.xor)
        consider(ArithmeticDeltaCodec.self, estimate.arithmetic)
        // Sparse is preferred within 15%: it costs a comparison and a few bytes of zstd, not a pass of range coding.
        consider(SparseDeltaCodec.self, estimate.sparse.map { $0 * 0.87 })
        consider(LowRankCodec.self, estimate.lowRank)
        return best
    }

    /// Estimated payload bytes of each candidate (nil: not applicable).
    public struct Estimates: Sendable {
        public var plain: Double
        public var xor: Double?
        public var arithmetic: Double?
        public var sparse: Double?
        public var lowRank: Double?
        public var changed: Int
    }

    /// The estimates `choose` compares. Plain and XOR: the order-0 entropy of each byte plane on a sample (what
    /// byte grouping plus zstd gets close to); the arithmetic delta: the bits its coder spends per element on a
    /// sample (each difference's bit length, plus the entropy of those lengths); sparse: the exact changed count times
    /// a position and a value; low rank: only for a dense update of a 2-D float32 tensor whose sampled sub-block has
    /// a small numerical rank, the factors plus about 2 bits per element of residual.
    public func estimates(raw: UnsafeRawBufferPointer, baseRaw: UnsafeRawBufferPointer, width: Int, dtype: DType?, shape: [Int]) -> Estimates {
        let elements = raw.count / width
        let sampleCount = min(elements, deltaSample)
        let stride = max(1, elements / max(sampleCount, 1))
        var plainHistograms = [Int](repeating: 0, count: 256 * width)
        var xorHistograms = [Int](repeating: 0, count: 256 * width)
        var arithmeticBits = 0.0
        var classes = [Int](repeating: 0, count: 65)
        let arithmeticApplies = ArithmeticDeltaCodec.widths.contains(width)
        for s in 0..<sampleCount {
            let at = s * stride * width
            for w in 0..<width {
                let n = raw[at + w], b = baseRaw[at + w]
                plainHistograms[w * 256 + Int(n)] += 1
                xorHistograms[w * 256 + Int(n ^ b)] += 1
            }
            if arithmeticApplies {
                let d: Int64
                if width == 4 {
                    d = orderedInteger(raw.load(fromByteOffset: at, as: UInt32.self)) - orderedInteger(baseRaw.load(fromByteOffset: at, as: UInt32.self))
                } else {
                    d = orderedInteger(raw.load(fromByteOffset: at, as: UInt16.self)) - orderedInteger(baseRaw.load(fromByteOffset: at, as: UInt16.self))
                }
                let k = 64 - d.magnitude.leadingZeroBitCount
                // A difference of bit length k costs k bits (sign, then all but its leading one) plus its class.
                arithmeticBits += Double(k)
                classes[k] += 1
            }
        }
        // The classes cost about their entropy (the coder's contexts gain a little more).
        if sampleCount > 0 {
            for c in classes where c > 0 {
                let p = Double(c) / Double(sampleCount)
                arithmeticBits -= Double(c) * log2(p)
            }
            arithmeticBits += 0.02 * Double(sampleCount)
        }
        func entropyBytes(_ h: [Int]) -> Double {
            guard sampleCount > 0 else { return 0 }
            var bits = 0.0
            for w in 0..<width {
                for c in h[(w * 256)..<(w * 256 + 256)] where c > 0 {
                    let p = Double(c) / Double(sampleCount)
                    bits -= p * log2(p)
                }
            }
            return bits / 8 * Double(elements)
        }
        let scale = sampleCount > 0 ? Double(elements) / Double(sampleCount) : 0
        var result = Estimates(plain: entropyBytes(plainHistograms), xor: entropyBytes(xorHistograms) * 1.02,
                               arithmetic: arithmeticApplies ? arithmeticBits / 8 * scale : nil, sparse: nil, lowRank: nil, changed: 0)
        // Sparse: counted exactly, up to a quarter of the elements (beyond that it cannot win).
        let changed = SparseDeltaCodec.changedCount(raw, baseRaw, width: width, limit: elements / 4)
        result.changed = changed
        if changed <= elements / 4 {
            let gapBits = changed > 0 ? max(1, log2(Double(elements) / Double(changed)) + 1.5) : 0
            result.sparse = Double(changed) * (gapBits / 8 + Double(width) * 0.85) + 64
        }
        // Low rank: dense updates of float32 matrices only, probed on a sampled sub-block.
        if dtype == .f32, width == 4, shape.count == 2, shape[0] >= 64, shape[1] >= 64, shape[0] * shape[1] == elements,
           changed > elements / 4, let np = raw.baseAddress, let bp = baseRaw.baseAddress {
            let probe = LowRankFactors.sampledRank(new: np.assumingMemoryBound(to: Float.self), base: bp.assumingMemoryBound(to: Float.self),
                                                   rows: shape[0], columns: shape[1])
            if probe.rank > 0, probe.rank <= LowRankCodec.maximumRank, probe.rank * 2 < probe.full {
                result.lowRank = Double(probe.rank * (shape[0] + shape[1]) * 4) + Double(elements) * 2 / 8
            }
        }
        return result
    }
}
