import Foundation
import Testing
import TesseraCore
import TesseraIO

@Suite struct JSONTests {
    @Test func parsesKeepsOrderAndRejectsDuplicates() throws {
        let v = try JSONParser.parse(#"{"b":[1,2.5,-3e2],"a":{"x":"\u00e9\n"},"c":null,"d":true}"#)
        #expect(v.objectValue?.map(\.0) == ["b", "a", "c", "d"])
        #expect(v["b"]?.arrayValue?.compactMap(\.doubleValue) == [1, 2.5, -300])
        #expect(v["a"]?["x"]?.stringValue == "é\n")
        #expect(throws: JSONError.self) { try JSONParser.parse(#"{"a":1,"a":2}"#) }
        for bad in [#"{"a":1,}"#, #"{"a" 1}"#, "[1,2", #""\ud800""#, "01", "{} x", "\"\u{01}\""] {
            #expect(throws: JSONError.self, "accepted \(bad)") { try JSONParser.parse(bad) }
        }
    }

    @Test func serializesLikeSerdeJSON() throws {
        let text = #"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#
        #expect(try JSONParser.parse(text).serialized() == text)
        #expect(JSONValue.string("a\"b\\c\u{1}").serialized() == #""a\"b\\c\u0001""#)
    }
}

@Suite struct SafetensorsLayoutTests {
    func header(_ json: String) -> [UInt8] {
        var out: [UInt8] = []
        var n = UInt64(json.utf8.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        return out + Array(json.utf8)
    }

    @Test func parsesAndSortsByOffset() throws {
        let h = header(#"{"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#)
        let l = try SafetensorsLayout.parse(headerBytes: h, fileSize: h.count + 12, file: "f")
        #expect(l.tensors.map(\.name) == ["a", "b"])
        #expect(l.dataEnd == 12)
        #expect(l.metadata.first! == ("k", "v"))
    }

    @Test func rejectsMalformedHeaders() throws {
        let cases: [(String, String)] = [
            (#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, "12 bytes"),
            (#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, "unknown dtype"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, "end before"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, "overlap"),
            (#"{"a/../../x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, "path characters"),
            (#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, "invalid shape"),
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, "truncated"),
        ]
        for (json, fragment) in cases {
            let h = header(json)
            do {
                _ = try SafetensorsLayout.parse(headerBytes: h, fileSize: h.count + (fragment == "truncated" ? 4 : 64), file: "f")
                Issue.record("accepted \(json)")
            } catch let e as TesseraError {
                #expect(e.description.contains(fragment), "\(e.description)")
            }
        }
    }
}

@Suite struct ManifestTests {
    let stored = Manifest.Stored(encoding: "bg4+zstd", rawSHA256: String(repeating: "a", count: 64), objectID: String(repeating: "b", count: 64), objectSize: 10)

    @Test func rendersAndParsesDeterministically() throws {
        let m = Manifest(format: .safetensors, size: 120, segments: [
            .header(begin: 0, end: 40, stored),
            .tensor(name: "layer 0.weight%", dtype: .bf16, shape: [2, 10], begin: 40, end: 80, stored),
            .gap(begin: 80, end: 84, .inline([0, 1, 2, 255])),
            .tensor(name: "scalar", dtype: .f32, shape: [], begin: 84, end: 88, stored),
            .gap(begin: 88, end: 120, .object(stored)),
        ])
        let text = m.render()
        #expect(text.hasPrefix("tessera-manifest 2\n"))
        // Version 2: lengths, no offsets; a tensor's length is its dtype times its shape.
        #expect(text.contains("header 40 bg4+zstd") && text.contains("gap 4 inline 000102ff") && text.contains("gap 32 bg4+zstd"))
        #expect(text.contains("tensor layer%200.weight%25 BF16 [2,10] bg4+zstd"))
        let back = try Manifest.parse(text)
        #expect(back == m)
        #expect(back.render() == text)
        #expect(back.objectIDs == [stored.objectID])
        // Version 1 (offsets on every line) still reads, to the same manifest.
        let v1 = m.render(version: 1)
        #expect(v1.contains("tensor layer%200.weight%25 BF16 [2,10] 40 80 bg4+zstd"))
        #expect(try Manifest.parse(v1) == m)
    }

    @Test func aTensorLineChangesOnlyWhenTheTensorDoes() throws {
        // The same tensors behind a header that grew by 8 bytes: in version 2 only the header line differs.
        func manifest(header: Int) -> Manifest {
            Manifest(format: .safetensors, size: header + 80, segments: [
                .header(begin: 0, end: header, stored),
                .tensor(name: "a", dtype: .f32, shape: [10], begin: header, end: header + 40, stored),
                .tensor(name: "b", dtype: .f32, shape: [10], begin: header + 40, end: header + 80, stored),
            ])
        }
        let before = manifest(header: 40).render().split(separator: "\n"), after = manifest(header: 48).render().split(separator: "\n")
        let changed = zip(before, after).filter { $0 != $1 }.map { String($0.1) }
        #expect(changed == ["size 128", "header 48 bg4+zstd \(stored.rawSHA256) \(stored.objectID) 10"])
    }

    @Test func rejectsDamagedManifests() throws {
        let good = Manifest(format: .opaque, size: 5, segments: [.blob(begin: 0, end: 5, stored)]).render()
        let damaged = [
            good.replacingOccurrences(of: "end\n", with: ""),
            good.replacingOccurrences(of: "size 5", with: "size 6"),
            good.replacingOccurrences(of: "tessera-manifest 2", with: "tessera-manifest 9"),
            good.replacingOccurrences(of: "blob 5", with: "blob 6"),
            good.replacingOccurrences(of: String(repeating: "b", count: 64), with: "zz"),
            good + "extra\n",
        ]
        for d in damaged {
            #expect(throws: TesseraError.self, "accepted:\n\(d)") { try Manifest.parse(d) }
        }
    }
}

@Suite struct NumericsTests {
    @Test func byteGroupingRoundTripsEveryWidth() {
        for width in [1, 2, 4, 8, 3] {
            let n = 1001
            let src = (0..<(n * width)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ $0 >> 3) }
            var grouped = [UInt8](repeating: 0, count: src.count)
            var back = [UInt8](repeating: 0, count: src.count)
            src.withUnsafeBytes { s in grouped.withUnsafeMutableBytes { ByteGrouping.group(s.baseAddress!, $0.baseAddress!, count: n, width: width) } }
            // Plane j holds byte j of every element.
            #expect(grouped[n * (width - 1) + 5] == src[5 * width + width - 1])
            grouped.withUnsafeBytes { g in back.withUnsafeMutableBytes { ByteGrouping.ungroup(g.baseAddress!, $0.baseAddress!, count: n, width: width) } }
            #expect(back == src)
        }
    }

    @Test func halfFloatConversionsMatchIEEE() {
        // Values whose f16 / bf16 encodings are known.
        #expect(HalfFloat.floatToF16(1.0) == 0x3C00)
        #expect(HalfFloat.floatToF16(-2.0) == 0xC000)
        #expect(HalfFloat.floatToF16(65504) == 0x7BFF)
        #expect(HalfFloat.floatToF16(1e-7) == 0x0002)  // subnormal, rounded to nearest
        #expect(HalfFloat.f16ToFloat(0x3555) == 0.333251953125)
        #expect(HalfFloat.floatToBF16(1.0) == 0x3F80)
        #expect(HalfFloat.floatToBF16(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // tie to even
        #expect(HalfFloat.floatToBF16(Float(bitPattern: 0x3F81_8000)) == 0x3F82)
        for bits in stride(from: 0, to: 0x7C00, by: 7) {
            #expect(HalfFloat.floatToF16(HalfFloat.f16ToFloat(UInt16(bits))) == UInt16(bits))
        }
    }

    @Test func fastHashIsSplitIndependent() {
        let data = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        var one = FastHash()
        data.withUnsafeBytes { one.update($0) }
        var pieces = FastHash()
        for cut in stride(from: 0, to: data.count, by: 333) {
            data[cut..<min(cut + 333, data.count)].withUnsafeBytes { pieces.update($0) }
        }
        #expect(one.finalize() == pieces.finalize())
        var other = FastHash()
        var changed = data
        changed[5000] ^= 1
        changed.withUnsafeBytes { other.update($0) }
        #expect(other.finalize() != one.finalize())
    }
}
