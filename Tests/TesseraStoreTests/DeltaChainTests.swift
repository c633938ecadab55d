import Foundation
import Testing
import TesseraCore
import TesseraStore
import TesseraIO
import TesseraTestSupport

/// Issue 12: XOR delta chains of bounded depth. Every version of a tensor is a delta on the one before, up to the
/// policy's maximum depth; reads walk the chain on trailers first and refuse loops and chains deeper than the reader's
/// limit with one line.
@Suite struct DeltaChainTests {
    static let elements = 4096

    /// Version `k` of a tensor: the same values with low mantissa bits changed (a fine-tune step), so that an XOR
    /// delta on version k-1 pays.
    static func version(_ k: Int) -> [UInt8] {
        var v = TestCheckpoint.floats(elements, seed: 7)
        for i in stride(from: k % 3, to: v.count, by: 3) {
            v[i] = Float(bitPattern: v[i].bitPattern ^ UInt32(truncatingIfNeeded: (k &* 2654435761) ^ i) & 0x3FF)
        }
        return TestCheckpoint.f32Bytes(v)
    }

    /// The tensor as a checkpoint's header declares it.
    static let tensor: SafetensorsTensor = {
        var c = TestCheckpoint()
        c.entries = [TestCheckpoint.Entry(name: "w", dtype: "F32", shape: [elements], bytes: version(0))]
        let file = c.encode()
        let n = file[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        return try! SafetensorsLayout.parse(headerBytes: Array(file[0..<(8 + n)]), fileSize: nil, file: "test").tensors[0]
    }()

    /// Stores versions 0..<count the way the cleaner does: each against the previous version when the policy allows.
    func storeVersions(_ count: Int, policy: EncodingPolicy, in store: ObjectStore) throws -> [Manifest.Stored] {
        let encoder = ObjectEncoder()
        var out: [Manifest.Stored] = []
        for k in 0..<count {
            let raw = Self.version(k)
            let base = policy.deltaCandidate(for: Self.tensor, previous: out.last, store: store)
            let baseRaw = try base.map { try store.readAll($0.objectID) }
            let stored = try raw.withUnsafeBytes { r in
                try (baseRaw ?? []).withUnsafeBytes { b in
                    let choice = policy.choose(raw: r, width: 4, base: base, baseRaw: baseRaw == nil ? nil : b)
                    return try store.put(raw: r, rawSHA256: SHA256Hasher.hex(r), choice: choice,
                                         dependencyRaw: choice.dependencies.isEmpty ? [] : [b], encoder: encoder)
                }
            }
            out.append(stored)
        }
        return out
    }

    @Test func everyDepthUpToTheMaximumRoundTripsAndTheNextVersionStartsANewChain() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var policy = EncodingPolicy()
        policy.maximumDeltaDepth = 8
        let stored = try storeVersions(11, policy: policy, in: store)
        // Depths 0, 1, ..., 8, then whole again (0), then 1.
        let expected = [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1]
        #expect(try stored.map { try store.dependencyChain(of: $0.objectID).depth } == expected)
        for (k, s) in stored.enumerated() {
            // Byte-identical, through the chain, both by raw value (checkout) and fully verified (fsck).
            #expect(try store.readAll(s.objectID, expectedRawSHA256: s.rawSHA256) == Self.version(k))
            try store.verify(s.objectID, expectedLength: 4 * Self.elements, expectedRawSHA256: s.rawSHA256)
            // The manifest line names the whole chain (nearest first) with the objects' sizes, so that a clone that
            // has only this manifest can fetch everything it needs.
            let encoding = try ManifestEncoding(s.encoding)
            let chain = try store.dependencyChain(of: s.objectID)
            #expect(encoding.dependencies.map(\.id) == chain.objectIDs)
            #expect(encoding.dependencies.map(\.id) == Array(stored[(k - expected[k])..<k].reversed().map(\.objectID)))
            for d in encoding.dependencies { #expect(d.size == FileSystem.fileStat(store.objectPath(d.id))?.size) }
        }
        // Each delta's trailer names only its direct base.
        #expect(try store.trailer(of: stored[8].objectID).dependencyIDs == [stored[7].objectID])
    }

    @Test func maximumDepthZeroStoresEveryVersionWholeAndOneGivesTheOldDepthOneDeltas() throws {
        for (limit, expected) in [(0, [0, 0, 0, 0]), (1, [0, 1, 0, 1]), (2, [0, 1, 2, 0])] {
            let (store, dir) = try temporaryStore()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var policy = EncodingPolicy()
            policy.maximumDeltaDepth = limit
            let stored = try storeVersions(4, policy: policy, in: store)
            #expect(try stored.map { try store.dependencyChain(of: $0.objectID).depth } == expected, "limit \(limit)")
            for (k, s) in stored.enumerated() { #expect(try store.readAll(s.objectID) == Self.version(k)) }
        }
    }

    @Test func aMissingBaseAnywhereInTheChainIsOneLineNamingIt() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var policy = EncodingPolicy()
        policy.maximumDeltaDepth = 8
        let stored = try storeVersions(4, policy: policy, in: store)
        store.remove(stored[0].objectID)
        for s in stored.dropFirst() {
            let e = try #require(throws: TesseraError.self) { try store.readAll(s.objectID, expectedRawSHA256: s.rawSHA256) }
            #expect(e.code == .objectMissing && e.message.contains(String(stored[0].objectID.prefix(12))) && !e.message.contains("\n"), "\(e.message)")
        }
        // A previous version whose chain is broken is no delta base: the next version is stored whole.
        #expect(policy.deltaCandidate(for: Self.tensor, previous: stored[3], store: store) == nil)
    }

    // MARK: Hostile stores

    /// An XOR delta object of `raw` against `baseRaw`, whose trailer names `baseID` (any id: a crafted store).
    func deltaObject(raw: [UInt8], baseRaw: [UInt8], baseID: String) throws -> [UInt8] {
        var payload: [UInt8] = []
        try raw.withUnsafeBytes { r in
            try baseRaw.withUnsafeBytes { b in
                try XORDeltaCodec().encode(raw: r, width: 4, chunkLog2: ObjectTrailer.defaultChunkLog2, dependencies: [b]) { payload += $0 }
            }
        }
        let trailer = ObjectTrailer(rawSHA256: [UInt8](hex: SHA256Hasher.hex(raw))!, dependencies: [[UInt8](hex: baseID)!],
                                    rawLength: UInt64(raw.count), codec: XORDeltaCodec.code, width: 4)
        return payload + trailer.encoded()
    }

    /// Writes `bytes` as the object `id` (which need not be their SHA-256: a crafted store).
    func plant(_ bytes: [UInt8], as id: String, in store: ObjectStore) throws {
        try FileManager.default.createDirectory(atPath: store.objectsDirectory + "/" + id.prefix(2), withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: store.objectPath(id)))
    }

    @Test func aLoopOfDeltasIsRefusedWithOneLine() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = String(repeating: "a1", count: 32), b = String(repeating: "b2", count: 32), c = String(repeating: "c3", count: 32)
        // a → b → a, and c → c.
        try plant(try deltaObject(raw: Self.version(1), baseRaw: Self.version(2), baseID: b), as: a, in: store)
        try plant(try deltaObject(raw: Self.version(2), baseRaw: Self.version(1), baseID: a), as: b, in: store)
        try plant(try deltaObject(raw: Self.version(3), baseRaw: Self.version(3), baseID: c), as: c, in: store)
        for (id, k) in [(a, 1), (b, 2), (c, 3)] {
            for read in [{ _ = try store.readAll(id) }, { try store.verify(id) }, { _ = try store.readAll(id, expectedRawSHA256: SHA256Hasher.hex(Self.version(k))) },
                         { _ = try store.dependencyChain(of: id) }] {
                let e = try #require(throws: TesseraError.self) { try read() }
                #expect(e.message.contains("loops back") && !e.message.contains("\n"), "\(e.message)")
            }
        }
        // A delta on one of them is refused the same way, and the policy does not build on it.
        var policy = EncodingPolicy()
        policy.maximumDeltaDepth = 8
        #expect(policy.deltaCandidate(for: Self.tensor, previous: Manifest.Stored(encoding: "xor+bg4+zstd", rawSHA256: SHA256Hasher.hex(Self.version(1)),
                                                                              objectID: a, objectSize: 100), store: store) == nil)
    }

    @Test func aChainDeeperThanTheReaderAcceptsIsRefusedBeforeAnyBaseIsDecoded() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // An honest chain (every object under its own SHA-256) one level deeper than readers follow: what a hostile
        // remote could send. Each object is built by hand, as the store's writer refuses to make it.
        let encoder = ObjectEncoder()
        var ids: [String] = []
        let whole = try Self.version(0).withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 4, encoder: encoder) }
        ids.append(whole.objectID)
        for k in 1...(ObjectStore.maximumChainDepth + 1) {
            let bytes = try deltaObject(raw: Self.version(k), baseRaw: Self.version(k - 1), baseID: ids.last!)
            let id = SHA256Hasher.hex(bytes)
            try plant(bytes, as: id, in: store)
            ids.append(id)
        }
        // Depth 16 reads; depth 17 is refused, by every kind of read, in one line.
        #expect(try store.readAll(ids[ObjectStore.maximumChainDepth]) == Self.version(ObjectStore.maximumChainDepth))
        let deepest = ids.last!
        for read in [{ _ = try store.readAll(deepest) }, { try store.verify(deepest) }, { _ = try store.dependencyChain(of: deepest) }] {
            let e = try #require(throws: TesseraError.self) { try read() }
            #expect(e.message.contains("deeper than \(ObjectStore.maximumChainDepth)") && !e.message.contains("\n"), "\(e.message)")
        }
        // And the writer's policy never extends a chain past its maximum, whatever the base's depth.
        var policy = EncodingPolicy()
        policy.maximumDeltaDepth = 15
        let stored = Manifest.Stored(encoding: "xor+bg4+zstd", rawSHA256: SHA256Hasher.hex(Self.version(15)), objectID: ids[15], objectSize: 1)
        #expect(policy.deltaCandidate(for: Self.tensor, previous: stored, store: store) == nil)
        policy.maximumDeltaDepth = 16
        #expect(policy.deltaCandidate(for: Self.tensor, previous: stored, store: store) != nil)
    }
}
