import Foundation
import Testing
import TesseraTestSupport

/// Issue 12: a fine-tune committed after its base is stored with the codecs that know the base (arithmetic delta,
/// low-rank, sparse), chosen per tensor, and every version checks out byte-identical through real git.
@Suite struct DeltaEncodingTests {
    /// Deterministic Gaussian numbers (SplitMix64, Box-Muller).
    struct Numbers {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func gaussian() -> Float {
            let u = max(Float(next() >> 40) / Float(1 << 24), 1e-7), v = Float(next() >> 40) / Float(1 << 24)
            return (-2 * log(u)).squareRoot() * cos(2 * Float.pi * v)
        }
    }

    static func f32(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }
    static func bf16(_ v: [Float]) -> [UInt8] { v.flatMap { x -> [UInt8] in let b = UInt16(x.bitPattern >> 16); return [UInt8(b & 0xFF), UInt8(b >> 8)] } }

    @Test func aFineTuneIsStoredAsWhatChangedAndChecksOutExactly() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        var r = Numbers(state: 12)
        let (rows, columns) = (128, 192)
        let dense = (0..<(rows * columns)).map { _ in r.gaussian() * 0.02 }
        let matrix = (0..<(rows * columns)).map { _ in r.gaussian() * 0.02 }
        let sparse = (0..<(64 * 1024)).map { _ in r.gaussian() * 0.02 }
        let half = (0..<(rows * columns)).map { _ in r.gaussian() * 0.02 }
        func model(_ d: [Float], _ m: [Float], _ s: [Float], _ h: [Float]) -> [UInt8] {
            var c = TestCheckpoint()
            c.entries = [
                .init(name: "dense.weight", dtype: "F32", shape: [rows, columns], bytes: DeltaEncodingTests.f32(d)),
                .init(name: "half.weight", dtype: "BF16", shape: [rows, columns], bytes: DeltaEncodingTests.bf16(h)),
                .init(name: "lowrank.weight", dtype: "F32", shape: [rows, columns], bytes: DeltaEncodingTests.f32(m)),
                .init(name: "sparse.weight", dtype: "F32", shape: [64, 1024], bytes: DeltaEncodingTests.f32(s)),
            ]
            return c.encode()
        }
        let v1 = model(dense, matrix, sparse, half)
        // The fine-tune: dense noise, a rank-4 update, 0.5% of entries, and bf16 noise.
        let b = (0..<(rows * 4)).map { _ in r.gaussian() * 0.01 }, a = (0..<(4 * columns)).map { _ in r.gaussian() * 0.05 }
        var updated = matrix
        for i in 0..<rows {
            for j in 0..<columns {
                var sum: Float = 0
                for t in 0..<4 { sum += b[i * 4 + t] * a[t * columns + j] }
                updated[i * columns + j] += sum
            }
        }
        var touched = sparse
        for _ in 0..<(sparse.count / 200) { touched[Int(r.next() % UInt64(sparse.count))] += 0.01 }
        let v2 = model(dense.map { $0 + 1e-3 * abs($0) * r.gaussian() }, updated, touched, half.map { $0 + 2e-2 * abs($0) * r.gaussian() })
        let file = s.path("\(repo)/model.safetensors")
        try Data(v1).write(to: URL(fileURLWithPath: file))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        let before = s.storeBytes(repo)
        try Data(v2).write(to: URL(fileURLWithPath: file))
        try s.run("git add model.safetensors && git commit -qm finetune", in: repo)
        let manifest = try s.run("git cat-file -p HEAD:model.safetensors", in: repo).stdout
        func encoding(_ name: String) -> String {
            let line = manifest.split(separator: "\n").first { $0.hasPrefix("tensor \(name) ") } ?? ""
            let fields = line.split(separator: " ")
            return fields.count > 4 ? String(fields[4].split(separator: "@")[0]) : ""
        }
        #expect(encoding("dense.weight") == "adelta4")
        #expect(encoding("half.weight") == "adelta2")
        #expect(encoding("lowrank.weight") == "lowrank4")
        #expect(encoding("sparse.weight") == "sparse4+zstd")
        // The whole fine-tune costs well under half its raw size (the dense tensors are most of it).
        #expect(Double(s.storeBytes(repo) - before) < 0.5 * Double(v2.count))
        // Both versions check out byte-identical, from a fresh worktree too, and fsck checks every dependency.
        try s.run("git checkout -q HEAD~1 -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == v1)
        try s.run("git checkout -q HEAD -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == v2)
        try s.run("git worktree add -q --detach ../fresh HEAD", in: repo)
        #expect(Array(try s.bytes("fresh/model.safetensors")) == v2)
        try s.run("\"$T\" fsck", in: repo)
    }
}
