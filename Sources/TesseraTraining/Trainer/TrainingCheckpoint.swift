import Foundation
import TesseraCore
import TesseraIO

/// A run's checkpoint: `state.safetensors` in the output folder's `.checkpoint/`, replaced atomically (written
/// beside, then renamed), holding each module's factors and AdamW moments (float32, bit for bit), the best
/// evaluated factors, and in its metadata the step, every step's loss, the tokens read, the evaluations and the
/// fingerprint of the run (base, data, settings) it belongs to. The data order and the dropout masks are functions of
/// the seed and the step, so the step is the state of every generator.
public enum TrainingCheckpoint {
    public static let folderName = ".checkpoint"
    public static let fileName = "state.safetensors"
    static let formatKey = "tessera.train.checkpoint"
    static let formatVersion = "1"

    public static func path(in output: String) -> String {
        ((output as NSString).appendingPathComponent(folderName) as NSString).appendingPathComponent(fileName)
    }

    public static func save(_ trainer: LoRATrainer, fingerprint: String, to path: String) throws {
        let state = trainer.state
        var tensors: [(name: String, values: [Float], shape: [Int])] = []
        for (k, m) in trainer.parameters.modules.enumerated() {
            let (a, b) = ([m.rank, m.module.inputs], [m.module.outputs, m.rank])
            tensors += [("\(k).a", m.a, a), ("\(k).b", m.b, b),
                        ("\(k).a.m", trainer.moments[k].a.firstMoment, a), ("\(k).a.v", trainer.moments[k].a.secondMoment, a),
                        ("\(k).b.m", trainer.moments[k].b.firstMoment, b), ("\(k).b.v", trainer.moments[k].b.secondMoment, b)]
            if let best = state.best {
                tensors += [("best.\(k).a", best.factors[2 * k], a), ("best.\(k).b", best.factors[2 * k + 1], b)]
            }
        }
        var metadata: [(String, String)] = [
            (formatKey, formatVersion), ("fingerprint", fingerprint), ("step", String(state.step)),
            ("losses", state.losses.map(hex).joined(separator: ",")), ("tokens", String(state.tokens)),
            ("evaluations", state.evaluations.map { "\($0.step):\(hex($0.loss))" }.joined(separator: ",")),
            ("elapsed", hex(state.elapsedBefore)),
        ]
        if let best = state.best { metadata += [("best_step", String(best.step)), ("best_loss", hex(best.loss))] }
        let entries = SafetensorsHeader.contiguous(tensors.map { ($0.name, DType.f32, $0.shape) })
        guard let header = SafetensorsHeader.encode(entries, metadata: metadata) else {
            throw TesseraError(.io, "\(path): cannot encode the checkpoint header")
        }
        var bytes = header
        for t in tensors { bytes += floatBytes(t.values) }
        let folder = (path as NSString).deletingLastPathComponent
        do { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
            throw TesseraError(.io, "\(folder): cannot create the checkpoint folder", hint: "check that the output folder is writable", underlying: error)
        }
        try writeAtomically(bytes, to: path)
    }

    /// The temporary name a file is written under before it is renamed into place (this process's, so that a
    /// killed run's leftover is recognisably tessera's and removable).
    public static func temporaryName(_ path: String) -> String { path + ".tessera-tmp-\(ProcessInfo.processInfo.processIdentifier)" }

    /// Written beside, then renamed: a kill leaves the previous file whole (and at worst a temporary file).
    public static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        let tmp = temporaryName(path)
        guard FileManager.default.createFile(atPath: tmp, contents: Data(bytes)) else {
            throw TesseraError(.io, "\(path): cannot write the file", hint: "check free disk space and permissions")
        }
        guard rename(tmp, path) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(tmp)
            throw TesseraError(.io, "cannot rename \(tmp) to \(path): \(why)", hint: "check the output folder's permissions")
        }
    }

    /// Reads a checkpoint back into `trainer`; nil when there is none. A checkpoint of another run (another
    /// fingerprint) or a damaged one is an error naming it, never silently ignored.
    @discardableResult
    public static func load(into trainer: LoRATrainer, fingerprint: String, from path: String) throws -> Int? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        let hint = "remove \((path as NSString).deletingLastPathComponent) to start the run over"
        func bad(_ why: String) -> TesseraError { TesseraError(.invalidParameter, "\(path): \(why)", hint: hint) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw bad("not a regular file") }
        // The largest a checkpoint of this run can be: three copies and the best of every factor, and a header.
        var expected = 0
        for m in trainer.parameters.modules {
            let (s, o) = (m.a.count + m.b.count).multipliedReportingOverflow(by: 4 * 4)
            guard !o else { throw bad("too large") }
            expected += s
        }
        guard st.st_size <= expected + 64 << 20 else { throw bad("\(st.st_size) bytes, more than a checkpoint of this run can be") }
        guard let data = FileManager.default.contents(atPath: path) else { throw bad("cannot be read") }
        let bytes = [UInt8](data)
        let layout = try SafetensorsLayout.parse(headerBytes: bytes, fileSize: bytes.count, file: path)
        let meta = Dictionary(layout.metadata, uniquingKeysWith: { a, _ in a })
        guard meta[formatKey] == formatVersion else { throw bad("not a tessera training checkpoint") }
        guard meta["fingerprint"] == fingerprint else {
            throw TesseraError(.conflict, "\(path) belongs to another run (other base, data or settings)",
                               hint: "re-run with the same arguments to resume it, or remove \((path as NSString).deletingLastPathComponent) to start over")
        }
        guard let step = meta["step"].flatMap({ Int($0) }), let tokens = meta["tokens"].flatMap({ Int($0) }),
              let losses = meta["losses"].flatMap({ doubles($0) }), let elapsed = meta["elapsed"].flatMap(double) else {
            throw bad("its metadata is incomplete")
        }
        var evaluations: [(step: Int, loss: Double)] = []
        if let text = meta["evaluations"], !text.isEmpty {
            for item in text.split(separator: ",") {
                let parts = item.split(separator: ":")
                guard parts.count == 2, let s = Int(parts[0]), let l = double(String(parts[1])) else { throw bad("its evaluations are unreadable") }
                evaluations.append((s, l))
            }
        }
        let byName = Dictionary(layout.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func tensor(_ name: String, count: Int) throws -> [Float] {
            guard let t = byName[name], t.dtype == .f32, t.elementCount == count, t.byteCount == count * 4 else { throw bad("tensor \(name) is missing or has the wrong size") }
            let (begin, o1) = layout.dataStart.addingReportingOverflow(t.begin)
            let (end, o2) = layout.dataStart.addingReportingOverflow(t.end)
            guard !o1, !o2, end <= bytes.count, begin <= end else { throw bad("tensor \(name) lies outside the file") }
            return floats(bytes[begin..<end])
        }
        var factors: [(a: [Float], b: [Float])] = []
        var moments: [(a: AdamWMoments, b: AdamWMoments)] = []
        var bestFactors: [[Float]] = []
        let hasBest = meta["best_step"] != nil
        for (k, m) in trainer.parameters.modules.enumerated() {
            let (na, nb) = (m.a.count, m.b.count)
            factors.append((try tensor("\(k).a", count: na), try tensor("\(k).b", count: nb)))
            moments.append((AdamWMoments(firstMoment: try tensor("\(k).a.m", count: na), secondMoment: try tensor("\(k).a.v", count: na)),
                            AdamWMoments(firstMoment: try tensor("\(k).b.m", count: nb), secondMoment: try tensor("\(k).b.v", count: nb))))
            if hasBest { bestFactors += [try tensor("best.\(k).a", count: na), try tensor("best.\(k).b", count: nb)] }
        }
        var state = TrainingState()
        state.step = step
        state.losses = losses
        state.tokens = tokens
        state.evaluations = evaluations
        state.elapsedBefore = elapsed
        if hasBest {
            guard let s = meta["best_step"].flatMap({ Int($0) }), let l = meta["best_loss"].flatMap(double) else { throw bad("its best evaluation is unreadable") }
            state.best = (s, l, bestFactors)
        }
        try trainer.restore(state: state, factors: factors, moments: moments)
        return step
    }

    /// Doubles are kept as their bit patterns: a resumed run reports the very same losses.
    static func hex(_ d: Double) -> String { String(d.bitPattern, radix: 16) }
    static func double(_ s: String) -> Double? { UInt64(s, radix: 16).map(Double.init(bitPattern:)) }
    static func doubles(_ s: String) -> [Double]? {
        if s.isEmpty { return [] }
        var out: [Double] = []
        for part in s.split(separator: ",", omittingEmptySubsequences: false) {
            guard let d = double(String(part)) else { return nil }
            out.append(d)
        }
        return out
    }

    /// Little-endian float32 bytes (safetensors' layout).
    public static func floatBytes(_ values: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count * 4)
        for (i, v) in values.enumerated() {
            let bits = v.bitPattern
            out[4 * i] = UInt8(truncatingIfNeeded: bits)
            out[4 * i + 1] = UInt8(truncatingIfNeeded: bits >> 8)
            out[4 * i + 2] = UInt8(truncatingIfNeeded: bits >> 16)
            out[4 * i + 3] = UInt8(truncatingIfNeeded: bits >> 24)
        }
        return out
    }

    static func floats(_ bytes: ArraySlice<UInt8>) -> [Float] {
        let base = bytes.startIndex
        return (0..<(bytes.count / 4)).map { i in
            let p = base + 4 * i
            let bits = UInt32(bytes[p]) | UInt32(bytes[p + 1]) << 8 | UInt32(bytes[p + 2]) << 16 | UInt32(bytes[p + 3]) << 24
            return Float(bitPattern: bits)
        }
    }
}
