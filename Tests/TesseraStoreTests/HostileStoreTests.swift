import Foundation
import Testing
import TesseraCore
import TesseraStore
import TesseraIO
import TesseraTestSupport

/// Issue 8: objects, manifests and checkpoints built to hurt. Every case builds its hostile bytes here and expects one
/// clear error (never a crash, a hang or a wrong answer).
@Suite struct HostileStoreTests {
    /// A store holding one byte-grouped object and its raw bytes.
    func storeWithObject() throws -> (ObjectStore, String, Manifest.Stored, [UInt8]) {
        let (store, dir) = try temporaryStore()
        let floats = (0..<5000).map { Float($0 % 97) * 0.01 - 0.3 }
        let raw = floats.withUnsafeBytes { Array($0) }
        let stored = try raw.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 4, encoder: ObjectEncoder()) }
        return (store, dir, stored, raw)
    }

    /// Writes `bytes` into the store under their own SHA-256, as a hostile remote would; returns the id.
    func plant(_ bytes: [UInt8], in store: ObjectStore) throws -> String {
        let id = SHA256Hasher.hex(bytes)
        try FileManager.default.createDirectory(atPath: store.objectsDirectory + "/" + id.prefix(2), withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: store.objectPath(id)))
        return id
    }

    func objectBytes(_ store: ObjectStore, _ id: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: store.objectPath(id))))
    }

    @Test func trailerClaimingAHugeRawLengthIsCorruptNotAnAllocation() throws {
        let (store, dir, stored, _) = try storeWithObject()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var bytes = try objectBytes(store, stored.objectID)
        let at = bytes.count - ObjectTrailer.size + 64
        for claim: UInt64 in [1 << 63, 0xFFFF_FFFF_FFFF_FFFF, 1 << 40] {
            withUnsafeBytes(of: claim.littleEndian) { for k in 0..<8 { bytes[at + k] = $0[k] } }
            let id = try plant(bytes, in: store)
            #expect(throws: TesseraError.self) { try store.readAll(id) }
            #expect(throws: TesseraError.self) { try store.verify(id) }
            #expect(throws: TesseraError.self) { try store.readAll(id, into: try LargeBuffer(count: 20_000)) }
        }
    }

    @Test func everySingleBitFlipOfATrailerIsDetectedOrHarmless() throws {
        let (store, dir, stored, raw) = try storeWithObject()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let original = try objectBytes(store, stored.objectID)
        var detected = 0
        var harmless: Set<Int> = []
        for byte in (original.count - ObjectTrailer.size)..<original.count {
            for bit in 0..<8 {
                var flipped = original
                flipped[byte] ^= UInt8(1 << bit)
                let id = try plant(flipped, in: store)
                do {
                    // Decoding to the recorded bytes is fine only if they are the original ones.
                    #expect(try store.readAll(id) == raw)
                    harmless.insert(byte - (original.count - ObjectTrailer.size))
                } catch is TesseraError {
                    detected += 1
                }
                store.remove(id)
            }
        }
        // Every trailer field is checked (raw hash, base, length, encoding, width, magic, reserved bytes). The only
        // flips that decode are to the byte-grouping chunk size (offset 74) where the new size still holds the whole
        // 20,000-byte tensor in one chunk: the same bytes come out, verified against the raw hash.
        #expect(harmless.isSubset(of: [74]))
        #expect(detected >= ObjectTrailer.size * 8 - 8)
    }

    @Test func deltaWhoseBaseHasAnotherLengthOrIsADeltaIsRefused() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let encoder = ObjectEncoder()
        let a = (0..<4096).map { Float($0) * 0.001 }.withUnsafeBytes { Array($0) }
        var b = a
        b[0] ^= 1
        let baseStored = try a.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 4, encoder: encoder) }
        let delta = try b.withUnsafeBytes { nb in
            try a.withUnsafeBytes {
                try store.put(raw: nb, rawSHA256: SHA256Hasher.hex(nb), choice: EncodingPolicy.Choice(codec: XORDeltaCodec.self, width: 4, dependencies: [baseStored]),
                              dependencyRaw: [$0], encoder: encoder)
            }
        }
        #expect(delta.encoding.hasPrefix("xor+bg4+zstd@\(baseStored.objectID):"))
        #expect(try store.readAll(delta.objectID) == b)
        // The same delta pointing at a shorter base: refused before the base is read.
        let short = Array(a.prefix(1024))
        let shortBase = try short.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 4, encoder: encoder) }
        var bytes = try objectBytes(store, delta.objectID)
        let baseField = bytes.count - ObjectTrailer.size + 32
        bytes.replaceSubrange(baseField..<(baseField + 32), with: [UInt8](hex: shortBase.objectID)!)
        let hostile = try plant(bytes, in: store)
        let e = try #require(throws: TesseraError.self) { try store.readAll(hostile) }
        #expect(e.message.contains("different length"))
        // Pointing at another delta of the same length (a chain, but not the base it was encoded against): the
        // decoded bytes do not match the recorded raw value, refused too.
        bytes.replaceSubrange(baseField..<(baseField + 32), with: [UInt8](hex: delta.objectID)!)
        let chained = try plant(bytes, in: store)
        #expect(throws: TesseraError.self) { try store.readAll(chained) }
    }

    @Test func aFIFOOrADirectoryInThePlaceOfAnObjectIsAnErrorNotAHang() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifoID = String(repeating: "ab", count: 32), dirID = String(repeating: "cd", count: 32)
        try FileManager.default.createDirectory(atPath: store.objectsDirectory + "/ab", withIntermediateDirectories: true)
        #expect(mkfifo(store.objectPath(fifoID), 0o644) == 0)
        try FileManager.default.createDirectory(atPath: store.objectPath(dirID), withIntermediateDirectories: true)
        for id in [fifoID, dirID] {
            let e = try #require(throws: TesseraError.self) { try store.readAll(id) }
            #expect(e.message.contains("cannot read object") && e.message.contains("not a regular file"))
            guard case .unreadable = store.presence(id) else { Issue.record("\(id) should be unreadable"); continue }
        }
        #expect(store.presence(String(repeating: "ef", count: 32)) == .missing)
    }

    @Test func manifestEncodingsAreParsedStrictly() throws {
        let id = String(repeating: "a", count: 64)
        // Syntax: what could reach a path (dependency ids) or an allocation (sizes) is refused by the manifest itself.
        for bad in ["xor+bg4+zstd@../../../../etc/passwd:15", "xor+bg4+zstd@\(id):-1", "xor+bg4+zstd@\(id)", "xor+bg4+zstd@\(id.uppercased()):10",
                    "xor+bg4+zstd@\(id):10,", "BG4+zstd", "bg4 zstd", "", "bg4+zstd@\(id):99999999999999999999"] {
            #expect(throws: TesseraError.self, "\(bad)") { try ManifestEncoding(bad) }
            let text = "tessera-manifest 1\nformat opaque\nsize 4\nblob 0 4 \(bad) \(id) \(id) 100\nend\n"
            #expect(throws: TesseraError.self) { try Manifest.parse(text) }
        }
        #expect(try ManifestEncoding("xor+bg2+zstd@\(id):120").base?.id == id)
        // Names the codec registry does not know are not codecs (reading their objects says "upgrade tessera").
        for unknown in ["bg99+zstd", "bg+zstd", "zstd2", "xor+raw", "bg0+zstd"] {
            #expect(ObjectCodecs.codec(manifestName: unknown) == nil, "\(unknown)")
        }
        #expect(ObjectCodecs.codec(manifestName: "xor+bg4+zstd")?.width == 4)
        // Several dependencies: version 2 manifests only.
        let two = "xor+bg4+zstd@\(id):10,\(String(repeating: "b", count: 64)):12"
        #expect(try ManifestEncoding(two).dependencies.count == 2)
        #expect(throws: TesseraError.self) {
            try Manifest.parse("tessera-manifest 1\nformat opaque\nsize 4\nblob 0 4 \(two) \(id) \(id) 100\nend\n")
        }
        let v2 = try Manifest.parse("tessera-manifest 2\nformat opaque\nsize 4\nblob 4 \(two) \(id) \(id) 100\nend\n")
        #expect(v2.objectIDs == [id, String(repeating: "b", count: 64)])
        // A tensor line whose dtype and shape do not match its byte range.
        let text = "tessera-manifest 1\nformat safetensors\nsize 16\ntensor w F32 [1000000000000] 0 16 zstd \(id) \(id) 100\nend\n"
        let e = try #require(throws: TesseraError.self) { try Manifest.parse(text) }
        #expect(e.message.contains("larger than the file"))
        let text2 = "tessera-manifest 1\nformat safetensors\nsize 16\ntensor w F32 [3] 0 16 zstd \(id) \(id) 100\nend\n"
        let e2 = try #require(throws: TesseraError.self) { try Manifest.parse(text2) }
        #expect(e2.message.contains("spans 16 bytes"))
    }

    @Test func aManifestClaimingATerabyteFailsCleanlyOnCheckout() throws {
        let (store, dir, stored, _) = try storeWithObject()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let huge = 1_000_000_000_000
        let m = Manifest(format: .opaque, size: huge, segments: [.blob(begin: 0, end: huge, stored)])
        var received = 0
        let e = try #require(throws: TesseraError.self) { try store.reconstructConcurrently(m, file: "big.bin") { received += $0.count } }
        #expect(e.message.contains("where 1000000000000 are expected"))
        #expect(received == 0)
        #expect(throws: TesseraError.self) { try store.reconstruct(m, file: "big.bin") { received += $0.count } }
        // A tensor naming an object that holds another value: the raw hash in the manifest is checked too.
        let other = Manifest.Stored(encoding: stored.encoding, rawSHA256: String(repeating: "0", count: 64), objectID: stored.objectID,
                                    objectSize: stored.objectSize)
        let n = 20_000
        let lying = Manifest(format: .opaque, size: n, segments: [.blob(begin: 0, end: n, other)])
        let e2 = try #require(throws: TesseraError.self) { try store.reconstructConcurrently(lying, file: "x") { _ in } }
        #expect(e2.message.contains("another value"))
    }

    /// A reconstruction of many segments that stops early (the sink fails, or a segment holds another value) returns
    /// that error, with the decodes running ahead of the writer stopped, whatever follows; a whole one delivers every
    /// segment in order, however few are decoded ahead at a time.
    @Test func aReconstructionOfManySegmentsStopsCleanlyAndDeliversInOrder() throws {
        let (store, dir, stored, raw) = try storeWithObject()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = raw.count, count = 12
        let lie = Manifest.Stored(encoding: stored.encoding, rawSHA256: String(repeating: "0", count: 64), objectID: stored.objectID,
                                  objectSize: stored.objectSize)
        func manifest(lyingAt bad: Int?) -> Manifest {
            Manifest(format: .opaque, size: count * n, segments: (0..<count).map { .blob(begin: $0 * n, end: ($0 + 1) * n, $0 == bad ? lie : stored) })
        }
        var whole: [UInt8] = []
        try store.reconstructConcurrently(manifest(lyingAt: nil), file: "many") { whole += $0 }
        #expect(whole == Array((0..<count).map { _ in raw }.joined()))
        var pieces = 0
        let full = try #require(throws: TesseraError.self) {
            try store.reconstructConcurrently(manifest(lyingAt: nil), file: "many") { _ in
                pieces += 1
                if pieces == 3 { throw TesseraError(.io, "no space left on device") }
            }
        }
        #expect(full.message == "no space left on device")
        var received = 0
        let lying = try #require(throws: TesseraError.self) {
            try store.reconstructConcurrently(manifest(lyingAt: 6), file: "many") { received += $0.count }
        }
        #expect(lying.message.contains("another value"))
        #expect(received == 6 * n)
    }

    @Test func allocationsTheSystemRefusesAreErrors() throws {
        #expect(throws: TesseraError.self) { try LargeBuffer(count: 1 << 60) }
        let buffer = try LargeBuffer(count: 100)
        #expect(throws: TesseraError.self) { try buffer.grow(to: 1 << 60) }
        #expect(throws: TesseraError.self) { try LargeBuffer.checkFitsInMemory(1 << 60, what: "a test") }
    }
}

@Suite struct HostileCheckpointTests {
    func clean(_ bytes: [UInt8], store: ObjectStore, pieces: Int = 4096) throws -> Manifest {
        let c = CheckpointCleaner(store: store, fileName: "m.safetensors")
        do {
            var at = 0
            while at < bytes.count {
                let n = min(pieces, bytes.count - at)
                try bytes[at..<(at + n)].withUnsafeBytes { try c.consume($0) }
                at += n
            }
            return try Manifest.parse(String(decoding: try c.finish(), as: UTF8.self))
        } catch {
            c.abandon()
            throw error
        }
    }

    static func file(header: String, data: [UInt8] = []) -> [UInt8] {
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var out: [UInt8] = []
        var n = UInt64(h.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        return out + h + data
    }

    @Test func aHeaderDeclaringATerabyteTensorIsTruncationNotAnAllocation() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bytes = Self.file(header: #"{"w":{"dtype":"U8","shape":[1000000000000],"data_offsets":[0,1000000000000]}}"#, data: [1, 2, 3])
        #expect(bytes.count < 200)
        let e = try #require(throws: TesseraError.self) { try clean(bytes, store: store) }
        #expect(e.message.contains("truncated"))
        #expect(store.allObjectIDs().count <= 1)  // at most the header object
    }

    @Test func offsetsNearIntMaxGiveMessagesWithoutNegativeNumbers() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let end = Int.max
        let bytes = Self.file(header: #"{"w":{"dtype":"U8","shape":[\#(end)],"data_offsets":[0,\#(end)]}}"#)
        let e = try #require(throws: TesseraError.self) { try clean(bytes, store: store) }
        #expect(!e.description.contains("-"), "\(e)")
        let parsed = try #require(throws: TesseraError.self) {
            try SafetensorsLayout.parse(headerBytes: bytes, fileSize: bytes.count, file: "m.safetensors")
        }
        #expect(!parsed.description.contains(" -"))
    }

    @Test func fortyThousandZeroLengthTensorsNeedNoDeepStack() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = 40_000
        let header = "{" + (0..<n).map { #""t\#($0)":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}"# }.joined(separator: ",") + "}"
        let m = try clean(Self.file(header: header), store: store, pieces: 65536)
        #expect(m.tensors.count == n)
    }

    @Test func theEmptyCheckpointIsACheckpoint() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // What safetensors.save_file({}) writes: 16 bytes.
        let bytes = Self.file(header: "{}")
        #expect(bytes.count == 16)
        let m = try clean(bytes, store: store)
        #expect(m.format == .safetensors && m.tensors.isEmpty && m.size == 16)
        var out: [UInt8] = []
        try store.reconstruct(m, file: "e") { out += $0 }
        #expect(out == bytes)
    }

    @Test func canonicallyEquivalentNamesAreTwoTensors() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        #expect(composed == decomposed && Array(composed.utf8) != Array(decomposed.utf8))  // equal to Swift, not in bytes
        let header = #"{"\#(composed)":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"\#(decomposed)":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#
        let bytes = Self.file(header: header, data: [1, 2, 3, 4, 5, 6, 7, 8])
        let m = try clean(bytes, store: store)
        #expect(m.tensors.map { Array($0.name.utf8) } == [Array(composed.utf8), Array(decomposed.utf8)])
        var out: [UInt8] = []
        try store.reconstruct(m, file: "c") { out += $0 }
        #expect(out == bytes)
        let checkpoint = try StoredCheckpoint(manifest: m, store: store, name: "c")
        #expect(try checkpoint.rawTensor(composed).bytes == [1, 2, 3, 4])
        #expect(try checkpoint.rawTensor(decomposed).bytes == [5, 6, 7, 8])
        // A true duplicate (the same bytes twice) is still refused.
        let dup = #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#
        #expect(throws: TesseraError.self) { try clean(Self.file(header: dup, data: [1, 2, 3, 4, 5, 6, 7, 8]), store: store) }
    }

    @Test func manifestTextIsPassedThroughOnlyWhenItIsTheStagedManifest() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let id = String(repeating: "a", count: 64)
        // A manifest naming objects nobody has: as a file added by a user, it is content, stored whole.
        let text = Array("tessera-manifest 1\nformat opaque\nsize 4\nblob 0 4 zstd \(id) \(id) 100\nend\n".utf8)
        let c = CheckpointCleaner(store: store, fileName: "m.safetensors")
        try text.withUnsafeBytes { try c.consume($0) }
        let m = try Manifest.parse(String(decoding: try c.finish(), as: UTF8.self))
        #expect(m.format == .opaque && m.objectIDs != [id])
        var out: [UInt8] = []
        try store.reconstruct(m, file: "m") { out += $0 }
        #expect(out == text)
    }
}
