import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraMerge
import TesseraRepository
import TesseraStore
import TesseraIO

struct LsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List the tensors of a checkpoint: a tracked file at any revision, or any file or folder.",
        discussion: """
        A tracked file (`PATH` as staged, `REV:path`) is read from its manifest (no
        checkout), with each tensor's object and encoding. Any other checkpoint is
        read directly, inside a repository or not: a safetensors file, a Hugging Face
        folder (single, sharded, or a PEFT adapter), a shard index, `REV:folder`.
        Checkpoints written by `tessera merge` or `tessera taskvec` also show how they
        were made (their provenance metadata).
        Examples:
          tessera ls model.safetensors       # as staged (or the file, untracked)
          tessera ls HEAD~2:model.safetensors
          tessera ls v1:model.safetensors --json
          tessera ls ~/models/Llama-3.2-1B   # a Hugging Face folder, sharded or not
          tessera ls HEAD:merged                  # a folder at a revision
        """
    )

    @Argument(help: "[REV:]PATH of a tracked file, or a checkpoint file, folder or REV:folder.")
    var target: String

    @OptionGroup var options: RepositoryOptions

    func run() throws {
        let repository = try? Repository(directory: options.directory)
        if let repository, let tracked = try repository.trackedManifestIfAny(target) {
            show(name: tracked.name, manifest: tracked.manifest, store: repository.store)
            return
        }
        let resolver = CheckpointResolver(directory: options.directory, hashesFileInputs: false)
        defer { resolver.finish() }
        let checkpoint = try resolver.checkpoint(target)
        if checkpoint.layout == .adapter { return try showAdapter(try checkpoint.adapterFolder()) }
        show(checkpoint)
    }

    /// A PEFT adapter: its base, rank, alpha and target modules, and each module's rank, scaling and ‖ΔW‖_F.
    func showAdapter(_ folder: AdapterFolder) throws {
        let a = folder.adapter, c = a.config
        let norms = try a.modules.map { try folder.deltaNorm($0) }
        let targets: JSONValue = c.json["target_modules"] ?? .null
        let targetText = targets.arrayValue.map { $0.compactMap(\.stringValue).joined(separator: ", ") } ?? targets.stringValue ?? "(none)"
        let scalings = Set(a.modules.map(\.scaling))
        if options.json {
            let modules: [JSONValue] = zip(a.modules, norms).map { m, n in
                .object([("module", .string(m.name)), ("rank", .int(m.rank)), ("shape", .array(m.deltaShape.map { .int($0) })),
                         ("scaling", .double(m.scaling)), ("delta_norm", .double(n)), ("embedding", .bool(m.isEmbedding))])
            }
            printJSON(.object([("file", .string(folder.name)), ("format", .string("peft-adapter")),
                               ("base_model", c.baseModel.map { .string($0) } ?? .null), ("r", .int(c.rank)), ("lora_alpha", .double(c.alpha)),
                               ("use_rslora", .bool(c.useRSLoRA)), ("scaling", scalings.count == 1 ? .double(scalings.first!) : .null),
                               ("target_modules", targets), ("modules", .array(modules)),
                               ("modules_to_save", .array(a.replacements.map { .string($0.target) }))]))
            return
        }
        print("\(folder.name): PEFT LoRA adapter of \(c.baseModel ?? "(no base_model_name_or_path)")")
        let scalingText = scalings.count == 1 ? String(format: "%.6g", scalings.first!) : "per module"
        print("r=\(c.rank)  lora_alpha=\(String(format: "%g", c.alpha))\(c.useRSLoRA ? "  use_rslora" : "")  scaling=\(scalingText)  target_modules: \(targetText)")
        printTable(header: ["module", "rank", "shape", "scaling", "|dW|_F"], rows: zip(a.modules, norms).map { m, n in
            [m.name + (m.isEmbedding ? " (embedding)" : ""), String(m.rank), "[" + m.deltaShape.map(String.init).joined(separator: ",") + "]",
             String(format: "%.6g", m.scaling), String(format: "%.6g", n)]
        })
        var line = "\(a.modules.count) modules"
        if !a.replacements.isEmpty { line += ", \(a.replacements.count) tensors saved whole (modules_to_save): " + a.replacements.prefix(4).map(\.target).joined(separator: ", ") + (a.replacements.count > 4 ? ", ..." : "") }
        print(line)
    }

    func show(name: String, manifest: Manifest, store: ObjectStore) {
        var metadata: [(String, String)] = []
        if manifest.format == .safetensors, let checkpoint = try? StoredCheckpoint(manifest: manifest, store: store, name: name) {
            metadata = checkpoint.metadata
        }
        if options.json {
            let tensors: [JSONValue] = manifest.typedTensors.map { t in
                .object([("name", .string(t.name)), ("dtype", .string("\(t.type)")), ("shape", .array(t.shape.map { .int($0) })),
                         ("bytes", .int(t.end - t.begin)), ("object", .string(t.stored.objectID)), ("object_bytes", .int(t.stored.objectSize)),
                         ("encoding", .string(t.stored.encoding)), ("sha256", .string(t.stored.rawSHA256))])
            }
            printJSON(.object([("file", .string(name)), ("format", .string(manifest.format.rawValue)), ("size", .int(manifest.size)),
                               ("tensors", .array(tensors)), ("metadata", .object(metadata.map { ($0.0, .string($0.1)) }))]))
            return
        }
        if manifest.format == .opaque {
            // A hostile manifest may claim an opaque file and hold no object (or start with a gap).
            guard let s = manifest.segments.first?.stored else {
                print("\(name): not a recognised checkpoint, stored whole: \(manifest.size) bytes, no object")
                return
            }
            print("\(name): not a recognised checkpoint, stored whole: \(manifest.size) bytes, object \(s.objectID.prefix(12)) (\(s.encoding), \(s.objectSize) bytes)")
            return
        }
        // Typed: GGUF's block-quantised tensors are listed by their GGML type.
        let rows = manifest.typedTensors.map { t in
            [t.name, "\(t.type)", "[" + t.shape.map(String.init).joined(separator: ",") + "]", String(t.end - t.begin),
             String(t.stored.objectID.prefix(12)), t.stored.encoding.split(separator: "@").first.map(String.init) ?? t.stored.encoding,
             String(t.stored.objectSize)]
        }
        printTable(header: ["name", "dtype", "shape", "bytes", "object", "encoding", "stored"], rows: rows)
        let stored = Set(manifest.objects.map(\.id)).count
        let storedBytes = manifest.typedTensors.reduce(0) { $0 + $1.stored.objectSize }
        print("\(manifest.typedTensors.count) tensors, \(humanBytes(manifest.size)) (\(stored) objects, \(humanBytes(storedBytes)) stored)")
        printMetadata(metadata)
    }

    /// A checkpoint read directly: its tensors (and shard, when sharded) and metadata.
    func show(_ checkpoint: ResolvedCheckpoint) {
        let source = checkpoint.source
        let sharded = source as? ShardedSource
        func shardName(_ tensor: String) -> String {
            guard let sharded, let s = sharded.shard(of: tensor) else { return "" }
            return sharded.shards.first { $0.source === s }?.name ?? ""
        }
        var total = 0
        let tensors = source.tensorNames.map { name -> (String, DType, [Int], Int) in
            let info = source.tensorInfo(name)
            let dtype = info?.dtype ?? .u8, shape = info?.shape ?? []
            let bytes = elementCount(shape).flatMap { dtype.byteCount(elements: $0) } ?? 0
            let (sum, overflow) = total.addingReportingOverflow(bytes)
            total = overflow ? Int.max : sum
            return (name, dtype, shape, bytes)
        }
        let format: String
        switch checkpoint.layout {
        case .file: format = "safetensors"
        case .sharded: format = "sharded"
        case .adapter: format = "peft-adapter"
        }
        if options.json {
            let rows: [JSONValue] = tensors.map { t in
                var pairs: [(String, JSONValue)] = [("name", .string(t.0)), ("dtype", .string(t.1.rawValue)), ("shape", .array(t.2.map { .int($0) })),
                                                    ("bytes", .int(t.3))]
                if sharded != nil { pairs.append(("shard", .string(shardName(t.0)))) }
                return .object(pairs)
            }
            var pairs: [(String, JSONValue)] = [("file", .string(checkpoint.name)), ("format", .string(format)), ("tensor_bytes", .int(total))]
            if let sharded { pairs.append(("shards", .array(sharded.shards.map { .string($0.name) }))) }
            pairs += [("tensors", .array(rows)), ("metadata", .object(source.metadata.map { ($0.0, .string($0.1)) }))]
            printJSON(.object(pairs))
            return
        }
        let shape = { (s: [Int]) in "[" + s.map(String.init).joined(separator: ",") + "]" }
        if sharded != nil {
            printTable(header: ["name", "dtype", "shape", "bytes", "shard"], rows: tensors.map { [$0.0, $0.1.rawValue, shape($0.2), String($0.3), shardName($0.0)] })
        } else {
            printTable(header: ["name", "dtype", "shape", "bytes"], rows: tensors.map { [$0.0, $0.1.rawValue, shape($0.2), String($0.3)] })
        }
        var line = "\(tensors.count) tensors, \(humanBytes(total))"
        switch checkpoint.layout {
        case .file: break
        case let .sharded(n): line += ", sharded: \(n) shard\(n == 1 ? "" : "s") (through \(sharded?.sourceName ?? "the index"))"
        case .adapter: line += ", a PEFT adapter (adapter_model.safetensors)"
        }
        print(line)
        printMetadata(source.metadata)
    }

    func printMetadata(_ metadata: [(String, String)]) {
        guard !metadata.isEmpty else { return }
        print("metadata:")
        // Provenance values (per-tensor input hashes) run to tens of kilobytes: the table shows their start.
        let shown = 160
        for (k, v) in metadata {
            let value = v.count <= shown ? v : String(v.prefix(shown)) + "... (\(v.count) characters; --json prints them all)"
            print("  \(k): \(value)")
        }
    }
}

func printTable(header: [String], rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (k, c) in r.enumerated() { widths[k] = max(widths[k], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { k, c in k == cells.count - 1 ? c : c.padding(toLength: widths[k], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }
    print(line(header))
    for r in rows { print(line(r)) }
}
