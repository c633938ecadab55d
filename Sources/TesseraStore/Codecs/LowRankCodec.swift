import Foundation
import TesseraCore
import TesseraIO

/// Low-rank update against a base object (code 5, manifest name `lowrank4@BASE:SIZE`): a float32 matrix stored as
/// base + U·V (U rows×r, V r×columns, float32, r found automatically, at most `maximumRank`) plus the exact residual:
/// the value's bits against the bits of the prediction fl(base + U·V), coded like an arithmetic delta
/// (`OrderedDeltaCoder`; it is mostly 0 and ±1 ulp). A LoRA merged into its base, or any update of small rank,
/// costs its factors and its rounding instead of a dense delta.
///
/// The prediction is a fixed-order float32 loop (`predictRows`), the same in encoding and decoding: for each element,
/// acc = U[i,0]·V[0,j], then acc = acc + U[i,t]·V[t,j] for t = 1..<r (separate multiply and add: no fused
/// multiply-add), then base + acc. It depends on no library and no machine feature, so every machine decodes the
/// same bits.
///
/// Payload: `u8 version (3; 2 and 1 still read) | u32 rows | u32 columns | u8 rank | u32 rows per chunk | U (rows×rank f32
/// LE, row-major) | V (rank×columns f32 LE) | residual chunks` (versions 3 and 2: `StaticDeltaChunks` with that version's
/// symbols, version 1: `OrderedDeltaChunks`; each chunk being whole rows). The versions are the arithmetic delta's.
public final class LowRankCodec: ObjectCodec {
    public static let code: UInt8 = 5
    public static let dependencies: ClosedRange<Int> = 1...1
    public static let maximumRank = 32
    /// Rows per residual chunk: about 1 Mi elements.
    static let chunkElementTarget = 1 << 20
    static let maximumChunkElements = 1 << 22

    public static func manifestName(width: Int) -> String { "lowrank4" }
    public static func width(fromManifestName name: String) -> Int? { name == "lowrank4" ? 4 : nil }

    public static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws {
        guard trailer.width == 4 else {
            throw ObjectTrailer.corrupt(trailer.objectID, "its element width \(trailer.width) does not fit its encoding")
        }
        guard trailer.rawLength % 4 == 0 else {
            throw ObjectTrailer.corrupt(trailer.objectID, "its length is not a whole number of elements")
        }
    }

    private let chunks = OrderedDeltaChunks()
    private let staticChunks = StaticDeltaChunks()
    /// What this instance writes: version 1 only for tests that check old objects stay readable.
    package var payloadVersion = ArithmeticDeltaCodec.writtenVersion

    public init() {}

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try encode(raw: raw, width: width, chunkLog2: chunkLog2, shape: [1, raw.count / 4], dependencies: dependencies, sink: sink)
    }

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, shape: [Int], dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        precondition(dependencies.count == 1 && dependencies[0].count == raw.count && width == 4 && raw.count % 4 == 0,
                     "a low-rank update is float32 with one base of the same length")
        // A matrix is its last dimension's columns by the rest's rows; anything else is one row.
        var columns = shape.last ?? 1
        if columns <= 0 || raw.count / 4 % columns != 0 { columns = max(1, raw.count / 4) }
        let rows = raw.count / 4 / columns
        let newValues = raw.baseAddress?.assumingMemoryBound(to: Float.self)
        let baseValues = dependencies[0].baseAddress?.assumingMemoryBound(to: Float.self)
        var factors = LowRankFactors(rows: rows, columns: columns, rank: 0, u: [], v: [])
        if let newValues, let baseValues {
            factors = LowRankFactors.find(new: newValues, base: baseValues, rows: rows, columns: columns, maximumRank: LowRankCodec.maximumRank)
        }
        let rowsPerChunk = max(1, min(rows, LowRankCodec.chunkElementTarget / max(columns, 1)))
        var header = [UInt8](repeating: 0, count: 14)
        header[0] = payloadVersion
        storeU32(UInt32(rows), into: &header, at: 1)
        storeU32(UInt32(columns), into: &header, at: 5)
        header[9] = UInt8(factors.rank)
        storeU32(UInt32(rowsPerChunk), into: &header, at: 10)
        try header.withUnsafeBytes { try sink($0) }
        try factors.u.withUnsafeBytes { try sink($0) }
        try factors.v.withUnsafeBytes { try sink($0) }
        guard rows > 0 && columns > 0, let base = dependencies[0].baseAddress else { return }
        try factors.u.withUnsafeBufferPointer { u in
            try factors.v.withUnsafeBufferPointer { v in
                let uBase = u.baseAddress, vBase = v.baseAddress
                let rank = factors.rank
                let predict: (Int, Int, UnsafeMutableRawPointer) -> UnsafeRawPointer = { start, count, scratch in
                    LowRankCodec.predictRows(base: base.assumingMemoryBound(to: Float.self), u: uBase, v: vBase, rank: rank,
                                             columns: columns, firstRow: start / columns, rowCount: count / columns,
                                             into: scratch.assumingMemoryBound(to: Float.self))
                    return UnsafeRawPointer(scratch)
                }
                if payloadVersion == 1 {
                    try chunks.encode(new: raw.baseAddress!, total: rows * columns, chunkElements: rowsPerChunk * columns, width: 4, base: predict, sink: sink)
                } else {
                    try staticChunks.encode(new: raw.baseAddress!, total: rows * columns, chunkElements: rowsPerChunk * columns, width: 4,
                                            version: payloadVersion, base: predict, sink: sink)
                }
            }
        }
    }

    /// fl(base + U·V) for rows [firstRow, firstRow + rowCount), in the fixed order the format defines.
    static func predictRows(base: UnsafePointer<Float>, u: UnsafePointer<Float>?, v: UnsafePointer<Float>?, rank: Int, columns: Int,
                            firstRow: Int, rowCount: Int, into out: UnsafeMutablePointer<Float>) {
        for r in 0..<rowCount {
            let i = firstRow + r
            let row = out + r * columns
            let baseRow = base + i * columns
            guard rank > 0, let u, let v else {
                row.update(from: baseRow, count: columns)
                continue
            }
            let u0 = u[i * rank]
            for j in 0..<columns { row[j] = u0 * v[j] }
            var t = 1
            while t < rank {
                let ut = u[i * rank + t]
                let vt = v + t * columns
                for j in 0..<columns {
                    let product = ut * vt[j]
                    row[j] = row[j] + product
                }
                t += 1
            }
            for j in 0..<columns { row[j] = baseRow[j] + row[j] }
        }
    }

    public func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard dependencies.count == 1, dependencies[0].count == trailer.rawCount else {
            throw payload.corrupt("its delta base has a different length")
        }
        let cursor = PayloadCursor(payload)
        let header = try cursor.readBytes(14)
        func u32(_ i: Int) -> Int { Int(UInt32(header[i]) | UInt32(header[i + 1]) << 8 | UInt32(header[i + 2]) << 16 | UInt32(header[i + 3]) << 24) }
        let version = header[0]
        guard ArithmeticDeltaCodec.readVersions.contains(version) else { throw payload.corrupt("its low-rank format version \(header[0]) is unknown") }
        let rows = u32(1), columns = u32(5), rank = Int(header[9]), rowsPerChunk = u32(10)
        let (elements, overflow) = rows.multipliedReportingOverflow(by: columns)
        guard !overflow, elements == trailer.rawCount / 4 else {
            throw payload.corrupt("its matrix shape \(rows)×\(columns) does not match its length")
        }
        guard rank <= LowRankCodec.maximumRank, rank == 0 || rank <= min(rows, columns) else {
            throw payload.corrupt("its rank \(rank) is out of range")
        }
        guard elements == 0 || (rowsPerChunk >= 1 && rowsPerChunk <= rows && rowsPerChunk * columns <= LowRankCodec.maximumChunkElements) else {
            throw payload.corrupt("its chunk of \(rowsPerChunk) rows is out of range")
        }
        // rank ≤ 32 and rows, columns ≤ 2^32: no overflow. The factors must be in the payload before they are allocated.
        let uCount = rows * rank, vCount = rank * columns
        guard (uCount + vCount) * 4 <= payload.remaining + payload.blockLength else {
            throw payload.corrupt("its factors are longer than its payload")
        }
        var u = [Float](repeating: 0, count: uCount), v = [Float](repeating: 0, count: vCount)
        try u.withUnsafeMutableBytes { try cursor.read(into: $0) }
        try v.withUnsafeMutableBytes { try cursor.read(into: $0) }
        if elements > 0 {
            let base = UnsafeRawPointer(dependencies[0].bytes.baseAddress!)
            try u.withUnsafeBufferPointer { ub in
                try v.withUnsafeBufferPointer { vb in
                    let uBase = ub.baseAddress, vBase = vb.baseAddress
                    let predict: (Int, Int, UnsafeMutableRawPointer) -> UnsafeRawPointer = { start, count, scratch in
                        LowRankCodec.predictRows(base: base.assumingMemoryBound(to: Float.self), u: uBase, v: vBase, rank: rank,
                                                 columns: columns, firstRow: start / columns, rowCount: count / columns,
                                                 into: scratch.assumingMemoryBound(to: Float.self))
                        return UnsafeRawPointer(scratch)
                    }
                    if version >= 2 {
                        try staticChunks.decode(cursor, total: elements, chunkElements: rowsPerChunk * columns, width: 4,
                                                version: version, base: predict,
                                                into: payload.destination?.baseAddress, sink: sink)
                    } else {
                        try chunks.decode(cursor, total: elements, chunkElements: rowsPerChunk * columns, width: 4, base: predict, sink: sink)
                    }
                }
            }
        }
        try cursor.expectEnd()
    }
}

/// Factors of a matrix update new − base of small numerical rank, found by a randomized range finder with a fixed
/// seed (deterministic: the same inputs give the same factors, so the same value gets the same object).
struct LowRankFactors {
    var rows: Int
    var columns: Int
    var rank: Int
    /// rows × rank, row-major: the update projected on the basis `v`.
    var u: [Float]
    /// rank × columns, row-major: an orthonormal basis of the update's row space.
    var v: [Float]

    /// A deterministic stream of numbers in [-1, 1) (SplitMix64).
    struct Sequence {
        var state: UInt64
        mutating func next() -> Double {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Double(z >> 11) / Double(1 << 52) - 1
        }
    }

    /// Columns kept by Gram-Schmidt (twice, for orthogonality in floating point) on the `k` columns of the row-major
    /// rows×k matrix `y`: a column whose remaining norm is at most `tolerance` × the largest original norm is in the
    /// span of the previous ones. Returns the orthonormal columns kept, row-major rows × kept.
    static func orthonormalColumns(_ y: [Double], rows: Int, k: Int, tolerance: Double) -> (q: [Double], kept: Int) {
        var columns: [[Double]] = (0..<k).map { c in (0..<rows).map { y[$0 * k + c] } }
        let largest = columns.map { sqrt($0.reduce(0) { $0 + $1 * $1 }) }.max() ?? 0
        guard largest > 0 && largest.isFinite else { return ([], 0) }
        var kept: [[Double]] = []
        for var c in columns {
            for _ in 0..<2 {
                for q in kept {
                    var dot = 0.0
                    for i in 0..<rows { dot += q[i] * c[i] }
                    for i in 0..<rows { c[i] -= dot * q[i] }
                }
            }
            let norm = sqrt(c.reduce(0) { $0 + $1 * $1 })
            if norm > tolerance * largest {
                for i in 0..<rows { c[i] /= norm }
                kept.append(c)
            }
        }
        columns = []
        var q = [Double](repeating: 0, count: rows * kept.count)
        for (c, column) in kept.enumerated() { for i in 0..<rows { q[i * kept.count + c] = column[i] } }
        return (q, kept.count)
    }

    /// Relative tolerance below which a direction of the update is rounding noise.
    static let tolerance = 1e-3

    static func find(new: UnsafePointer<Float>, base: UnsafePointer<Float>, rows: Int, columns: Int, maximumRank: Int) -> LowRankFactors {
        let none = LowRankFactors(rows: rows, columns: columns, rank: 0, u: [], v: [])
        guard rows >= 2, columns >= 2 else { return none }
        // Two attempts: a small sketch (rank ≤ 8 is the common LoRA), then one up to the maximum rank.
        for sketch in [12, maximumRank + 8] {
            let k = min(sketch, min(rows, columns))
            var random = Sequence(state: 0x7E55_E7A0_10A7_0001)
            var omega = [Double](repeating: 0, count: columns * k)
            for i in 0..<omega.count { omega[i] = random.next() }
            // y = (new − base) · omega, row by row; the update is formed in float32 as the prediction will use it.
            var y = [Double](repeating: 0, count: rows * k)
            var delta = [Double](repeating: 0, count: columns)
            var finite = true
            for i in 0..<rows {
                for j in 0..<columns {
                    let d = Double(new[i * columns + j] - base[i * columns + j])
                    if !d.isFinite { finite = false }
                    delta[j] = d
                }
                if !finite { return none }
                for j in 0..<columns {
                    let d = delta[j]
                    if d == 0 { continue }
                    for c in 0..<k { y[i * k + c] += d * omega[j * k + c] }
                }
            }
            let (q, kept) = orthonormalColumns(y, rows: rows, k: k, tolerance: tolerance)
            if kept == 0 { return none }
            if kept >= k { continue }
            guard kept <= maximumRank, kept * (rows + columns) < rows * columns else { return none }
            // v = qᵀ · (new − base), accumulated row by row.
            var v = [Double](repeating: 0, count: kept * columns)
            for i in 0..<rows {
                for t in 0..<kept {
                    let qi = q[i * kept + t]
                    if qi == 0 { continue }
                    for j in 0..<columns { v[t * columns + j] += qi * Double(new[i * columns + j] - base[i * columns + j]) }
                }
            }
            // One refinement on the row space: the column basis from the sketch carries the update's rounding noise
            // (about 1e-6 of it, which left half the residual at ±1 ulp); an orthonormal basis w of v's rows and
            // u = (new − base)·w project that noise away (88% of the residual 0 instead of 52%, measured).
            var vt = [Double](repeating: 0, count: columns * kept)
            for t in 0..<kept { for j in 0..<columns { vt[j * kept + t] = v[t * columns + j] } }
            let (w, rank) = orthonormalColumns(vt, rows: columns, k: kept, tolerance: 1e-9)
            guard rank > 0 else { return none }
            var u = [Double](repeating: 0, count: rows * rank)
            for i in 0..<rows {
                for j in 0..<columns {
                    let d = Double(new[i * columns + j] - base[i * columns + j])
                    if d == 0 { continue }
                    for t in 0..<rank { u[i * rank + t] += d * w[j * rank + t] }
                }
            }
            var factorV = [Float](repeating: 0, count: rank * columns)
            for t in 0..<rank { for j in 0..<columns { factorV[t * columns + j] = Float(w[j * rank + t]) } }
            return LowRankFactors(rows: rows, columns: columns, rank: rank, u: u.map { Float($0) }, v: factorV)
        }
        return none
    }

    /// The cheap test the encoding policy runs before choosing this codec: the numerical rank of the update on a
    /// sample of at most 96 rows × 96 columns (a sub-block of a rank-r matrix has rank ≤ r; a dense update's is full).
    static func sampledRank(new: UnsafePointer<Float>, base: UnsafePointer<Float>, rows: Int, columns: Int) -> (rank: Int, full: Int) {
        let sr = min(rows, 96), sc = min(columns, 96)
        var block = [Double](repeating: 0, count: sr * sc)
        for a in 0..<sr {
            let i = a * rows / sr
            for b in 0..<sc {
                let j = b * columns / sc
                let d = Double(new[i * columns + j] - base[i * columns + j])
                if !d.isFinite { return (min(sr, sc), min(sr, sc)) }
                block[a * sc + b] = d
            }
        }
        return (orthonormalColumns(block, rows: sr, k: sc, tolerance: tolerance).kept, min(sr, sc))
    }
}
