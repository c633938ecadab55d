import TesseraIO

/// A batch of sequences checked against a model and laid out as one [tokens, ·] matrix: sequence i occupies rows
/// `sequences[i]`, token rows know their position, and the counted targets are listed with their rows, so the
/// output head runs on those rows only.
struct TrainingBatch {
    var tokens: [Int] = []
    var positions: [Int] = []
    var sequences: [Range<Int>] = []
    /// Rows whose prediction counts, and what they should predict.
    var countedRows: [Int] = []
    var countedTargets: [Int] = []
    var rows: Int { tokens.count }
    var longest: Int { sequences.map(\.count).max() ?? 0 }

    /// Refuses, with one line, what no pass can compute: a token or target outside the vocabulary, an empty
    /// sequence, one longer than the context, targets not matching tokens.
    init(_ batch: [TrainingSequence], vocabularySize: Int, maxSequenceLength: Int) throws {
        for (i, s) in batch.enumerated() {
            guard !s.tokens.isEmpty else {
                throw TesseraError(.invalidParameter, "training sequence \(i) is empty", hint: "drop empty examples before training")
            }
            guard s.targets.count == s.tokens.count else {
                throw TesseraError(.invalidParameter, "training sequence \(i) has \(s.tokens.count) tokens but \(s.targets.count) targets",
                                   hint: "give one target per token (TrainingSequence.ignored where nothing is predicted)")
            }
            guard s.tokens.count <= maxSequenceLength else {
                throw TesseraError(.invalidParameter, "training sequence \(i) has \(s.tokens.count) tokens, more than the model's context of \(maxSequenceLength)",
                                   hint: "truncate examples to the model's context (max length)")
            }
            for t in s.tokens where t < 0 || Int(t) >= vocabularySize {
                throw TesseraError(.invalidParameter, "training sequence \(i) has token id \(t), outside the model's vocabulary of \(vocabularySize)",
                                   hint: "use the tokenizer that belongs to the model")
            }
            for t in s.targets where t != TrainingSequence.ignored && (t < 0 || Int(t) >= vocabularySize) {
                throw TesseraError(.invalidParameter, "training sequence \(i) has target \(t), outside the model's vocabulary of \(vocabularySize)",
                                   hint: "targets are token ids, or TrainingSequence.ignored (-1)")
            }
            let start = tokens.count
            sequences.append(start..<(start + s.tokens.count))
            for (p, (token, target)) in zip(s.tokens, s.targets).enumerated() {
                if target != TrainingSequence.ignored {
                    countedRows.append(tokens.count)
                    countedTargets.append(Int(target))
                }
                tokens.append(Int(token))
                positions.append(p)
            }
        }
    }
}

/// Where a LoRA module can sit: the frozen linear layer and the rows of its output the module's weight produced.
struct AdaptableSite {
    let module: AdaptableModule
    let linear: LoRALinear
    let rows: Range<Int>
    let ropeHeads: Int?
}

/// What every architecture's trainer shares: the table of adaptable modules and attaching LoRA parameters to it.
final class LoRASites {
    private(set) var sites: [AdaptableSite] = []
    private var byName: [String: Int] = [:]
    private(set) var parameters: LoRAParameters?
    /// Alternative spellings PEFT may use for the same module (with or without `transformer.` / `bert.`).
    let prefixes: [String]

    init(prefixes: [String] = []) { self.prefixes = prefixes }

    func add(_ name: String, linear: LoRALinear, rows: Range<Int>? = nil, ropeHeads: Int? = nil) {
        let rows = rows ?? 0..<linear.outputs
        byName[name] = sites.count
        sites.append(AdaptableSite(module: AdaptableModule(name: name, outputs: rows.count, inputs: linear.inputs), linear: linear, rows: rows,
                                   ropeHeads: ropeHeads))
    }

    var modules: [AdaptableModule] { sites.map(\.module) }

    func site(_ name: String) -> AdaptableSite? {
        if let i = byName[name] { return sites[i] }
        for prefix in prefixes {
            let other = name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : prefix + name
            if let i = byName[other] { return sites[i] }
        }
        return nil
    }

    /// Checks every module before changing anything, then binds them to their layers.
    func attach(_ parameters: LoRAParameters?) throws {
        var plan: [(LoRALinear, LoRABinding)] = []
        if let parameters {
            guard parameters.dropout.isFinite, parameters.dropout >= 0, parameters.dropout < 1 else {
                throw TesseraError(.invalidParameter, "LoRA dropout \(parameters.dropout) is not in [0, 1)", hint: "use a dropout such as 0 or 0.05")
            }
            var seen = Set<String>()
            for (index, m) in parameters.modules.enumerated() {
                guard let site = site(m.module.name) else {
                    throw TesseraError(.notFound, "LoRA module '\(m.module.name)' is not a linear layer of this model",
                                       hint: "target one of the model's adaptable modules (e.g. \(sites.first?.module.name ?? "none"))")
                }
                guard seen.insert(site.module.name).inserted else {
                    throw TesseraError(.invalidParameter, "LoRA module '\(m.module.name)' is given twice", hint: "attach each module once")
                }
                let (aCount, o1) = m.rank.multipliedReportingOverflow(by: site.module.inputs)
                let (bCount, o2) = m.rank.multipliedReportingOverflow(by: site.module.outputs)
                guard m.rank > 0, !o1, !o2, m.module.inputs == site.module.inputs, m.module.outputs == site.module.outputs,
                      m.a.count == aCount, m.b.count == bCount,
                      m.gradientA.count == m.a.count, m.gradientB.count == m.b.count else {
                    throw TesseraError(.shapeMismatch,
                                       "LoRA module '\(m.module.name)' has rank \(m.rank) and factors of \(m.a.count) and \(m.b.count) values, which do not fit a layer of \(site.module.inputs) inputs and \(site.module.outputs) outputs",
                                       hint: "make the factors A [rank, inputs] and B [outputs, rank]")
                }
                guard m.scaling.isFinite else {
                    throw TesseraError(.invalidParameter, "LoRA module '\(m.module.name)' has a scaling that is not finite", hint: "check rank and alpha")
                }
                if let gate = m.gate {
                    guard gate.values.count == site.module.inputs, gate.gradient.count == site.module.inputs, gate.values.allSatisfy(\.isFinite) else {
                        throw TesseraError(.shapeMismatch, "the gate of LoRA module '\(m.module.name)' has \(gate.values.count) values, not the layer's \(site.module.inputs) inputs, or values that are not finite",
                                           hint: "a gate has one finite value per input of its layer")
                    }
                }
                plan.append((site.linear, LoRABinding(parameters: m, rows: site.rows, ropeHeads: site.ropeHeads, stream: UInt64(index),
                                                      gate: m.gate, frozen: m.frozen)))
            }
        }
        for site in sites { site.linear.bindings = [] }
        for (linear, binding) in plan { linear.bindings.append(binding) }
        self.parameters = parameters
    }

    /// The dropout masks of a training pass (nil without dropout).
    func dropout(seed: UInt64) -> DropoutMasks? {
        guard let p = parameters?.dropout, p > 0 else { return nil }
        return DropoutMasks(probability: p, seed: seed)
    }
}
