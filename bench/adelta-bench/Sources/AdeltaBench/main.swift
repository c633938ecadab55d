// Usage: AdeltaBench BASE.safetensors NEW.safetensors [--repeat N] [--min-elements N] [--store DIR] [--phase encode|decode]
//                    [--only TENSOR]
//
// For every float32 tensor of BASE that NEW changes (and that has at least --min-elements elements, default 65536):
// encodes NEW against BASE with the arithmetic delta codec (encode: the codec alone, its output kept in memory), then
// stores the base (raw) and the delta in a scratch store and reads the delta back as a checkout does (decode: a
// verified read into a buffer of the raw length: payload read, delta decoded against the base, raw SHA-256 checked;
// the base's own read is timed apart and reported as `base read`). Times are process CPU seconds (both coding
// threads), the best of --repeat runs (default 3) per tensor, summed over tensors. Prints the payload version written,
// bytes per element, and the totals. `--phase encode` runs only the encodes, `--phase decode` one untimed encode per
// tensor, then only the delta reads (under `perf stat` on a machine with counters, the difference between --repeat 1
// and --repeat N is N − 1 of that phase alone). On a shared machine, run the binaries to compare alternately, several
// times, and compare their best times.
//
//   swift build -c release --package-path bench/adelta-bench --scratch-path bench/adelta-bench/.build
//   bench/adelta-bench/.build/release/AdeltaBench /tmp/dense-bench/base.safetensors /tmp/dense-bench/gpt2-dense.safetensors
//
// (bench/bench_git.py --storage-only writes those two checkpoints.)
import Foundation
import TesseraCore
import TesseraIO
import TesseraStore

func cpuSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

func mapFile(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) }

/// (name, dtype, begin, end) of each tensor, offsets into the file.
func tensors(_ file: Data) throws -> [(String, String, Int, Int)] {
    let n = file.withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self)) }
    guard n > 0, n < file.count - 8, let header = try JSONSerialization.jsonObject(with: file.subdata(in: 8..<(8 + n))) as? [String: Any] else {
        throw TesseraError(.usage, "not a safetensors file", hint: "give two safetensors checkpoints")
    }
    return header.compactMap { name, value in
        guard let v = value as? [String: Any], let dtype = v["dtype"] as? String, let o = v["data_offsets"] as? [Int] else { return nil }
        return (name, dtype, 8 + n + o[0], 8 + n + o[1])
    }.sorted { $0.0 < $1.0 }
}

func run() throws {
    var args = Array(CommandLine.arguments.dropFirst())
    func option(_ name: String, _ fallback: String) -> String {
        guard let i = args.firstIndex(of: name), i + 1 < args.count else { return fallback }
        let v = args[i + 1]
        args.removeSubrange(i...(i + 1))
        return v
    }
    let repeats = max(1, Int(option("--repeat", "3")) ?? 3)
    let minimumElements = Int(option("--min-elements", "65536")) ?? 65536
    let storeDirectory = option("--store", NSTemporaryDirectory() + "adelta-bench-\(getpid())")
    let phase = option("--phase", "both")
    let only = option("--only", "")
    guard args.count == 2 else { FileHandle.standardError.write(Data("usage: AdeltaBench BASE NEW [--repeat N] [--min-elements N] [--store DIR] [--phase encode|decode] [--only TENSOR]\n".utf8)); exit(2) }
    let baseFile = try mapFile(args[0]), newFile = try mapFile(args[1])
    let newTensors = Dictionary(uniqueKeysWithValues: try tensors(newFile).map { ($0.0, $0) })

    var encodeCPU = 0.0, decodeCPU = 0.0, baseReadCPU = 0.0, payloadBytes = 0, elements = 0, version: UInt8 = 0
    let codec = ArithmeticDeltaCodec()
    let encoder = ObjectEncoder(), decoder = ObjectDecoder()
    try baseFile.withUnsafeBytes { baseBytes in
        try newFile.withUnsafeBytes { newBytes in
            for (name, dtype, begin, end) in try tensors(baseFile) where dtype == "F32" && (end - begin) / 4 >= minimumElements && (only.isEmpty || name == only) {
                guard let other = newTensors[name], other.3 - other.2 == end - begin else { continue }
                let base = UnsafeRawBufferPointer(rebasing: baseBytes[begin..<end]), new = UnsafeRawBufferPointer(rebasing: newBytes[other.2..<other.3])
                if base.elementsEqual(new) { continue }
                // Encode: the codec alone.
                var payload = [UInt8]()
                payload.reserveCapacity(new.count)
                var best = Double.infinity
                for _ in 0..<(phase == "decode" ? 1 : repeats) {
                    payload.removeAll(keepingCapacity: true)
                    let t = cpuSeconds()
                    try codec.encode(raw: new, width: 4, chunkLog2: 20, dependencies: [base]) { payload += $0 }
                    best = min(best, cpuSeconds() - t)
                }
                encodeCPU += best
                payloadBytes += payload.count
                elements += new.count / 4
                version = payload[0]
                if phase == "encode" { continue }
                // Decode: a verified read of the stored object, as a checkout does it.
                try? FileManager.default.removeItem(atPath: storeDirectory)
                let store = try ObjectStore(root: storeDirectory)
                let baseStored = try store.put(raw: base, rawSHA256: SHA256Hasher.hex(base), choice: .init(codec: RawCodec.self, width: 1), encoder: encoder)
                let newSHA = SHA256Hasher.hex(new)
                let delta = try store.put(raw: new, rawSHA256: newSHA, choice: .init(codec: ArithmeticDeltaCodec.self, width: 4, dependencies: [baseStored]),
                                          dependencyRaw: [base], encoder: encoder)
                let out = UnsafeMutableRawBufferPointer.allocate(byteCount: new.count, alignment: 64)
                defer { out.deallocate() }
                var bestDecode = Double.infinity, bestBase = Double.infinity
                for _ in 0..<repeats {
                    var t = cpuSeconds()
                    try store.readAll(delta.objectID, into: out, expectedRawSHA256: newSHA, decoder: decoder)
                    bestDecode = min(bestDecode, cpuSeconds() - t)
                    if phase == "decode" { continue }
                    t = cpuSeconds()
                    try store.readAll(baseStored.objectID, into: out, expectedRawSHA256: baseStored.rawSHA256, decoder: decoder)
                    bestBase = min(bestBase, cpuSeconds() - t)
                }
                try store.readAll(delta.objectID, into: out, expectedRawSHA256: newSHA, decoder: decoder)
                guard UnsafeRawBufferPointer(out).elementsEqual(new) else {
                    FileHandle.standardError.write(Data("\(name): the decoded bytes differ\n".utf8))
                    exit(1)
                }
                decodeCPU += bestDecode
                if bestBase.isFinite { baseReadCPU += bestBase }
            }
        }
    }
    try? FileManager.default.removeItem(atPath: storeDirectory)
    print(String(format: "payload version %d: %d elements, %.5f bytes/element (%.5f x raw), encode %.3f s CPU, decode %.3f s CPU (of which base read %.3f s)",
                 Int(version), elements, Double(payloadBytes) / Double(elements), Double(payloadBytes) / Double(4 * elements), encodeCPU, decodeCPU, baseReadCPU))
}

do { try run() } catch {
    FileHandle.standardError.write(Data("\(error)\n".utf8))
    exit(1)
}
