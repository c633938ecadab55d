import Foundation
import TesseraCore
import TesseraIO

/// A PhatGOOSE gate on one LoRA module (Muqeeth et al. 2024): a vector g [inputs] whose σ(g · x_t) scales the
/// module's delta for token t, and its gradient. Attached through `LoRAModuleParameters.gate`.
public final class GateParameters {
    public var values: [Float]
    public var gradient: [Float]

    /// PhatGOOSE and mttl start every gate at zero (σ = ½ on every token).
    public init(inputs: Int) {
        values = [Float](repeating: 0, count: inputs)
        gradient = [Float](repeating: 0, count: inputs)
    }

    public init(values: [Float]) {
        self.values = values
        gradient = [Float](repeating: 0, count: values.count)
    }

    public func zeroGradient() {
        for i in gradient.indices { gradient[i] = 0 }
    }
}

/// The gates of one expert as a file: safetensors, one float32 tensor `<module name>.gate` [d_in] per adapted module
/// (PEFT's module names without `base_model.model.`), metadata {"format": "tessera-phatgoose-gates", "steps", "lr",
/// and what else the trainer records}. What the routers read.
public struct PhatGOOSEGates: Sendable, Equatable {
    public static let format = "tessera-phatgoose-gates"
    public static let suffix = ".gate"
    /// A gates file is a few megabytes for a small model (one vector per module); this bounds what is read.
    public static let maximumFileSize = 1 << 32

    /// (module name, gate values) in the expert's module order.
    public var gates: [(module: String, values: [Float])]
    public var steps: Int
    public var learningRate: Double
    /// Further metadata (warm-up, batch size, seed, expert...), written after format, steps and lr.
    public var metadata: [(String, String)]

    public init(gates: [(module: String, values: [Float])], steps: Int, learningRate: Double, metadata: [(String, String)] = []) {
        self.gates = gates
        self.steps = steps
        self.learningRate = learningRate
        self.metadata = metadata
    }

    public static func == (l: PhatGOOSEGates, r: PhatGOOSEGates) -> Bool {
        l.steps == r.steps && l.learningRate == r.learningRate && l.gates.count == r.gates.count
            && zip(l.gates, r.gates).allSatisfy { $0.module == $1.module && $0.values == $1.values }
            && l.metadata.count == r.metadata.count && zip(l.metadata, r.metadata).allSatisfy { $0 == $1 }
    }

    /// The gate of a module, by name.
    public func gate(_ module: String) -> [Float]? { gates.first { $0.module == module }?.values }

    /// The file's bytes: tensors in name order (as safetensors writers order them).
    public func encoded() throws -> [UInt8] {
        let sorted = gates.sorted { $0.module < $1.module }
        for (k, g) in sorted.enumerated() where k > 0 && g.module == sorted[k - 1].module {
            throw TesseraError(.invalidParameter, "two gates for module '\(g.module)'", hint: "give one gate per module")
        }
        var metadata: [(String, String)] = [("format", Self.format), ("steps", String(steps)), ("lr", String(learningRate))]
        metadata += self.metadata.filter { !["format", "steps", "lr"].contains($0.0) }
        let entries = SafetensorsHeader.contiguous(sorted.map { ($0.module + Self.suffix, DType.f32, [$0.values.count]) })
        guard let header = SafetensorsHeader.encode(entries, metadata: metadata) else {
            throw TesseraError(.io, "cannot encode the gates file's safetensors header", hint: "check the module names")
        }
        var bytes = header
        for g in sorted { bytes += TrainingCheckpoint.floatBytes(g.values) }
        return bytes
    }

    /// Writes the file beside `path`, then renames it into place.
    public func write(to path: String) throws {
        try TrainingCheckpoint.writeAtomically(try encoded(), to: path)
    }

    /// Reads and checks a gates file: one line saying what is wrong with a file that is not one (not safetensors,
    /// truncated, another format, a tensor that is not a float32 vector named `<module>.gate`, values not finite).
    public static func read(path: String) throws -> PhatGOOSEGates {
        let file = try FileDescriptor.openRegularFile(path)
        let size = try file.size()
        guard size <= maximumFileSize else {
            throw TesseraError(.invalidParameter, "\(path): \(size) bytes, more than a gates file can be",
                               hint: "name a gates file written by `tessera train gates`")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TesseraError(.io, "\(path): cannot read the gates file", hint: "check that it is readable")
        }
        return try decode([UInt8](data), name: path)
    }

    public static func decode(_ bytes: [UInt8], name: String) throws -> PhatGOOSEGates {
        let hint = "name a gates file written by `tessera train gates`"
        func bad(_ why: String) -> TesseraError { TesseraError(.invalidParameter, "\(name): \(why)", hint: hint) }
        let layout = try SafetensorsLayout.parse(headerBytes: bytes, fileSize: bytes.count, file: name)
        let meta = Dictionary(layout.metadata, uniquingKeysWith: { a, _ in a })
        guard meta["format"] == format else { throw bad("not a PhatGOOSE gates file (its metadata has no format \"\(format)\")") }
        guard let steps = meta["steps"].flatMap({ Int($0) }), steps >= 0 else { throw bad("its metadata has no step count") }
        guard let lr = meta["lr"].flatMap({ Double($0) }), lr.isFinite else { throw bad("its metadata has no learning rate") }
        guard !layout.tensors.isEmpty else { throw bad("it holds no gate") }
        var gates: [(module: String, values: [Float])] = []
        for t in layout.tensors.sorted(by: { $0.name < $1.name }) {
            guard t.name.hasSuffix(suffix), t.name.count > suffix.count else { throw bad("tensor '\(t.name)' is not named <module>\(suffix)") }
            guard t.dtype == .f32 else { throw bad("gate '\(t.name)' is \(t.dtype.rawValue), not F32") }
            guard t.shape.count == 1, t.shape[0] > 0 else { throw bad("gate '\(t.name)' has shape \(t.shape), not [d_in]") }
            let (begin, o1) = layout.dataStart.addingReportingOverflow(t.begin)
            let (end, o2) = layout.dataStart.addingReportingOverflow(t.end)
            guard !o1, !o2, begin <= end, end <= bytes.count, end - begin == 4 * t.shape[0] else { throw bad("gate '\(t.name)' lies outside the file") }
            let values = TrainingCheckpoint.floats(bytes[begin..<end])
            guard values.allSatisfy(\.isFinite) else { throw bad("gate '\(t.name)' has values that are not finite") }
            gates.append((String(t.name.dropLast(suffix.count)), values))
        }
        let extra = layout.metadata.filter { !["format", "steps", "lr"].contains($0.0) }
        return PhatGOOSEGates(gates: gates, steps: steps, learningRate: lr, metadata: extra)
    }

    /// Attaches each gate to the module of `expert` it belongs to; refuses a gate whose module the expert lacks or
    /// whose length is not the module's inputs, and an expert module without a gate.
    public func attach(to expert: LoRAParameters) throws {
        let byName = Dictionary(gates.map { ($0.module, $0.values) }, uniquingKeysWith: { a, _ in a })
        let names = Set(expert.modules.map(\.module.name))
        if let stray = gates.first(where: { !names.contains($0.module) }) {
            throw TesseraError(.invalidParameter, "the gates name module '\(stray.module)', which the expert does not adapt",
                               hint: "use the gates trained for this expert")
        }
        for m in expert.modules {
            guard let values = byName[m.module.name] else {
                throw TesseraError(.invalidParameter, "the gates have none for module '\(m.module.name)'", hint: "use the gates trained for this expert")
            }
            guard values.count == m.module.inputs else {
                throw TesseraError(.shapeMismatch, "the gate of '\(m.module.name)' has \(values.count) values; the module has \(m.module.inputs) inputs",
                                   hint: "use the gates trained for this expert on this base")
            }
        }
        for m in expert.modules { m.gate = byName[m.module.name].map { GateParameters(values: $0) } }
    }
}
