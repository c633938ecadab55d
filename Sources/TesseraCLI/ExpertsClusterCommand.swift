import ArgumentParser
import Foundation
import TesseraCore
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

struct ExpertsClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Cluster a library's experts by their LoRA parameters (MBC).",
        discussion: """
        mttl's model-based clustering: each expert's flattened LoRA factors,
        sparsified (entries at or below the --sparsity quantile of |x| zeroed),
        cosine similarity, then seeded k-means++ with restarts on the rows of
        the similarity matrix (docs/merging.md). Prints one line per cluster
        and the `train lora` command that makes its cluster expert from the
        members' training files; saves LIBRARY/clusters.json (or -o FILE).
        Examples:
          tessera experts cluster experts --k 3 --sparsity 0.5
          tessera experts cluster HEAD:experts --k 2 --seed 7 --json -o c.json
        """
    )

    @Argument(help: "The library folder (or REV:folder).") var library: String
    @Option(help: "Number of clusters.") var k: Int
    @Option(help: "Fraction of each expert's entries zeroed before comparing, in [0, 1).") var sparsity: Double = 0.5
    @Option(help: "Seed of the k-means++ draws.") var seed: UInt64 = 42
    @Option(help: "k-means restarts (the lowest inertia is kept).") var restarts: Int = 10
    @Option(name: [.customShort("o"), .long], help: "Where to save the clusters (default: LIBRARY/clusters.json; not for REV:folder).") var output: String?
    @Flag(help: "Print JSON.") var json = false
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func validate() throws {
        if k < 1 { throw ValidationError("--k must be 1 or more") }
        if !(sparsity >= 0 && sparsity < 1) { throw ValidationError("--sparsity must be in [0, 1)") }
        if restarts < 1 { throw ValidationError("--restarts must be 1 or more") }
    }

    func run() throws {
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        let loaded = try ExpertLibraryFiles.load(library, resolver: resolver)
        let folders = try loaded.names.map { try resolver.checkpoint(ExpertLibraryFiles.path(library, $0)).adapterFolder() }
        let result = try ExpertClustering.cluster(folders, options: .init(k: k, sparsity: sparsity, seed: seed, restarts: restarts))
        let names = loaded.names
        // Each cluster's training files, from its members' training.json (when they name readable files).
        let trainingFiles = names.map { name -> [String] in
            guard let folder = try? resolver.folder(ExpertLibraryFiles.path(library, name)), (try? folder.fileNames().contains("training.json")) == true,
                  let bytes = try? folder.read("training.json", limit: 64 << 20), let json = try? JSONParser.parse(bytes) else { return [] }
            return (json["data"]?.arrayValue ?? []).filter { ($0["role"]?.stringValue ?? "train") == "train" }.compactMap { $0["path"]?.stringValue }
        }
        let clusters: [JSONValue] = result.clusters.enumerated().map { c, members in
            .object([("cluster", .int(c)), ("experts", .array(members.map { .string(names[$0]) })),
                     ("tasks", .array(Array(Set(members.flatMap { loaded.index.experts[$0].tasks })).sorted().map(JSONValue.string))),
                     ("training_files", .array(members.flatMap { trainingFiles[$0] }.map(JSONValue.string)))])
        }
        let n = names.count
        let record = JSONValue.object([
            ("format", .string("tessera-expert-clusters")), ("library", .string(library)), ("method", .string("mbc")), ("k", .int(k)),
            ("sparsity", .double(sparsity)), ("seed", .int(Int(clamping: seed))), ("restarts", .int(restarts)),
            ("experts", .array(names.map { .string($0) })),
            ("sha256", .array(loaded.experts.map { .string($0.record.sha256) })),
            ("labels", .array(result.labels.map { .int($0) })), ("clusters", .array(clusters)),
            ("similarity", .array((0..<n).map { i in .array((0..<n).map { j in .double(result.similarity[i * n + j]) }) })),
            ("modules_compared", .int(result.modules.count)), ("inertia", .double(result.inertia)),
        ])
        let destination = output ?? (FileManager.default.fileExists(atPath: library) ? ExpertLibraryFiles.path(library, "clusters.json") : nil)
        if let destination { try AtomicFile.write(Data((prettyJSON(record) + "\n").utf8), to: destination) }
        if json {
            printJSON(record)
            return
        }
        print("MBC over \(n) experts of \(library): k \(k), sparsity \(sparsity), seed \(seed), \(result.modules.count) modules compared")
        for (c, members) in result.clusters.enumerated() {
            print("cluster \(c): \(members.map { names[$0] }.joined(separator: " "))")
        }
        for (c, members) in result.clusters.enumerated() where members.count > 1 {
            let files = members.flatMap { trainingFiles[$0] }
            if !files.isEmpty {
                print("  cluster \(c) expert: tessera train lora \(loaded.index.base ?? "BASE") " + files.map { "--task \($0)" }.joined(separator: " ") + " -o cluster-\(c)")
            }
        }
        if let destination { print("saved \(destination)") }
    }
}
