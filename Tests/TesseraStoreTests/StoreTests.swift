import Foundation
import Testing
import TesseraCore
import TesseraStore
import TesseraIO
import TesseraTestSupport

@Suite struct ObjectStoreTests {
    @Test func sha256MatchesTheStandardVectors() {
        #expect(SHA256Hasher.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256Hasher.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func putReadVerifyAndDedup() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let floats = (0..<300_000).map { Float($0 % 977) * 0.001 - 0.3 }  // > one 1 MiB chunk
        let raw = floats.withUnsafeBytes { Array($0) }
        let rawSHA = SHA256Hasher.hex(raw)
        let encoder = ObjectEncoder()
        let stored = try raw.withUnsafeBytes { try store.put(raw: $0, rawSHA256: rawSHA, width: 4, encoder: encoder) }
        #expect(stored.encoding == "bg4+zstd")
        // The object id is the SHA-256 of the object file: what git-lfs uses as the oid.
        let file = try Data(contentsOf: URL(fileURLWithPath: store.objectPath(stored.objectID)))
        #expect(SHA256Hasher.hex(Array(file)) == stored.objectID)
        #expect(file.count == stored.objectSize && file.count < raw.count)
        #expect(try store.readAll(stored.objectID) == raw)
        // Same raw value again: no new object.
        let again = try raw.withUnsafeBytes { try store.put(raw: $0, rawSHA256: rawSHA, width: 4, encoder: encoder) }
        #expect(again == stored)
        #expect(store.allObjectIDs() == [stored.objectID])
    }

    @Test func xorDeltaRoundTrips() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = (0..<100_000).map { sin(Float($0)) * 0.02 }
        let b = a.enumerated().map { $1 + 1e-5 * cos(Float($0)) }
        let ra = a.withUnsafeBytes { Array($0) }, rb = b.withUnsafeBytes { Array($0) }
        let enc = ObjectEncoder()
        let sa = try ra.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex(ra), width: 4, encoder: enc) }
        let sb = try rb.withUnsafeBytes { r in try ra.withUnsafeBytes { base in
            try store.put(raw: r, rawSHA256: SHA256Hasher.hex(rb), choice: EncodingPolicy.Choice(codec: XORDeltaCodec.self, width: 4, dependencies: [sa]),
                          dependencyRaw: [base], encoder: enc)
        } }
        #expect(sb.encoding.hasPrefix("xor+bg4+zstd@\(sa.objectID):"))
        #expect(sb.objectSize < sa.objectSize)
        #expect(try store.readAll(sb.objectID) == rb)
    }

    @Test func corruptionIsDetected() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let raw = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        let s = try raw.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex(raw), width: 1, encoder: ObjectEncoder()) }
        let path = store.objectPath(s.objectID)
        chmod(path, 0o644)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[10] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: path))
        #expect(throws: TesseraError.self) { try store.verify(s.objectID) }
        try Data(bytes.prefix(20)).write(to: URL(fileURLWithPath: path))
        #expect(throws: TesseraError.self) { try store.verify(s.objectID) }
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        #expect(throws: TesseraError.self) { try store.verify(s.objectID) }
        try FileManager.default.removeItem(atPath: path)
        do { try store.verify(s.objectID); Issue.record("missing object verified") } catch let e as TesseraError { #expect(e.code == .objectMissing) }
    }

    @Test func cleanerStreamsAnyPieceSizesToTheSameManifestAndReconstructsExactly() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Unsorted header keys, padding between tensors, trailing bytes.
        let a = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 3) }, b = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 5) }
        let json = #"{"b":{"dtype":"BF16","shape":[500],"data_offsets":[4104,5104]},"a":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}"#
        var file: [UInt8] = []
        var n = UInt64(json.utf8.count)
        for _ in 0..<8 { file.append(UInt8(n & 0xFF)); n >>= 8 }
        file += Array(json.utf8) + a + [9, 9, 9, 9, 9, 9, 9, 9] + b + Array("trailing".utf8)
        var manifests: [[UInt8]] = []
        for piece in [1, 7, 4096, 1 << 20] {
            let c = CheckpointCleaner(store: store, fileName: "f.safetensors")
            var k = 0
            while k < file.count {
                let e = min(k + piece, file.count)
                try file[k..<e].withUnsafeBytes { try c.consume($0) }
                k = e
            }
            manifests.append(try c.finish())
        }
        #expect(Set(manifests).count == 1)
        let m = try Manifest.parse(String(decoding: manifests[0], as: UTF8.self))
        #expect(m.tensors.map(\.name) == ["a", "b"])
        var out: [UInt8] = []
        try store.reconstruct(m, file: "f") { out += $0 }
        #expect(out == file)
    }

    @Test func nonCheckpointsAreStoredWholeAndManifestsPassThrough() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for content in [Array("hello".utf8), [], (0..<200_000).map { UInt8(truncatingIfNeeded: $0) }] {
            let c = CheckpointCleaner(store: store, fileName: "x.bin")
            try content.withUnsafeBytes { try c.consume($0) }
            let manifest = try c.finish()
            let m = try Manifest.parse(String(decoding: manifest, as: UTF8.self))
            #expect(m.format == .opaque)
            var out: [UInt8] = []
            try store.reconstruct(m, file: "x") { out += $0 }
            #expect(out == content)
            // Cleaning the staged manifest gives it back (clean is idempotent on a file git never smudged).
            let again = CheckpointCleaner(store: store, fileName: "x.bin", stagedManifest: manifest)
            try manifest.withUnsafeBytes { try again.consume($0) }
            #expect(try again.finish() == manifest)
            // Any other manifest text is a file like any other: stored whole, given back as it was.
            let other = CheckpointCleaner(store: store, fileName: "y.bin")
            try manifest.withUnsafeBytes { try other.consume($0) }
            let wrapped = try Manifest.parse(String(decoding: try other.finish(), as: UTF8.self))
            #expect(wrapped.format == .opaque)
            var text: [UInt8] = []
            try store.reconstruct(wrapped, file: "y") { text += $0 }
            #expect(text == manifest)
        }
    }

    /// Objects written in a batch are flushed together at commit (one file-system flush, not one per object): until
    /// then none is visible in objects/, only temporary files; after it every one reads back; an abandoned batch
    /// leaves nothing, not even its temporary files.
    @Test func aBatchMakesItsObjectsVisibleOnlyWhenCommitted() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func values(_ seed: UInt8) -> [[UInt8]] {
            // One over the write-behind threshold, two under it.
            [(0..<(300 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }, [seed, 1, 2, 3], Array(repeating: seed, count: 5000)]
        }
        let temporaries = { (try? FileManager.default.contentsOfDirectory(atPath: store.tmpDirectory).count) ?? -1 }
        for commits in [true, false] {
            let batch = ObjectBatch(store: store)
            let encoder = ObjectEncoder()
            let input = values(commits ? 7 : 9)
            let stored = try input.map { v in
                try v.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 1, encoder: encoder, batch: batch) }
            }
            for s in stored { #expect(!store.contains(s.objectID), "visible before the batch is committed") }
            #expect(temporaries() == stored.count)
            if commits {
                try batch.commit()
                for (s, v) in zip(stored, input) {
                    #expect(try store.readAll(s.objectID, expectedLength: v.count, expectedRawSHA256: s.rawSHA256) == v)
                    #expect(store.lookup(rawSHA256: s.rawSHA256)?.objectID == s.objectID)
                }
            } else {
                batch.abandon()
                for s in stored { #expect(!store.contains(s.objectID)) }
            }
            #expect(temporaries() == 0)
        }
    }
}
