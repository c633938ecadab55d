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
        public var base: Manifest.Stored? { dependencies.first }
        public init(codec: any ObjectCodec.Type, width: Int, dependencies: [Manifest.Stored] = []) {
            self.codec = codec
            self.width = width
            self.dependencies = dependencies
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

    /// The choice for a value with a delta base whose raw bytes are `baseRaw` (the base only if it pays).
    public func choose(raw: UnsafeRawBufferPointer, width: Int, base: Manifest.Stored?, baseRaw: UnsafeRawBufferPointer?) -> Choice {
        if let base, let baseRaw, width > 1, baseRaw.count == raw.count, deltaPays(raw, baseRaw, width: width) {
            return Choice(codec: XORDeltaCodec.self, width: width, dependencies: [base])
        }
        return plain(width: width)
    }
}
