import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraStore
import TesseraTestSupport

/// GGUF, PyTorch zip checkpoints and NumPy .npz split per tensor by the cleaner (issue 12, item 6): byte-exact
/// reconstruction whatever the packet sizes, what each format's manifest holds, what identical content shares, and
/// hostile files refused with one line.
@Suite struct FormatLayoutTests {
    static let formats = PackagePaths.fixtures + "/formats"

    static func fixture(_ name: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: "\(formats)/\(name)"))) }

    /// Cleans `bytes` fed in packets of `piece` bytes; returns the manifest and why it was stored whole, if it was.
    func clean(_ bytes: [UInt8], name: String, store: ObjectStore, piece: Int = 4096) throws -> (Manifest, String?) {
        let c = CheckpointCleaner(store: store, fileName: name)
        do {
            var at = 0
            while at < bytes.count {
                let n = min(piece, bytes.count - at)
                try bytes[at..<(at + n)].withUnsafeBytes { try c.consume($0) }
                at += n
            }
            let text = try c.finish()
            return (try Manifest.parse(String(decoding: text, as: UTF8.self), file: name), c.storedWholeReason)
        } catch {
            c.abandon()
            throw error
        }
    }

    func reconstructed(_ m: Manifest, store: ObjectStore) throws -> [UInt8] {
        var out: [UInt8] = []
        try store.reconstruct(m, file: "f") { out += $0 }
        return out
    }

    static let fixtures = ["torch_f32.pt", "torch_f16_bf16.pt", "torch_shared.pt", "torch_nested.pt", "torch_not_tensors.pt",
                           "torch_legacy.pt", "arrays.npz", "arrays_compressed.npz", "tiny_f16.gguf", "tiny_q8_0.gguf",
                           "tiny_q4_0.gguf", "tiny_q4_1.gguf", "tiny_q5_0.gguf", "tiny_q4_k.gguf", "tiny_q6_k.gguf"]

    @Test(arguments: fixtures) func everyFixtureReconstructsExactlyWhateverThePacketSizes(_ name: String) throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try Self.fixture(name)
        var manifests: [String] = []
        for piece in [1, 7, 333, 4096, 1 << 20] {
            let (m, _) = try clean(file, name: name, store: store, piece: piece)
            #expect(try reconstructed(m, store: store) == file, "\(name) in packets of \(piece) bytes")
            manifests.append(m.render())
        }
        #expect(Set(manifests).count == 1, "the manifest depends on the packet size")
    }

    @Test func eachFormatIsSplitIntoItsTensors() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func manifest(_ name: String) throws -> (Manifest, String?) { try clean(try Self.fixture(name), name: name, store: store) }

        let (f32, _) = try manifest("torch_f32.pt")
        #expect(f32.format == .pytorch)
        #expect(f32.tensors.map(\.name) == ["embed.weight", "layers.0.weight", "layers.0.bias", "norm.weight"])
        #expect(f32.tensors.map(\.shape) == [[16, 8], [8, 8], [8], [8]])
        let (mixed, _) = try manifest("torch_f16_bf16.pt")
        #expect(mixed.tensors.map(\.dtype) == [.f16, .bf16, .i64, .bool])
        // A storage backing several tensors is one segment named after all of them, with its element count.
        let (shared, _) = try manifest("torch_shared.pt")
        #expect(shared.tensors.map(\.name) == ["embed.weight,lm_head.weight", "rows,transposed", "param", "alone"])
        #expect(shared.tensors.map(\.shape) == [[128], [24], [3, 3], [4]])
        let (nested, _) = try manifest("torch_nested.pt")
        #expect(nested.tensors.map(\.name) == ["state_dict.encoder.w", "state_dict.encoder.b", "state_dict.head.w"])
        // Not a dictionary of tensors, and the pre-1.6 format: stored whole, the first with its reason.
        let (other, reason) = try manifest("torch_not_tensors.pt")
        #expect(other.format == .opaque && reason?.contains("'epoch' holds an int") == true)
        #expect(try manifest("torch_legacy.pt").0.format == .opaque)

        // np.savez: plain arrays per tensor; Fortran-order and big-endian arrays stored whole.
        let (npz, _) = try manifest("arrays.npz")
        #expect(npz.format == .npz)
        #expect(npz.tensors.map(\.name) == ["w", "h", "steps", "mask"])
        #expect(npz.segments.filter { if case .blob = $0 { return true }; return false }.count == 2)
        // np.savez_compressed: every entry whole, not an error.
        let (compressed, _) = try manifest("arrays_compressed.npz")
        #expect(compressed.format == .npz && compressed.tensors.isEmpty)
        #expect(compressed.segments.filter { if case .blob = $0 { return true }; return false }.count == 6)

        // GGUF: the quantised blocks as they are, typed by their GGML name, shape in GGUF order.
        for (file, type) in [("tiny_q8_0.gguf", "Q8_0"), ("tiny_q4_0.gguf", "Q4_0"), ("tiny_q4_1.gguf", "Q4_1"), ("tiny_q5_0.gguf", "Q5_0"),
                             ("tiny_q4_k.gguf", "Q4_K"), ("tiny_q6_k.gguf", "Q6_K"), ("tiny_f16.gguf", "F16")] {
            let (g, _) = try manifest(file)
            #expect(g.format == .gguf)
            let typed = g.typedTensors
            #expect(typed.map(\.name) == ["blk.0.attn_norm.weight", "output_norm.weight", "token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight"])
            #expect(typed.map { "\($0.type)" } == ["F32", "F32", type, type, type], "\(file)")
            #expect(typed[2].shape == [256, 12])
            // The manifest text says so and parses back to the same manifest.
            #expect(g.render().contains("tensor token_embd.weight \(type) [256,12] "))
            #expect(try Manifest.parse(g.render()) == g)
        }
    }

    @Test func quantisationsOfOneModelShareTheirVocabularyAndNorms() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var vocabularies = Set<String>(), norms = Set<String>()
        for q in ["q8_0", "q4_0", "q4_k", "f16"] {
            let (m, _) = try clean(try Self.fixture("tiny_\(q).gguf"), name: q, store: store)
            // The largest header segment is the token list (300 strings): the same object in every file.
            let headers = m.segments.compactMap { s -> (Int, String)? in
                if case let .header(b, e, st) = s { return (e - b, st.objectID) }
                return nil
            }
            vocabularies.insert(try #require(headers.max { $0.0 < $1.0 }).1)
            for t in m.tensors where t.name.hasSuffix("norm.weight") { norms.insert(t.stored.objectID) }
        }
        #expect(vocabularies.count == 1)
        #expect(norms.count == 2)
    }

    @Test func oneMetadataChangeStoresOnlyTheSmallHeaderRunThatHoldsIt() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try Self.fixture("tiny_q8_0.gguf")
        let (before, _) = try clean(file, name: "a.gguf", store: store)
        let objects = Set(store.allObjectIDs())
        // general.name "tiny" → "tinz": same length; and a longer name, which moves everything after it.
        var renamed = file
        let at = try #require(findBytes(renamed, Array("general.name".utf8)))
        renamed[at + 12 + 4 + 8 + 3] = UInt8(ascii: "z")
        let (after, _) = try clean(renamed, name: "a.gguf", store: store)
        let added = Set(store.allObjectIDs()).subtracting(objects)
        #expect(added.count == 1)
        let changed = zip(before.segments, after.segments).filter { $0.0 != $0.1 }
        #expect(changed.count == 1)
        if case let .header(b, e, _)? = changed.first?.1 { #expect(e - b < 1024) } else { Issue.record("the changed segment is not a header") }
        #expect(try reconstructed(after, store: store) == renamed)

        var longer = TestGGUF()
        longer.addString("general.name", "tiny")
        longer.addStringArray("tokenizer.ggml.tokens", (0..<200).map { "token\($0)" })
        longer.tensors = [("w", [32], 0, 0)]
        longer.data = (0..<128).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let (first, _) = try clean(longer.bytes(), name: "b.gguf", store: store)
        let objects2 = Set(store.allObjectIDs())
        longer.keyValues[0] = ("general.name", 8, TestGGUF.string("a much longer name"))
        let second = longer.bytes()
        let (m2, _) = try clean(second, name: "b.gguf", store: store)
        #expect(Set(store.allObjectIDs()).subtracting(objects2).count == 1)
        #expect(first.tensors.map(\.stored) == m2.tensors.map(\.stored))
        #expect(try reconstructed(m2, store: store) == second)
    }

    func findBytes(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
        return nil
    }

    // MARK: - Hostile files

    /// Cleaning must fail with one line, and must not crash.
    func expectRefused(_ bytes: [UInt8], name: String, _ needle: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for piece in [5, 4096] {
            do {
                let (m, _) = try clean(bytes, name: name, store: store, piece: piece)
                Issue.record("accepted: \(m.render().prefix(300))", sourceLocation: sourceLocation)
            } catch let e as TesseraError {
                #expect(e.message.contains(needle), "\(e.message)", sourceLocation: sourceLocation)
                #expect(!e.message.contains("\n"), sourceLocation: sourceLocation)
            }
        }
    }

    func smallGGUF() -> TestGGUF {
        var g = TestGGUF()
        g.addString("general.name", "x")
        g.tensors = [("a", [8], 0, 0), ("b", [32], 8, 32)]   // F32 [8] at 0, Q8_0 [32] (34 bytes) at 32
        g.data = [UInt8](repeating: 1, count: 32) + [UInt8](repeating: 2, count: 34)
        return g
    }

    @Test func aWellFormedHandWrittenGGUFIsAccepted() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bytes = smallGGUF().bytes()
        let (m, _) = try clean(bytes, name: "g.gguf", store: store)
        #expect(m.typedTensors.map { "\($0.name) \($0.type)" } == ["a F32", "b Q8_0"])
        #expect(try reconstructed(m, store: store) == bytes)
    }

    @Test func ggufsWhoseCountsOrOffsetsLieAreRefused() throws {
        var g = smallGGUF()
        g.declaredTensorCount = 5
        try expectRefused(g.bytes(), name: "count.gguf", "invalid GGUF")
        g = smallGGUF()
        g.declaredKeyCount = 1 << 40
        try expectRefused(g.bytes(), name: "keys.gguf", "metadata keys")
        g = smallGGUF()
        g.tensors[1].offset = 1 << 20   // beyond the file
        try expectRefused(g.bytes(), name: "far.gguf", "truncated")
        g = smallGGUF()
        g.tensors[1].offset = 0         // on top of tensor a
        try expectRefused(g.bytes(), name: "overlap.gguf", "overlaps")
        g = smallGGUF()
        g.tensors[1].offset = 33        // not aligned
        try expectRefused(g.bytes(), name: "align.gguf", "alignment")
        g = smallGGUF()
        g.tensors[0].dims = [1 << 40, 1 << 40]
        try expectRefused(g.bytes(), name: "dims.gguf", "cannot have shape")
        g = smallGGUF()
        g.tensors[1].dims = [33]        // not whole Q8_0 blocks
        try expectRefused(g.bytes(), name: "blocks.gguf", "cannot have shape")
        // Truncated inside the header and inside the data.
        let whole = smallGGUF().bytes()
        try expectRefused(Array(whole.prefix(40)), name: "cut1.gguf", "invalid GGUF")
        try expectRefused(Array(whole.dropLast(10)), name: "cut2.gguf", "truncated")
        // An unknown GGML type is not refused: the file is stored whole.
        g = smallGGUF()
        g.tensors[1].type = 4
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (m, reason) = try clean(g.bytes(), name: "old.gguf", store: store)
        #expect(m.format == .opaque && reason?.contains("GGML type 4") == true)
    }

    static func torchPickle() -> [UInt8] {
        TestPickle.floatTensorDict([("w", "0", 4, [2, 2], [2, 1], 0)])
    }

    @Test func handWrittenTorchZipsAreSplitAndLyingOnesRefused() throws {
        let storage = (0..<16).map { UInt8($0) }
        let good = TestZip([.init("archive/data.pkl", Self.torchPickle(), descriptor: true), .init("archive/version", Array("3\n".utf8), descriptor: true),
                            .init("archive/data/0", storage, descriptor: true)])
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (m, _) = try clean(good.bytes(), name: "m.pt", store: store, piece: 3)
        #expect(m.format == .pytorch && m.tensors.map(\.name) == ["w"] && m.tensors.first?.shape == [2, 2])
        #expect(try reconstructed(m, store: store) == good.bytes())

        // The central directory disagrees with the local header about a size.
        var lying = TestZip([.init("archive/data.pkl", Self.torchPickle()), .init("archive/data/0", storage)])
        lying.entries[1].centralSize = 12
        try expectRefused(lying.bytes(), name: "cd.pt", "disagree")
        // A zip64 size far beyond any file.
        var huge = TestZip([.init("archive/data.pkl", Self.torchPickle()), .init("archive/data/0", storage)])
        huge.entries[1].zip64LocalSize = 1 << 62
        try expectRefused(huge.bytes(), name: "zip64.pt", "declares")
        // The storage is shorter than the pickle says.
        let short = TestZip([.init("archive/data.pkl", Self.torchPickle()), .init("archive/data/0", Array(storage.prefix(8)))])
        try expectRefused(short.bytes(), name: "short.pt", "storage '0' holds 8 bytes")
        // Truncated before the central directory.
        try expectRefused(Array(good.bytes().prefix(200)), name: "cut.pt", "truncated")
        // A pickle that calls os.system: refused, naming it, whether written with GLOBAL or STACK_GLOBAL.
        let evil = TestPickle.proto2 + TestPickle.global("os", "system") + TestPickle.mark + TestPickle.unicode("touch /tmp/pwned") + TestPickle.tuple + TestPickle.reduce + TestPickle.stop
        try expectRefused(TestZip([.init("archive/data.pkl", evil), .init("archive/data/0", storage)]).bytes(), name: "evil.pt", "os.system")
        let stackGlobal = TestPickle.proto2 + TestPickle.unicode("builtins") + TestPickle.unicode("eval") + [0x93] + TestPickle.mark + TestPickle.unicode("1") + TestPickle.tuple + TestPickle.reduce + TestPickle.stop
        try expectRefused(TestZip([.init("archive/data.pkl", stackGlobal, descriptor: true)]).bytes(), name: "eval.pt", "builtins.eval")
    }

    @Test func anNpzWhoseArrayHeaderLiesIsStoredWholeNotMisread() throws {
        // The .npy header claims 100 float32 values; the entry holds 4.
        var npy: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        var text = Array("{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }".utf8)
        while (10 + text.count + 1) % 64 != 0 { text.append(0x20) }
        text.append(0x0A)
        npy += littleEndian(UInt16(text.count)) + text + [UInt8](repeating: 7, count: 16)
        let zip = TestZip([.init("x.npy", npy)]).bytes()
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (m, _) = try clean(zip, name: "a.npz", store: store)
        #expect(m.format == .npz && m.tensors.isEmpty)
        #expect(try reconstructed(m, store: store) == zip)
    }
}

/// TorchCheckpoint and NumpyArchive serve every tensor as torch / numpy wrote it: names, dtypes, shapes, and the
/// SHA-256 of the row-major bytes computed by the writers' own libraries (expected.json, from
/// scripts/make_format_fixtures.py): f32/f16/bf16/int/bool, shared storages, a slice, a transposed view, nesting.
@Suite struct TorchReaderTests {
    static let formats = PackagePaths.fixtures + "/formats"

    struct Expected: Decodable {
        let name: String
        let dtype: String
        let shape: [Int]
        let sha256: String
    }

    static func expected() throws -> [String: [Expected]] {
        try JSONDecoder().decode([String: [Expected]].self, from: Data(contentsOf: URL(fileURLWithPath: "\(formats)/expected.json")))
    }

    @Test(arguments: ["torch_f32.pt", "torch_f16_bf16.pt", "torch_shared.pt", "torch_nested.pt", "arrays.npz"])
    func tensorsEqualWhatTheWriterSaved(_ file: String) throws {
        let expected = try #require(try Self.expected()[file])
        let path = "\(TorchReaderTests.formats)/\(file)"
        let source: TensorSource = file.hasSuffix(".pt") ? try TorchCheckpoint(path: path) : try NumpyArchive(path: path)
        #expect(source.tensorNames == expected.map(\.name))
        for e in expected {
            let info = try #require(source.tensorInfo(e.name))
            #expect(info.dtype.rawValue == e.dtype && info.shape == e.shape, "\(e.name)")
            let t = try source.rawTensor(e.name)
            #expect(t.bytes.withUnsafeBytes { SHA256Hasher.hex($0) } == e.sha256, "\(file): \(e.name)")
        }
    }

}
