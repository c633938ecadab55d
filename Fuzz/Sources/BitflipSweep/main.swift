#if canImport(Glibc)
import Glibc
#endif
import FuzzSupport
import TesseraCore
import TesseraStore
import TesseraIO

/// The bit-flip sweep (scripts/bitflip-sweep.sh drives it): each input is one object file; every bit of its trailer
/// and every bit (or an even sample) of its payload is flipped in turn, the variant is written into a store under its
/// own SHA-256 (as a hostile remote would serve it, so the object id check passes) and decoded. One line per variant
/// on stdout, `v ID REGION OFFSET BIT CLASS`, where CLASS is
///   detected   the read threw a TesseraError (a clean error)
///   identical  the read succeeded with the original bytes (the flip hit a byte the decoder ignores)
///   undetected the read succeeded with different bytes (a silently wrong answer: must never happen)
///   unclean    the read threw something other than a TesseraError
///   inconsistent  one read path accepted the variant (with the original bytes) and the other refused it
/// A crash, a hang (alarm) or a runaway allocation ends the process: the variant being decoded is named in
/// $TESSERA_SWEEP_STATE/current, and the script records it and resumes after it ($TESSERA_SWEEP_RESUME=ID:INDEX).
///
/// It is built with the fuzz targets (one build, libFuzzer's runtime supplies `main`) and run on object files as
/// libFuzzer runs individual inputs: `BitflipSweep -timeout=0 FILE...`.
///
/// Environment: TESSERA_SWEEP_STATE (a scratch directory, required), TESSERA_SWEEP_SOURCE (a store root holding the
/// delta bases), TESSERA_SWEEP_PAYLOAD_BITS (payload bits tried per object, default 8192: all bits of the first and
/// last 64 bytes, an even sample in between), TESSERA_SWEEP_KEEP (a store root that also receives every variant of
/// objects up to 256 KiB, and of larger ones those of the trailer's length, encoding, width and chunk fields, for
/// `tessera fsck`), TESSERA_SWEEP_HANG_SECONDS (default 20).
struct SweepSettings {
    let state: String
    let source: String?
    let payloadBits: Int
    let keep: String?
    let hangSeconds: UInt32
    let resume: (id: String, index: Int)?

    static let current: SweepSettings = {
        func env(_ k: String) -> String? {
            guard let p = getenv(k) else { return nil }
            let s = String(cString: p)
            return s.isEmpty ? nil : s
        }
        guard let state = env("TESSERA_SWEEP_STATE") else { fatalError("set TESSERA_SWEEP_STATE to a scratch directory") }
        var resume: (String, Int)? = nil
        if let r = env("TESSERA_SWEEP_RESUME") {
            let parts = r.split(separator: ":")
            guard parts.count == 2, let i = Int(parts[1]) else { fatalError("TESSERA_SWEEP_RESUME is ID:INDEX") }
            resume = (String(parts[0]), i)
        }
        return SweepSettings(state: state, source: env("TESSERA_SWEEP_SOURCE"),
                             payloadBits: env("TESSERA_SWEEP_PAYLOAD_BITS").flatMap { Int($0) } ?? 8192,
                             keep: env("TESSERA_SWEEP_KEEP"),
                             hangSeconds: env("TESSERA_SWEEP_HANG_SECONDS").flatMap { UInt32($0) } ?? 20, resume: resume)
    }()
}

/// Trailer field at a trailer offset (docs/manifest-format.md), for the report.
func trailerField(_ offset: Int) -> String {
    switch offset {
    case 0..<32: return "raw-sha256"
    case 32..<64: return "base-id"
    case 64..<72: return "raw-length"
    case 72: return "encoding"
    case 73: return "width"
    case 74: return "chunk-log2"
    case 75: return "reserved75"
    case 76..<80: return "magic"
    default: return "reserved80"
    }
}

/// Positions (byte offset in the object, bit) to flip: every trailer bit; payload bits all, or the first and last
/// 64 bytes whole plus an even sample in between with an odd stride (so every bit position within a byte comes up).
func flipPositions(objectSize: Int, payloadBits budget: Int) -> [(offset: Int, bit: Int)] {
    let payload = objectSize - ObjectTrailer.size
    var bits: [Int] = []
    if payload * 8 <= budget {
        bits = Array(0..<(payload * 8))
    } else {
        let edge = 64 * 8
        bits += 0..<edge
        let middleBegin = edge, middleEnd = payload * 8 - edge
        let left = max(budget - 2 * edge, 1)
        var stride = max((middleEnd - middleBegin) / left, 1)
        if stride % 2 == 0 { stride += 1 }
        bits += Swift.stride(from: middleBegin, to: middleEnd, by: stride)
        bits += middleEnd..<(payload * 8)
    }
    var out = bits.map { (offset: $0 / 8, bit: $0 % 8) }
    for b in 0..<(ObjectTrailer.size * 8) { out.append((offset: payload + b / 8, bit: b % 8)) }
    return out
}

func writeObject(_ bytes: [UInt8], id: String, into store: ObjectStore) {
    let path = store.objectPath(id)
    do {
        try FileSystem.makeDirectories(String(path.dropLast(63)))
        let tmp = store.tmpDirectory + "/variant"
        let f = try FileDescriptor.open(tmp, flags: O_WRONLY | O_CREAT | O_TRUNC)
        try f.writeAll(bytes)
        try FileSystem.rename(tmp, path)
    } catch {
        fatalError("cannot write \(path): \(error)")
    }
}

func emit(_ line: String) {
    print(line)
    fflush(stdout)
}

nonisolated(unsafe) var stateFile: Int32 = -1

/// Records the variant about to be decoded, so that a crash can be attributed to it.
func markCurrent(_ line: String) {
    if stateFile < 0 {
        stateFile = open(SweepSettings.current.state + "/current", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    }
    let bytes = Array((line + "\n").utf8)
    _ = ftruncate(stateFile, 0)
    _ = bytes.withUnsafeBytes { pwrite(stateFile, $0.baseAddress, $0.count, 0) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func sweepObject(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let settings = SweepSettings.current
    let original = fuzzInput(data, size)
    let id = SHA256Hasher.hex(original)
    guard original.count >= ObjectTrailer.size,
          let trailer = try? ObjectTrailer.decode(Array(original.suffix(ObjectTrailer.size)), object: id,
                                                  payloadLength: original.count - ObjectTrailer.size) else {
        emit("skip \(id) not an object")
        return 0
    }
    let store: ObjectStore
    do { store = try ObjectStore(root: settings.state + "/store") } catch { fatalError("\(error)") }
    let keep = settings.keep.map { root -> ObjectStore in
        do { return try ObjectStore(root: root) } catch { fatalError("\(error)") }
    }
    for baseID in trailer.dependencyIDs {
        guard let source = settings.source, let base = try? FileSystem.readFile(source + "/objects/" + baseID.prefix(2) + "/" + baseID.dropFirst(2)) else {
            emit("skip \(id) its delta base \(baseID) is not in TESSERA_SWEEP_SOURCE")
            return 0
        }
        writeObject(base, id: baseID, into: store)
    }
    writeObject(original, id: id, into: store)
    let decoder = ObjectDecoder()
    let expected: [UInt8]
    do { expected = try store.readAll(id, decoder: decoder) } catch {
        emit("skip \(id) the original does not decode: \(error)")
        return 0
    }
    store.remove(id)
    let expectedRawSHA256 = SHA256Hasher.hex(expected)
    let payload = original.count - ObjectTrailer.size
    emit("object \(id) \((ObjectCodecs.codec(code: trailer.codec)?.manifestName(width: Int(trailer.width)) ?? "?")) payload=\(payload) raw=\(expected.count)")
    let keepAll = original.count <= 256 << 10

    for (index, position) in flipPositions(objectSize: original.count, payloadBits: settings.payloadBits).enumerated() {
        if let r = settings.resume, r.id == id, index <= r.index { continue }
        var variant = original
        variant[position.offset] ^= UInt8(1) << UInt8(position.bit)
        let variantID = SHA256Hasher.hex(variant)
        let inTrailer = position.offset >= payload
        let region = inTrailer ? "trailer" : "payload"
        let offset = inTrailer ? position.offset - payload : position.offset
        markCurrent("\(id) \(index) \(region) \(offset) \(position.bit) \(variantID)")
        writeObject(variant, id: variantID, into: store)
        // Kept before decoding, so that the fsck run also meets the variants that crash the decoder.
        if let keep, keepAll || (inTrailer && (64...74).contains(offset)) { writeObject(variant, id: variantID, into: keep) }
        alarm(settings.hangSeconds)
        // Two read paths: streaming with no expectations (fsck), and straight into a buffer of the length the
        // manifest promises, expecting the raw SHA-256 it names (smudge, merges, the engine). Each is nil (refused
        // cleanly), or the bytes it produced; "unclean" if it threw something other than a TesseraError.
        var unclean = false
        var streamed: [UInt8]? = []
        do { try store.read(variantID, decoder: decoder) { streamed! += $0 } } catch is TesseraError { streamed = nil } catch { streamed = nil; unclean = true }
        var filled: [UInt8]? = nil
        do {
            let buffer = try LargeBuffer(count: expected.count)
            try store.readAll(variantID, into: buffer.bytes, expectedRawSHA256: expectedRawSHA256, decoder: decoder)
            filled = Array(UnsafeRawBufferPointer(buffer.bytes))
        } catch is TesseraError {} catch { unclean = true }
        let outcome: String
        if (streamed.map { $0 != expected } ?? false) || (filled.map { $0 != expected } ?? false) {
            outcome = "undetected"
        } else if unclean {
            outcome = "unclean"
        } else if streamed == nil && filled == nil {
            outcome = "detected"
        } else if streamed != nil && filled != nil {
            outcome = "identical"
        } else {
            outcome = "inconsistent"  // one path accepts what the other refuses
        }
        alarm(0)
        if outcome == "undetected" {
            _ = try? FileSystem.writeAtomically(variant, to: "\(settings.state)/undetected-\(id.prefix(12))-\(region)\(offset).\(position.bit)",
                                                tmpDir: store.tmpDirectory)
        }
        if !trailer.dependencyIDs.contains(variantID) { store.remove(variantID) }
        emit("v \(id) \(region) \(offset) \(position.bit) \(outcome)" + (inTrailer ? " \(trailerField(offset))" : ""))
    }
    for baseID in trailer.dependencyIDs { store.remove(baseID) }
    return 0
}
