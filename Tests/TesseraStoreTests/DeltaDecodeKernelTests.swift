import CKernels
import Foundation
import Testing
import TesseraCore
import TesseraStore
import TesseraTestSupport

/// The arithmetic delta's chunks decode in CKernels (`tessera_delta_decode`: the rANS states first, then the values
/// sixteen at a time with AVX-512, or one at a time without it). `StaticDeltaCoder.decodeReference`, element by
/// element in Swift, is the format's definition: on valid payloads of both widths and both symbol sets, and on damaged
/// ones, every decoder gives the same bytes and the same verdict.
@Suite(.serialized) struct DeltaDecodeKernelTests {
    /// A payload of `codec` for `new` against `base`, stored as an object beside its base; returns its id.
    func store(_ store: ObjectStore, payloadVersion: UInt8, width: Int, base: [UInt8], new: [UInt8],
               damage: (inout [UInt8]) -> Void = { _ in }) throws -> String {
        let baseStored = try base.withUnsafeBytes { try store.put(raw: $0, rawSHA256: SHA256Hasher.hex($0), width: width, encoder: ObjectEncoder()) }
        let codec = ArithmeticDeltaCodec()
        codec.payloadVersion = payloadVersion
        var payload: [UInt8] = []
        try new.withUnsafeBytes { nb in
            try base.withUnsafeBytes { bb in
                try codec.encode(raw: nb, width: width, chunkLog2: ObjectTrailer.defaultChunkLog2, shape: [], dependencies: [bb]) { payload += $0 }
            }
        }
        damage(&payload)
        let trailer = ObjectTrailer(rawSHA256: [UInt8](hex: SHA256Hasher.hex(new))!, dependencies: [[UInt8](hex: baseStored.objectID)!],
                                    rawLength: UInt64(new.count), codec: ArithmeticDeltaCodec.code, width: UInt8(width))
        let bytes = payload + trailer.encoded()
        let id = SHA256Hasher.hex(bytes)
        try FileManager.default.createDirectory(atPath: store.objectsDirectory + "/" + id.prefix(2), withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: store.objectPath(id)))
        return id
    }

    /// What a read hands out before it ends, and how it ends.
    func outcome(_ store: ObjectStore, _ id: String, elementByElement: Bool) -> (bytes: [UInt8], error: String?) {
        var bytes: [UInt8] = []
        do {
            try store.read(id, decoder: ObjectDecoder(elementByElementDeltas: elementByElement)) { bytes += $0 }
            return (bytes, nil)
        } catch {
            return (bytes, "\(error)")
        }
    }

    /// The three decoders: the kernel at the CPU's level, the kernel's portable loop, the Swift definition.
    func outcomes(_ store: ObjectStore, _ id: String) -> [(bytes: [UInt8], error: String?)] {
        let widest = outcome(store, id, elementByElement: false)
        tessera_kernels_force_portable(1)
        let portable = outcome(store, id, elementByElement: false)
        tessera_kernels_force_portable(0)
        return [widest, portable, outcome(store, id, elementByElement: true)]
    }

    /// Float32 or 2-byte patterns of a dense fine-tune: Gaussian values plus noise of 1e-3 of their mean |x|, with
    /// a tail that is not a whole number of 16-element groups.
    static func fineTune(width: Int, count: Int, seed: UInt64) -> (base: [UInt8], new: [UInt8]) {
        var r = DeltaCodecTests.Numbers(state: seed)
        let base = (0..<count).map { _ in r.gaussian() * 0.02 }
        let noise: Float = width == 4 ? 2e-5 : 2e-4
        let new = base.map { $0 + noise * r.gaussian() }
        let format: DeltaCodecTests.Format = width == 4 ? .f32 : .bf16
        return (format.bytes(base), format.bytes(new))
    }

    @Test(arguments: [4, 2])
    func validPayloadsDecodeTheSameEveryWay(_ width: Int) throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let patterns = DeltaKernelTests.patterns(width: width, count: 5003, seed: 41)
        let cases: [(String, [UInt8], [UInt8])] = [
            ("every symbol", DeltaCodecTests.everySymbol(width: width, seed: 5).base, DeltaCodecTests.everySymbol(width: width, seed: 5).new),
            ("special patterns", patterns.base, patterns.new),
            ("fine-tune", DeltaDecodeKernelTests.fineTune(width: width, count: 200_009, seed: 3).base,
             DeltaDecodeKernelTests.fineTune(width: width, count: 200_009, seed: 3).new),
            ("one element", Array(patterns.base.prefix(width)), Array(patterns.new.prefix(width))),
        ]
        for (label, base, new) in cases {
            // Version 2 codes one bit below the leading one; version 3 one or two (two on the large fine-tune).
            for version in [UInt8(2), 3] {
                let id = try self.store(store, payloadVersion: version, width: width, base: base, new: new)
                for (k, o) in outcomes(store, id).enumerated() {
                    #expect(o.error == nil && o.bytes == new, "\(label), version \(version), decoder \(k): \(o.error ?? "wrong bytes")")
                }
            }
        }
    }

    /// Bytes of the chunk streams flipped, one to three at a time: each decoder hands out the same bytes and ends
    /// with the same error (a chunk that does not decode, or a value whose raw hash is wrong).
    @Test(arguments: [4, 2])
    func damagedPayloadsEndTheSameEveryWay(_ width: Int) throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (base, new) = DeltaDecodeKernelTests.fineTune(width: width, count: 20_011, seed: 9)
        var r = DeltaCodecTests.Numbers(state: 77)
        var refused = 0
        for trial in 0..<120 {
            var flipped: [Int] = []
            let id = try self.store(store, payloadVersion: 3, width: width, base: base, new: new) { payload in
                // Past the header and tables (the tables' own checks are another test's): into the streams.
                let streams = payload.count / 2
                for _ in 0...(trial % 3) {
                    let at = streams + Int(r.next() % UInt64(payload.count - streams))
                    payload[at] ^= UInt8(1 + r.next() % 255)
                    flipped.append(at)
                }
            }
            let o = outcomes(store, id)
            let verdicts: [String] = o.map { $0.error ?? "decoded" }
            let sameBytes = o[0].bytes == o[2].bytes && o[1].bytes == o[2].bytes
            #expect(sameBytes && verdicts[0] == verdicts[2] && verdicts[1] == verdicts[2], "bytes \(flipped): \(verdicts)")
            if o[2].error != nil { refused += 1 }
        }
        // Nearly every flip of a coded stream is caught by the decoder or the raw hash.
        #expect(refused >= 110, "\(refused) of 120 damaged payloads refused")
    }
}
