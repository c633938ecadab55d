import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore

struct LsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List the tensors of a tracked file at any revision: name, dtype, shape, bytes, object, encoding.",
        discussion: """
        Reads the manifest from git (no checkout). Checkpoints written by `tessera merge` or `tessera taskvec` also
        show how they were made (their provenance metadata).
        Examples:
          tessera ls model.safetensors            # as staged in the index
          tessera ls HEAD~2:model.safetensors
          tessera ls v1:model.safetensors --json
        """
    )

    @Argument(help: "[REV:]PATH of a tracked file.")
    var target: String

    @OptionGroup var options: RepositoryOptions

    func run() throws {
        let context = try RepositoryContext(directory: options.directory)
        let (name, manifest) = try context.manifest(target)
        var metadata: [(String, String)] = []
        if manifest.format == .safetensors, let checkpoint = try? StoredCheckpoint(manifest: manifest, store: context.store, name: name) {
            metadata = checkpoint.metadata
        }
        if options.json {
            let tensors: [JSONValue] = manifest.tensors.map { t in
                .object([("name", .string(t.name)), ("dtype", .string(t.dtype.rawValue)), ("shape", .array(t.shape.map { .int($0) })),
                         ("bytes", .int(t.end - t.begin)), ("object", .string(t.stored.objectID)), ("object_bytes", .int(t.stored.objectSize)),
                         ("encoding", .string(t.stored.encoding)), ("sha256", .string(t.stored.rawSHA256))])
            }
            printJSON(.object([("file", .string(name)), ("format", .string(manifest.format.rawValue)), ("size", .int(manifest.size)),
                               ("tensors", .array(tensors)), ("metadata", .object(metadata.map { ($0.0, .string($0.1)) }))]))
            return
        }
        if manifest.format == .opaque {
            let s = manifest.segments[0].stored!
            print("\(name): not a recognised checkpoint, stored whole: \(manifest.size) bytes, object \(s.objectID.prefix(12)) (\(s.encoding), \(s.objectSize) bytes)")
            return
        }
        let rows = manifest.tensors.map { t in
            [t.name, t.dtype.rawValue, "[" + t.shape.map(String.init).joined(separator: ",") + "]", String(t.end - t.begin),
             String(t.stored.objectID.prefix(12)), t.stored.encoding.split(separator: "@").first.map(String.init) ?? t.stored.encoding,
             String(t.stored.objectSize)]
        }
        printTable(header: ["name", "dtype", "shape", "bytes", "object", "encoding", "stored"], rows: rows)
        let stored = Set(manifest.objects.map(\.id)).count
        let storedBytes = manifest.tensors.reduce(0) { $0 + $1.stored.objectSize }
        print("\(manifest.tensors.count) tensors, \(humanBytes(manifest.size)) (\(stored) objects, \(humanBytes(storedBytes)) stored)")
        if !metadata.isEmpty {
            print("metadata:")
            for (k, v) in metadata { print("  \(k): \(v)") }
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
