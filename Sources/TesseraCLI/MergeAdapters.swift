import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO
import TesseraMerge
import TesseraRepository

/// `tessera merge ADAPTER... -o OUT` when every input is a PEFT adapter folder: PEFT's `add_weighted_adapter` on ΔW
/// (`cat` by default, exact), written as a PEFT adapter folder.
extension MergeCommand {
    /// Merges the command line's models as adapters when they are all adapter folders; false when none is.
    func mergeAdaptersIfAny(target: CheckpointOutputTarget) throws -> Bool {
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        defer { resolver.finish() }
        // Only folders can be adapters: files and REV:path are left to the model merge (which reports its own errors).
        let resolved = models.map { try? resolver.checkpoint($0) }
        let adapters = resolved.filter { $0?.layout == .adapter }.count
        if adapters == 0 {
            if combination != nil {
                throw TesseraError(.usage, "--combination combines PEFT adapter folders, and the models are not adapters", hint: "use --method for models")
            }
            return false
        }
        guard adapters == models.count else {
            let mixed = zip(models, resolved).first { $0.1?.layout != .adapter }?.0 ?? ""
            throw TesseraError(.invalidParameter, "\(mixed) is not a PEFT adapter folder, but other inputs are: adapters merge with adapters",
                               hint: "apply the adapters first (tessera lora apply), or merge adapter folders only")
        }
        guard method == nil, base == nil, densities == nil, dtype == nil else {
            throw TesseraError(.usage, "adapter folders merge on ΔW with --combination (default cat, exact), not with --method, --base, --densities or --dtype (a model method would average A and B separately)",
                               hint: "e.g. tessera merge A B --weights 0.5,0.5 -o OUT (or --combination svd|ties_svd|linear ...; --param density=, svd_rank=)")
        }
        guard case .folder = target else {
            throw TesseraError(.usage, "-o \(target.path): a merged adapter is a PEFT folder", hint: "name a folder (-o merged-adapter/)")
        }
        let name = combination ?? "cat"
        guard let kind = AdapterCombination(rawValue: name) else {
            throw TesseraError(.usage, "unknown combination '\(name)'", hint: "use one of \(AdapterCombination.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var parameters: [(String, String)] = []
        for p in parameterOptions.parameters {
            guard let eq = p.firstIndex(of: "=") else { throw TesseraError(.usage, "--param takes name=value, got '\(p)'", hint: "e.g. --param density=0.5") }
            parameters.append((String(p[..<eq]), String(p[p.index(after: eq)...])))
        }
        var options = AdapterCombinationOptions(combination: kind)
        for (key, text) in parameters {
            let number = Double(text)
            switch key {
            case "density" where number != nil: options.density = number
            case "svd_rank" where number.map({ $0 >= 1 && $0 < 0x1p20 && $0 == $0.rounded() }) == true: options.svdRank = Int(number!)
            case "seed" where number.map({ $0 >= 0 && $0 < 0x1p53 && $0 == $0.rounded() }) == true: options.seed = UInt64(number!)
            case "majority_sign_method" where text == "total" || text == "frequency": options.majoritySignByFrequency = text == "frequency"
            default: throw TesseraError(.usage, "--param \(key)=\(text) is not a parameter of adapter combinations", hint: "they take density, svd_rank (an integer ≥ 1), majority_sign_method (total|frequency) and seed")
            }
        }
        let weights = try Self.list(self.weights, count: models.count, name: "--weights") ?? Array(repeating: 1, count: models.count)
        let folders = try resolved.map { try $0!.adapterFolder() }
        let started = Date()
        let merged = try AdapterMerge.combine(folders, weights: weights, options: options)
        let writer = try CheckpointOutputWriter(target: target, headerReserve: 1 << 20, weightsName: "adapter_model")
        try merged.write { try writer.append($0, $1) }
        var config: [(String, JSONValue)] = [("combination_type", .string(kind.rawValue)),
                                             ("adapters", .array(models.map { .string($0) })),
                                             ("weights", .array(weights.map { .double($0) }))]
        for (k, v) in parameters { config.append((k, Double(v).map { .double($0) } ?? .string(v))) }
        let card = ModelCard(title: URL(fileURLWithPath: target.path).standardizedFileURL.lastPathComponent, baseModels: [], libraryName: "peft",
                             summary: "made by `tessera merge`: \(models.count) LoRA adapters combined with `\(kind.rawValue)` (PEFT's add_weighted_adapter)\(kind.isFactorWise ? "; a factor-wise, lossy combination" : "")",
                             inputs: models.map { ("adapter", $0) }, parameters: nil, configYAML: YAMLText.block(.object(config)),
                             configHeading: "Adapter combination")
        let written = try writer.finish(metadata: [("format", "pt"), ("tessera.merge.format", "1"), ("tessera.merge.method", "adapter-\(kind.rawValue)"),
                                                   ("tessera.merge.adapters", JSONValue.object(config).serialized())],
                                        sideFiles: [(CheckpointFolderLayout.adapterConfigName, merged.configBytes)]) { card.render(files: $0) }
        let seconds = Date().timeIntervalSince(started)
        if json {
            printJSON(.object([("output", .string(target.path)), ("combination", .string(kind.rawValue)), ("rank", .int(merged.rank)),
                               ("modules", .int(merged.tensors.count / 2)), ("seconds", .double(seconds)), ("files", .array(written.files.map { .string($0) }))]))
        } else {
            print(String(format: "merged %d adapters with %@ into a rank-%d adapter of %d modules at %@ (%@) in %.2f s", models.count, kind.rawValue, merged.rank,
                         merged.tensors.count / 2, target.path, written.files.joined(separator: ", "), seconds))
        }
        return true
    }
}
