import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraStore
import TesseraTestSupport

/// Reads that name the raw SHA-256 they expect skip hashing the object file and a delta's base (issue 10): what they
/// deliver is still exactly the named value, and fsck still checks object ids. Also the merge driver's background
/// writer.
@Suite struct ProvenReadTests {
    let encoder = ObjectEncoder()

    func floats(_ n: Int, _ f: (Int) -> Float) -> [UInt8] { (0..<n).map(f).withUnsafeBytes { Array($0) } }

    func put(_ raw: [UInt8], _ store: ObjectStore, codec: any ObjectCodec.Type = ByteGroupedZstdCodec.self) throws -> Manifest.Stored {
        try raw.withUnsafeBytes {
            try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), choice: EncodingPolicy.Choice(codec: codec, width: codec == RawCodec.self ? 1 : 4),
                          encoder: encoder)
        }
    }

    /// Stores `new` as a delta of `codec` against `base` (whose raw bytes are `baseRaw`).
    func putDelta(_ new: [UInt8], against base: Manifest.Stored, raw baseRaw: [UInt8], _ store: ObjectStore,
                  codec: any ObjectCodec.Type) throws -> Manifest.Stored {
        try new.withUnsafeBytes { nb in
            try baseRaw.withUnsafeBytes {
                try store.put(raw: nb, rawSHA256: SHA256Hasher.hex(nb),
                              choice: EncodingPolicy.Choice(codec: codec, width: 4, dependencies: [base]), dependencyRaw: [$0], encoder: encoder)
            }
        }
    }

    /// Puts `bytes` in the place of object `id` (its name unchanged), as a corrupted disk or a hostile hand would.
    func overwrite(_ id: String, in store: ObjectStore, with bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: store.objectPath(id)))
    }

    func objectBytes(_ store: ObjectStore, _ id: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: store.objectPath(id))))
    }

    @Test func aDeltaWhoseBaseFileHoldsAnotherValueIsRefusedByAProvenRead() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = floats(4096) { Float($0) * 0.001 }
        var b = a
        b[100] ^= 4
        let other = floats(4096) { Float($0) * 0.002 }
        let base = try put(a, store)
        let delta = try putDelta(b, against: base, raw: a, store, codec: XORDeltaCodec.self)
        #expect(try store.readAll(delta.objectID, expectedRawSHA256: delta.rawSHA256) == b)
        // The base's file now holds a valid object of the same length but another value: the base is decoded
        // without being hashed, and the delta's decoded bytes no longer hash to the value named.
        let otherStored = try put(other, store)
        try overwrite(base.objectID, in: store, with: try objectBytes(store, otherStored.objectID))
        let e = try #require(throws: TesseraError.self) {
            try store.readAll(delta.objectID, expectedRawSHA256: delta.rawSHA256)
        }
        #expect(e.code == .objectCorrupt)
        #expect(e.message.contains("decoded bytes do not match"))
        // A read that expects nothing, and fsck's verify, check the base whole and name it.
        #expect(throws: TesseraError.self) { try store.readAll(delta.objectID) }
        #expect(throws: TesseraError.self) { try store.verify(base.objectID) }
    }

    @Test func aProvenReadDeliversTheNamedValueWhateverTheEncodingAndFsckStillChecksTheID() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = floats(2048) { Float($0).squareRoot() }
        let grouped = try put(a, store)
        // The same value encoded raw, under the byte-grouped object's name: the bytes delivered are the value named.
        let rawDir = dir + "-raw"
        defer { try? FileManager.default.removeItem(atPath: rawDir) }
        let other = try ObjectStore(root: rawDir)
        let rawStored = try put(a, other, codec: RawCodec.self)
        try overwrite(grouped.objectID, in: store, with: try objectBytes(other, rawStored.objectID))
        #expect(try store.readAll(grouped.objectID, expectedRawSHA256: grouped.rawSHA256) == a)
        // The file is not the object its name says: fsck (verify) and unproven reads say so.
        let e = try #require(throws: TesseraError.self) { try store.verify(grouped.objectID, expectedRawSHA256: grouped.rawSHA256) }
        #expect(e.message.contains("do not match its SHA-256"))
        #expect(throws: TesseraError.self) { try store.readAll(grouped.objectID) }
        // Another value under the name is refused by the expectation before anything is decoded.
        let b = floats(2048) { Float($0) }
        let bStored = try put(b, other, codec: RawCodec.self)
        try overwrite(grouped.objectID, in: store, with: try objectBytes(other, bStored.objectID))
        #expect(throws: TesseraError.self) { try store.readAll(grouped.objectID, expectedRawSHA256: grouped.rawSHA256) }
    }

    @Test func theBackgroundWriterStoresEveryValueInOrderOfKeys() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A budget smaller than two values: the caller waits for the writer instead of queueing everything.
        let writer = BackgroundObjectWriter(store: store, limit: 3 * 4096)
        let values = (0..<12).map { k in floats(1024 + k) { Float($0 &* (k + 1)) * 0.5 } }
        for (k, v) in values.enumerated() { writer.store(v, width: 4, key: k) }
        let stored = try writer.finish()
        #expect(stored.count == values.count)
        for (k, v) in values.enumerated() {
            let s = try #require(stored[k])
            #expect(s.rawSHA256 == SHA256Hasher.hex(v))
            #expect(try store.readAll(s.objectID, expectedRawSHA256: s.rawSHA256) == v)
            #expect(store.lookup(rawSHA256: s.rawSHA256)?.objectID == s.objectID)
        }
    }

    @Test func aCancelledBackgroundWriterLeavesNothingVisible() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = BackgroundObjectWriter(store: store)
        for k in 0..<4 { writer.store(floats(4096) { Float($0 + k) }, width: 4, key: k) }
        writer.cancel()
        #expect(store.allObjectIDs().isEmpty)
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: store.tmpDirectory)) ?? []
        #expect(leftovers.isEmpty)
    }

    /// A base the reader already holds is lent to the decode of a delta against it instead of being decoded again (a
    /// merge of fine-tunes reads each base tensor once). The lent bytes are what the delta is decoded against: with
    /// the base's file replaced by another value's object, the lent read still gives the value and a plain read
    /// fails; a lent base that is not the base's value is caught by the raw hash the read names; one of another
    /// length is refused; a read that names no value (fsck) ignores what is lent.
    @Test func aLentBaseServesADeltaAndAWrongOneIsCaught() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = floats(4096) { Float($0) * 0.001 - 2 }
        let b = floats(4096) { Float($0) * 0.001 - 2 + ($0 % 3 == 0 ? 1e-4 : 0) }
        let other = floats(4096) { Float($0) * 0.002 }
        let base = try put(a, store)
        let delta = try putDelta(b, against: base, raw: a, store, codec: ArithmeticDeltaCodec.self)
        func read(lending lent: [UInt8]?) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: b.count)
            try out.withUnsafeMutableBytes { destination in
                if let lent {
                    try lent.withUnsafeBytes { try store.readAll(delta.objectID, into: destination, expectedRawSHA256: delta.rawSHA256, lentBases: [base.objectID: $0]) }
                } else {
                    try store.readAll(delta.objectID, into: destination, expectedRawSHA256: delta.rawSHA256)
                }
            }
            return out
        }
        #expect(try read(lending: a) == b)
        #expect(try read(lending: nil) == b)
        let wrong = try #require(throws: TesseraError.self) { try read(lending: other) }
        #expect(wrong.code == .objectCorrupt, "\(wrong.message)")
        let short = try #require(throws: TesseraError.self) { try read(lending: Array(a.prefix(4000))) }
        #expect(short.message.contains("different length"))
        try overwrite(base.objectID, in: store, with: try objectBytes(store, try put(other, store).objectID))
        #expect(try read(lending: a) == b)
        #expect(throws: TesseraError.self) { try read(lending: nil) }
        #expect(throws: TesseraError.self) { try store.verify(delta.objectID) }
    }
}
