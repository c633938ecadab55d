import Foundation
import Testing
import TesseraCore
import TesseraMerge
import TesseraIO
import TesseraTestSupport

/// A checkpoint folder held in memory: file names and bytes, and sources for its safetensors files.
final class MemoryFolder: CheckpointFolder {
    let name: String
    var files: [String: [UInt8]] = [:]
    var sources: [String: TensorSource] = [:]
    init(_ name: String) { self.name = name }
    func fileNames() throws -> [String] { Array(Set(files.keys).union(sources.keys)).sorted() }
    func read(_ file: String, limit: Int) throws -> [UInt8] {
        guard let b = files[file] else { throw TesseraError(.notFound, "\(path(file)): no such file") }
        guard b.count <= limit else { throw TesseraError(.invalidCheckpoint, "\(path(file)): too large") }
        return b
    }
    func openCheckpoint(_ file: String) throws -> TensorSource {
        guard let s = sources[file] else { throw TesseraError(.notFound, "\(path(file)): no such file") }
        return s
    }
}

func floats(_ name: String, _ values: [Float]) throws -> (String, [Int], [Float]) { (name, [values.count], values) }

/// A scratch folder for tests that write files.
final class ScratchFolder {
    let path = NSTemporaryDirectory() + "tessera-ckpt-" + UUID().uuidString.prefix(8)
    init() throws { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
    func list(_ sub: String = "") -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: sub.isEmpty ? path : file(sub))) ?? []).sorted() }
}

@Suite struct ShardIndexTests {
    @Test func parsesTransformersIndexes() throws {
        let text = #"{"metadata": {"total_size": 24}, "weight_map": {"b": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors"}}"#
        let index = try ShardIndex.parse(Array(text.utf8), file: "i.json")
        #expect(index.shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        #expect(index.weightMap.map(\.tensor) == ["b", "a"])
        #expect(index.totalSize == 24)
    }

    @Test(arguments: [
        ("not json", "invalid JSON"),
        (#"{"metadata": {}}"#, "weight_map"),
        (#"{"weight_map": []}"#, "weight_map"),
        (#"{"weight_map": {}}"#, "lists no tensors"),
        (#"{"weight_map": {"a": 3}}"#, "not a file name"),
        (#"{"weight_map": {"a": "../secrets.safetensors"}}"#, "not a file name"),
        (#"{"weight_map": {"a": "/etc/passwd"}}"#, "not a file name"),
        (#"{"weight_map": {"a": ".."}}"#, "not a file name"),
        (#"{"weight_map": {"../a": "m.safetensors"}}"#, "path characters"),
        (#"{"weight_map": {"a": "m.safetensors", "a": "n.safetensors"}}"#, "invalid JSON"),
    ])
    func refusesWhatIsNotAnIndex(text: String, words: String) throws {
        let e = try #require(throws: TesseraError.self) { try ShardIndex.parse(Array(text.utf8), file: "i.json") }
        #expect(e.description.contains(words) && e.description.contains("i.json"), "\(e)")
    }

    @Test func refusesAnIndexLargerThanAnyRealOne() throws {
        let bytes = [UInt8](repeating: 0x20, count: ShardIndex.maxBytes + 1)
        let e = try #require(throws: TesseraError.self) { try ShardIndex.parse(bytes, file: "i.json") }
        #expect(e.description.contains("too large"))
    }

    @Test func rendersAsTransformersWritesIt() {
        let text = ShardIndex.render(weightMap: [("b", "s2"), ("a", "s1"), ("a.b", "s1")], totalParameters: 6, totalSize: 24)
        #expect(text == """
            {
              "metadata": {
                "total_parameters": 6,
                "total_size": 24
              },
              "weight_map": {
                "a": "s1",
                "a.b": "s1",
                "b": "s2"
              }
            }

            """)
    }
}

@Suite struct CheckpointFolderTests {
    func shardedFolder() throws -> MemoryFolder {
        let f = MemoryFolder("m")
        f.sources["model-00001-of-00002.safetensors"] = try MemorySource("s1", floats: [try floats("x", [1, 2]), try floats("y", [3]),
                                                                                       try floats("unlisted", [9])])
        f.sources["model-00002-of-00002.safetensors"] = try MemorySource("s2", floats: [try floats("z", [4, 5, 6])])
        f.files["model.safetensors.index.json"] = Array(#"{"weight_map": {"z": "model-00002-of-00002.safetensors", "y": "model-00001-of-00002.safetensors", "x": "model-00001-of-00002.safetensors"}}"#.utf8)
        f.files["config.json"] = Array("{}".utf8)
        return f
    }

    @Test func shardedFolderReadsAsOneSource() throws {
        let f = try shardedFolder()
        let layout = try CheckpointFolderLayout.detect(in: f)
        #expect(layout == .sharded(index: "model.safetensors.index.json"))
        let source = try layout.open(in: f)
        // Shard by shard, each in its own order; tensors the index does not list are not part of the checkpoint.
        #expect(source.tensorNames == ["x", "y", "z"])
        #expect(try source.floats("z") == [4, 5, 6])
        #expect(try source.floats("x") == [1, 2])
        #expect(source.tensorInfo("unlisted") == nil)
        #expect(throws: TesseraError.self) { try source.rawTensor("unlisted") }
        #expect((source as? ShardedSource)?.shard(of: "z")?.sourceName == "s2")
    }

    @Test func aMissingShardOrTensorIsOneError() throws {
        let f = try shardedFolder()
        f.sources["model-00002-of-00002.safetensors"] = nil
        var e = try #require(throws: TesseraError.self) { try CheckpointFolderLayout.detect(in: f).open(in: f) }
        #expect(e.description.contains("model-00002-of-00002.safetensors") && e.description.contains("missing"), "\(e)")
        let g = try shardedFolder()
        g.files["model.safetensors.index.json"] = Array(#"{"weight_map": {"w": "model-00002-of-00002.safetensors"}}"#.utf8)
        e = try #require(throws: TesseraError.self) { try CheckpointFolderLayout.detect(in: g).open(in: g) }
        #expect(e.description.contains("'w'") && e.description.contains("does not hold it"), "\(e)")
    }

    @Test(arguments: [
        (["model.safetensors", "config.json"], "single"),
        (["model.safetensors.index.json", "model-00001-of-00001.safetensors"], "sharded"),
        (["adapter_model.safetensors", "adapter_config.json"], "adapter"),
        (["adapter_model.safetensors"], "no adapter_config.json"),
        (["model.safetensors", "model.safetensors.index.json"], "ambiguous"),
        (["pytorch_model.bin", "config.json"], "not supported yet: convert it to safetensors"),
        (["pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"], "not supported yet: convert it to safetensors"),
        (["adapter_model.bin", "adapter_config.json"], "adapter.bin"),
        (["adapter_model.bin"], "no adapter_config.json"),
        (["diffusion_pytorch_model.safetensors"], "name the file itself"),
        (["model.Q4_K_M.gguf"], "GGUF"),
        (["tf_model.h5"], "not supported yet"),
        (["config.json", "README.md"], "holds no checkpoint"),
        ([], "holds no checkpoint"),
    ])
    func layoutsAreFoundOrRefusedInOneLine(files: [String], expected: String) throws {
        let f = MemoryFolder("dir")
        for name in files { f.files[name] = [] }
        switch expected {
        case "single": #expect(try CheckpointFolderLayout.detect(in: f) == .single(weights: "model.safetensors"))
        case "sharded": #expect(try CheckpointFolderLayout.detect(in: f) == .sharded(index: "model.safetensors.index.json"))
        case "adapter": #expect(try CheckpointFolderLayout.detect(in: f) == .adapter(weights: "adapter_model.safetensors", config: "adapter_config.json"))
        case "adapter.bin": #expect(try CheckpointFolderLayout.detect(in: f) == .adapter(weights: "adapter_model.bin", config: "adapter_config.json"))
        default:
            let e = try #require(throws: TesseraError.self) { try CheckpointFolderLayout.detect(in: f) }
            #expect(e.description.contains(expected) && e.message.hasPrefix("dir") && !e.description.contains("\n"), "\(e)")
        }
    }

    @Test func formatsAreToldFromBytes() throws {
        var c: [UInt8] = [16, 0, 0, 0, 0, 0, 0, 0] + Array(#"{"a":1}         "#.utf8)
        #expect(CheckpointFileFormat.detect(prefix: c) == .safetensors)
        c = Array("tessera-manifest 1\n".utf8)
        #expect(CheckpointFileFormat.detect(prefix: c) == .tesseraManifest)
        #expect(CheckpointFileFormat.detect(prefix: Array("GGUF\u{3}\0\0\0".utf8)) == .gguf)
        #expect(CheckpointFileFormat.detect(prefix: [0x50, 0x4B, 0x03, 0x04, 0, 0]) == .zip)
        #expect(CheckpointFileFormat.detect(prefix: [0x80, 0x02, 0x7D, 0x71]) == .pickle)
        #expect(CheckpointFileFormat.detect(prefix: Array("  \n{\"weight_map\": {}".utf8)) == .json)
        #expect(CheckpointFileFormat.detect(prefix: []) == .empty)
        #expect(CheckpointFileFormat.detect(prefix: Array("hello".utf8)) == .unknown)
        // An index file read as a safetensors length is 8387229874382703227 bytes: it is JSON, not a broken checkpoint.
        #expect(CheckpointFileFormat.detect(prefix: Array("{\n  \"metadata\": {".utf8)) == .json)
        for f in [CheckpointFileFormat.zip, .pickle, .empty, .unknown] {
            let e = try #require(CheckpointFileFormat.unsupportedError(f, file: "x"))
            #expect(e.message.hasPrefix("x "))
        }
    }

    @Test func diskFoldersListRegularFilesAndBoundReads() throws {
        let dir = try ScratchFolder()
        try Data("{}".utf8).write(to: URL(fileURLWithPath: dir.file("config.json")))
        try FileManager.default.createDirectory(atPath: dir.file("sub"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.file("model.safetensors"), withDestinationPath: dir.file("config.json"))
        let folder = DiskCheckpointFolder(directory: dir.path) { _ in throw TesseraError(.notFound, "unused") }
        #expect(try folder.fileNames() == ["config.json", "model.safetensors"])
        #expect(try folder.read("config.json", limit: 2) == Array("{}".utf8))
        #expect(throws: TesseraError.self) { try folder.read("config.json", limit: 1) }
        #expect(throws: TesseraError.self) { try folder.read("sub", limit: 100) }
        #expect(throws: TesseraError.self) { try folder.read("absent", limit: 100) }
    }
}

@Suite struct CheckpointOutputTests {
    func tensor(_ n: Int, _ v: Float = 1) throws -> RawTensor { try RawTensor(floats: [Float](repeating: v, count: n), shape: [n], dtype: .f32) }

    @Test func targetsAreFilesOrFolders() throws {
        let dir = try ScratchFolder()
        #expect(try CheckpointOutputTarget.resolve(dir.file("m.safetensors")) == .file(dir.file("m.safetensors")))
        #expect(try CheckpointOutputTarget.resolve(dir.file("merged-model")) == .folder(dir.file("merged-model")))
        #expect(try CheckpointOutputTarget.resolve(dir.file("llama-3.1-merge")) == .folder(dir.file("llama-3.1-merge")))
        #expect(try CheckpointOutputTarget.resolve(dir.file("out/")) == .folder(dir.file("out/")))
        #expect(try CheckpointOutputTarget.resolve(dir.path) == .folder(dir.path))  // an empty folder
        for bad in ["model.bin", "model.gguf", "model.pt", "config.json"] {
            #expect(throws: TesseraError.self) { try CheckpointOutputTarget.resolve(dir.file(bad)) }
        }
        try FileManager.default.createDirectory(atPath: dir.file("x.safetensors"), withIntermediateDirectories: true)
        #expect(try CheckpointOutputTarget.resolve(dir.file("x.safetensors")) == .folder(dir.file("x.safetensors")))
    }

    @Test func whatTesseraDidNotWriteIsNeverReplaced() throws {
        let dir = try ScratchFolder()
        try SafetensorsWriter.write(tensors: [("a", try tensor(2))], metadata: [("format", "pt")], to: dir.file("user.safetensors"))
        try Data("text".utf8).write(to: URL(fileURLWithPath: dir.file("notes.safetensors")))
        try FileManager.default.createSymbolicLink(atPath: dir.file("link"), withDestinationPath: dir.path)
        try FileManager.default.createDirectory(atPath: dir.file("folder"), withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: dir.file("folder/important.txt")))
        for name in ["user.safetensors", "notes.safetensors", "link", "folder"] {
            let e = try #require(throws: TesseraError.self) { try CheckpointOutputTarget.resolve(dir.file(name)) }
            #expect(e.code == .conflict && e.message.contains("nothing was written"), "\(e)")
        }
        // A card that does not list a file does not make the folder tessera's.
        let card = ModelCard(title: "t", baseModels: [], libraryName: "transformers", summary: "s", inputs: [], parameters: nil, configYAML: "a: 1")
        try Data(card.render(files: ["model.safetensors", "README.md"]).utf8).write(to: URL(fileURLWithPath: dir.file("folder/README.md")))
        #expect(throws: TesseraError.self) { try CheckpointOutputTarget.resolve(dir.file("folder")) }
        try FileManager.default.removeItem(atPath: dir.file("folder/important.txt"))
        #expect(try CheckpointOutputTarget.replaceableFolderFiles(dir.file("folder")) == ["README.md"])
    }

    @Test func foldersAreShardedAtTheLimitAsTransformersShards() throws {
        let dir = try ScratchFolder()
        // 40-byte tensors; limit 100: [a, b], then c alone would overflow with d: [c, d], then a 200-byte tensor on
        // its own, then [f].
        let w = try CheckpointOutputWriter(target: .folder(dir.file("out")), maxShardSize: 100, headerReserve: 256)
        for (name, n) in [("a", 10), ("b", 10), ("c", 10), ("d", 10), ("big", 50), ("f", 1)] { try w.append(name, try tensor(n)) }
        let result = try w.finish(metadata: [("tessera.merge.format", "1")], sideFiles: [("config.json", Array("{}".utf8))]) {
            ModelCard(title: "out", baseModels: ["org/m"], libraryName: "transformers", summary: "made", inputs: [("model", "a")],
                      parameters: nil, configYAML: "merge_method: linear").render(files: $0)
        }
        let shards = (1...4).map { "model-0000\($0)-of-00004.safetensors" }
        #expect(result.files == shards + ["model.safetensors.index.json", "config.json", "README.md"])
        #expect(dir.list("out") == (["README.md", "config.json"] + shards + ["model.safetensors.index.json"]))
        #expect(dir.list() == ["out"], "nothing left beside the output")
        let index = try ShardIndex.parse(Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("out/model.safetensors.index.json")))), file: "index")
        #expect(index.totalSize == 4 * 91)
        let byTensor = Dictionary(uniqueKeysWithValues: index.weightMap.map { ($0.tensor, $0.shard) })
        #expect(byTensor == ["a": shards[0], "b": shards[0], "c": shards[1], "d": shards[1], "big": shards[2], "f": shards[3]])
        let source = try CheckpointFolderLayout.detect(in: DiskCheckpointFolder(directory: dir.file("out")) { try StreamingSafetensorsSource(path: $0) })
            .open(in: DiskCheckpointFolder(directory: dir.file("out")) { try StreamingSafetensorsSource(path: $0) })
        #expect(source.tensorNames == ["a", "b", "c", "d", "big", "f"])
        #expect(source.metadata.contains { $0 == ("format", "pt") } && source.metadata.contains { $0 == ("tessera.merge.format", "1") })
        let card = try String(contentsOfFile: dir.file("out/README.md"), encoding: .utf8)
        #expect(ModelCard.filesWritten(byCard: card) == result.files)
        // Written again, unsharded: the old shards and index go (the card listed them); nothing is left aside.
        let again = try CheckpointOutputWriter(target: try CheckpointOutputTarget.resolve(dir.file("out")), maxShardSize: 1000, headerReserve: 256)
        try again.append("a", try tensor(10, 2))
        try again.finish(metadata: []) { ModelCard(title: "out", baseModels: [], libraryName: "transformers", summary: "s", inputs: [],
                                                   parameters: nil, configYAML: "x: 1").render(files: $0) }
        #expect(dir.list("out") == ["README.md", "model.safetensors"])
        #expect(dir.list() == ["out"])
    }

    @Test func aFailedOrAbandonedWriteLeavesNothing() throws {
        let dir = try ScratchFolder()
        do {
            let w = try CheckpointOutputWriter(target: .folder(dir.file("out")), maxShardSize: 100, headerReserve: 256)
            try w.append("a", try tensor(40))
            try w.append("b", try tensor(40))
            #expect(throws: TesseraError.self) { try w.append("a", try tensor(1)) }
        }
        #expect(dir.list() == [])
        do {
            let w = try CheckpointOutputWriter(target: .file(dir.file("m.safetensors")), headerReserve: 256)
            try w.append("a", try tensor(4))
        }
        #expect(dir.list() == [])
    }

    @Test func aFileAddedToTheFolderMeanwhileStopsTheSwap() throws {
        let dir = try ScratchFolder()
        let w = try CheckpointOutputWriter(target: .folder(dir.file("out")), headerReserve: 256)
        try w.append("a", try tensor(4))
        try FileManager.default.createDirectory(atPath: dir.file("out"), withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: dir.file("out/mine.txt")))
        #expect(throws: TesseraError.self) { try w.finish(metadata: []) }
        #expect(dir.list("out") == ["mine.txt"])
    }

    @Test func fileOutputsReplaceOnlyTesseraFiles() throws {
        let dir = try ScratchFolder()
        let path = dir.file("m.safetensors")
        let first = try CheckpointOutputWriter(target: try CheckpointOutputTarget.resolve(path), headerReserve: 256)
        try first.append("a", try tensor(4, 1))
        try first.finish(metadata: [("tessera.merge.format", "1")])
        let second = try CheckpointOutputWriter(target: try CheckpointOutputTarget.resolve(path), headerReserve: 256)
        try second.append("a", try tensor(4, 2))
        try second.finish(metadata: [("tessera.merge.format", "1")])
        #expect(try StreamingSafetensorsSource(path: path).floats("a") == [2, 2, 2, 2])
        #expect(dir.list() == ["m.safetensors"])
    }

    @Test func sizesParseAsTransformersWritesThem() throws {
        #expect(try parseByteSize("5GB") == 5_000_000_000)
        #expect(try parseByteSize("500MB") == 500_000_000)
        #expect(try parseByteSize("2GiB") == 2 << 30)
        #expect(try parseByteSize("1.5KB") == 1500)
        #expect(try parseByteSize("4096") == 4096)
        for bad in ["", "GB", "-1GB", "0", "1e30", "nan", "5 apples"] {
            #expect(throws: TesseraError.self) { try parseByteSize(bad) }
        }
    }
}

@Suite struct ModelCardTests {
    @Test func cardsRoundTripTheirFileListAndQuoteWhatYAMLWouldMisread() throws {
        let card = ModelCard(title: "merged", baseModels: ["org/a", "true"], libraryName: "transformers", summary: "made by merging",
                             inputs: [("base model", "HEAD:base"), ("model", "ft")],
                             parameters: .object([("density", .double(0.5)), ("weights", .array([.double(1), .double(0.5)]))]),
                             configYAML: "merge_method: ties\n")
        let text = card.render(files: ["model.safetensors", "config.json", "README.md"])
        #expect(text.hasPrefix("---\nbase_model:\n- org/a\n- \"true\"\nlibrary_name: transformers\ntags:\n- merge\n- tessera\n---\n# merged\n"))
        #expect(text.contains("density: 0.5\nweights: [1, 0.5]\n"))
        #expect(text.contains("```yaml\nmerge_method: ties\n```"))
        #expect(ModelCard.filesWritten(byCard: text) == ["model.safetensors", "config.json", "README.md"])
        #expect(ModelCard.filesWritten(byCard: "# My model\n") == nil)
        // A card whose list names a path outside its folder is not tessera's.
        let forged = text.replacingOccurrences(of: "\"config.json\"", with: "\"../config.json\"")
        #expect(ModelCard.filesWritten(byCard: forged) == nil)
        #expect(YAMLText.scalar("1.5") == "\"1.5\"" && YAMLText.scalar("a: b") == "\"a: b\"" && YAMLText.scalar("models/a") == "models/a")
        #expect(YAMLText.scalar("HEAD~1:m") == "\"HEAD~1:m\"" && YAMLText.scalar("null") == "\"null\"" && YAMLText.scalar("") == "\"\"")
    }

    @Test func hubIDsAreOrgSlashName() {
        #expect(ModelCard.hubID("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B")
        for local in ["/home/me/model", "./model", "a/b/c", "model", "../x/y", "a/", "org/na me"] { #expect(ModelCard.hubID(local) == nil, "\(local)") }
    }

    @Test func blockYAMLNestsListsOfMappings() {
        let v = JSONValue.object([("merge_method", .string("ties")), ("models", .array([
            .object([("model", .string("a")), ("parameters", .object([("weight", .double(1))]))]),
            .object([("model", .string("b"))]),
        ])), ("dtype", .string("float16"))])
        #expect(YAMLText.block(v) == "merge_method: ties\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n  - model: b\ndtype: float16\n")
    }
}
