import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraRepository
import TesseraStore
import TesseraTestSupport

/// The input-hash cache of merges: hashes remembered for an unchanged file, and never trusted once the file changed,
/// the entry is damaged, or the file had not settled when it was read.
@Suite struct TensorHashCacheTests {
    /// Hashes of every tensor of `file`, through a resolver using `cache`, as a merge's provenance asks for them.
    static func hashes(_ file: String, cache: TensorHashCache, in s: Sandbox) throws -> [String: String] {
        let resolver = CheckpointResolver(directory: s.path("."), hashCache: cache)
        defer { resolver.finish() }
        let source = try resolver.source(file)
        var out: [String: String] = [:]
        for name in source.tensorNames { out[name] = resolver.tensorHash(source, name) }
        return out
    }

    /// The SHA-256 of each tensor's bytes, computed here from the checkpoint the test wrote.
    static func expected(_ checkpoint: TestCheckpoint) -> [String: String] {
        Dictionary(uniqueKeysWithValues: checkpoint.entries.map { ($0.name, SHA256Hasher.hex($0.bytes)) })
    }

    /// A small model file whose hashes were read once through a cache that remembers at once: the file, the model,
    /// the cache and its one entry.
    static func remembered(in s: Sandbox) throws -> (String, TestCheckpoint, TensorHashCache, String) {
        let file = s.path("model.safetensors")
        let model = smallModel(layers: 2)
        try model.write(to: file)
        let cache = TensorHashCache(directory: s.path("cache"), settledInterval: 0)
        #expect(try Self.hashes(file, cache: cache, in: s) == Self.expected(model))
        let entries = FileSystem.list(cache.directory).filter { $0.hasSuffix(".json") }
        try #require(entries.count == 1)
        return (file, model, cache, cache.directory + "/" + entries[0])
    }

    @Test func remembersHashesOfAnUnchangedFileAndDropsThemWhenItChanges() throws {
        let s = try Sandbox()
        let (file, v1, cache, entry) = try Self.remembered(in: s)
        // The next read takes the hashes from the entry: an entry edited to another digest shows through.
        let name = v1.entries[0].name, real = Self.expected(v1)[name]!
        let edited = String(decoding: try FileSystem.readFile(entry), as: UTF8.self).replacingOccurrences(of: real, with: String(repeating: "a", count: 64))
        try FileSystem.writeAtomically(Array(edited.utf8), to: entry, tmpDir: s.path("."))
        #expect(try Self.hashes(file, cache: cache, in: s)[name] == String(repeating: "a", count: 64))

        // Rewritten (same size, other values): the stat data differ, the entry is not used.
        let v2 = smallModel(layers: 2, changed: [0])
        try v2.write(to: file)
        #expect(try Self.hashes(file, cache: cache, in: s) == Self.expected(v2))
        #expect(Self.expected(v2) != Self.expected(v1))
    }

    @Test func ignoresDamagedEntries() throws {
        let s = try Sandbox()
        let (file, model, cache, entry) = try Self.remembered(in: s)
        for damaged in ["{", "", "{\"format\":\"tessera-tensor-hashes 1\"}", String(repeating: "x", count: 300)] {
            try FileSystem.writeAtomically(Array(damaged.utf8), to: entry, tmpDir: s.path("."))
            #expect(try Self.hashes(file, cache: cache, in: s) == Self.expected(model))
        }
        // One tensor's digest that is not hex: the whole entry is refused.
        let real = Self.expected(model)[model.entries[1].name]!
        _ = try Self.hashes(file, cache: TensorHashCache(directory: s.path("cache2"), settledInterval: 0), in: s)
        let entry2 = s.path("cache2") + "/" + FileSystem.list(s.path("cache2"))[0]
        let text = String(decoding: try FileSystem.readFile(entry2), as: UTF8.self).replacingOccurrences(of: real, with: "zz" + real.dropFirst(2))
        try FileSystem.writeAtomically(Array(text.utf8), to: entry2, tmpDir: s.path("."))
        #expect(try Self.hashes(file, cache: TensorHashCache(directory: s.path("cache2"), settledInterval: 0), in: s) == Self.expected(model))
    }

    @Test func aFileChangedJustBeforeTheMergeIsNotRemembered() throws {
        let s = try Sandbox()
        let file = s.path("model.safetensors")
        let model = smallModel(layers: 2)
        try model.write(to: file)
        // The default interval: the file was written a moment ago, so a write in the same clock tick could go unseen.
        let cache = TensorHashCache(directory: s.path("cache"))
        #expect(try Self.hashes(file, cache: cache, in: s) == Self.expected(model))
        #expect(FileSystem.list(cache.directory).isEmpty)
    }

    @Test func aSecondMergeOfSettledInputsRecordsTheSameHashesFromTheCache() throws {
        let s = try Sandbox()
        let base = smallModel(layers: 2), a = smallModel(layers: 2, changed: [0]), b = smallModel(layers: 2, changed: [1])
        try base.write(to: s.path("base.safetensors"))
        try a.write(to: s.path("a.safetensors"))
        try b.write(to: s.path("b.safetensors"))
        // Past the default settling interval, so that the merge command remembers its inputs' hashes.
        Thread.sleep(forTimeInterval: 2.2)
        let cache = s.path("xdg")
        func merge(_ out: String) throws -> String {
            try s.run("XDG_CACHE_HOME=\(cache) \"$T\" merge --method ties --base base.safetensors a.safetensors b.safetensors -o \(out) >/dev/null")
            return try #require(try Checkpoints.metadata(s.path(out))["tessera.merge.input_hashes"])
        }
        let first = try merge("m1.safetensors")
        #expect(FileSystem.list(cache + "/tessera/tensor-hashes").count == 3)
        let second = try merge("m2.safetensors")
        #expect(first == second)
        for model in [base, a, b] {
            for (name, hash) in Self.expected(model) { #expect(first.contains("\"\(name)\":\"\(hash)\"")) }
        }
        #expect(try Checkpoints.tensors(s.path("m1.safetensors")) == Checkpoints.tensors(s.path("m2.safetensors")))
    }
}
