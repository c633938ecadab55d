import TesseraTestSupport
import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraStore

/// A codec that is not part of the format: raw bytes XORed with two other objects' values. It exercises what the
/// built-in codecs do not: an object naming several dependencies (object format version 2, a manifest encoding
/// with two references).
final class TwoBaseXORCodec: ObjectCodec {
    static let code: UInt8 = 200
    static let dependencies: ClosedRange<Int> = 2...2
    static func manifestName(width: Int) -> String { "test+xor2" }
    static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws {
        guard trailer.rawLength == UInt64(payloadLength) else { throw TesseraError(.objectCorrupt, "length") }
    }
    init() {}
    func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let out = (0..<raw.count).map { raw[$0] ^ dependencies[0][$0] ^ dependencies[1][$0] }
        try out.withUnsafeBytes { try sink($0) }
    }
    func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var at = 0
        while try payload.nextBlock() > 0 {
            let block: [UInt8] = payload.withBlock { Array($0) }
            let out = block.enumerated().map { $0.element ^ dependencies[0].bytes[at + $0.offset] ^ dependencies[1].bytes[at + $0.offset] }
            at += out.count
            try out.withUnsafeBytes { try sink($0) }
        }
    }
}

@Suite struct ObjectCodecTests {
    @Test func theRegistryFindsCodecsByCodeAndName() {
        for codec in ObjectCodecs.builtIn {
            #expect(ObjectCodecs.codec(code: codec.code) == codec)
            #expect(ObjectCodecs.codec(manifestName: codec.manifestName(width: 4))?.codec == codec)
        }
        #expect(ObjectCodecs.codec(manifestName: "bg2+zstd")?.width == 2)
    }

    @Test func anObjectWithSeveralDependenciesRoundTrips() throws {
        if ObjectCodecs.codec(code: TwoBaseXORCodec.code) == nil { ObjectCodecs.register(TwoBaseXORCodec.self) }
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let encoder = ObjectEncoder()
        let a = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 7) }, b = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 13 + 1) }
        let value = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 31 + 5) }
        let sa = try a.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 1, encoder: encoder) }
        let sb = try b.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: 1, encoder: encoder) }
        let stored = try value.withUnsafeBytes { v in
            try a.withUnsafeBytes { ra in
                try b.withUnsafeBytes { rb in
                    try store.put(raw: v, rawSHA256: SHA256Hasher.hex(v), choice: EncodingPolicy.Choice(codec: TwoBaseXORCodec.self, width: 1, dependencies: [sa, sb]),
                                  dependencyRaw: [ra, rb], encoder: encoder)
                }
            }
        }
        // The manifest names both dependencies; the object is a version 2 object; it reads back exactly.
        let encoding = try ManifestEncoding(stored.encoding)
        #expect(encoding.name == "test+xor2" && encoding.dependencies.map(\.id) == [sa.objectID, sb.objectID])
        let file = Array(try Data(contentsOf: URL(fileURLWithPath: store.objectPath(stored.objectID))))
        #expect(Array(file[(file.count - 12)..<(file.count - 8)]) == Array("TSO2".utf8))
        #expect(try store.trailer(of: stored.objectID).dependencyIDs == [sa.objectID, sb.objectID])
        #expect(try store.readAll(stored.objectID) == value)
        // A manifest (version 2) naming it lists its dependencies as objects a checkout needs.
        let m = try Manifest.parse("tessera-manifest 2\nformat opaque\nsize 3000\nblob 3000 \(stored.encoding) \(stored.rawSHA256) \(stored.objectID) \(stored.objectSize)\nend\n")
        #expect(Set(m.objectIDs) == [stored.objectID, sa.objectID, sb.objectID])
        var out: [UInt8] = []
        try store.reconstruct(m, file: "x") { out += $0 }
        #expect(out == value)
        // A dependency that is missing is an error naming it, not a wrong answer.
        store.remove(sb.objectID)
        #expect(throws: TesseraError.self) { try store.readAll(stored.objectID) }
    }
}
