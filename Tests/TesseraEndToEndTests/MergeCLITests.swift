import Foundation
import Testing
import TesseraTestSupport

/// `tessera merge --config` on mergekit's own configs, and `tessera taskvec`, against the outputs mergekit and the
/// task-vectors code produced (Tests/Fixtures/reference/merge), through the command line users run.
@Suite struct MergeCLITests {
    let reference = PackagePaths.fixtures + "/reference/merge"

    func tensorBytes(_ path: String) throws -> [String: (dtype: String, bytes: Data)] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as! [String: Any]
        var out: [String: (String, Data)] = [:]
        for (name, v) in header where name != "__metadata__" {
            let info = v as! [String: Any]
            let off = info["data_offsets"] as! [Int]
            out[name] = (info["dtype"] as! String, data.subdata(in: (8 + n + off[0])..<(8 + n + off[1])))
        }
        return out
    }

    func expectClose(_ produced: String, _ expected: String, prefix: String = "", sourceLine: Int = #line) throws {
        let a = try tensorBytes(produced), b = try tensorBytes(expected)
        #expect(!a.isEmpty)
        for (name, t) in a {
            let r = try #require(b[prefix + name], "\(prefix + name) missing from the reference (line \(sourceLine))")
            if t.dtype == "BF16" {
                #expect(t.bytes == r.bytes, "\(name): bf16 values differ (line \(sourceLine))")
                continue
            }
            let x = t.bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let y = r.bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            #expect(x.count == y.count)
            // Max-norm relative error (as the merge library's own reference tests measure it): entries that come out
            // of cancellation are tiny, so an elementwise relative error would measure rounding, not the method.
            let err = zip(x, y).map { abs(Double($0) - Double($1)) }.max() ?? 0
            let scale = y.map { abs(Double($0)) }.max() ?? 0
            #expect(err <= 1e-6 * max(scale, 1e-12), "\(name): max |difference| \(err), max |reference| \(scale) (line \(sourceLine))")
        }
    }

    @Test(arguments: ["linear_uniform", "linear_uniform_bf16", "linear_weighted_0.5_0.3_0.2", "ties_density0.2", "ties_density0.5",
                      "task_arithmetic_lambda0.5", "task_arithmetic_negate_ft1_lambda-1", "slerp_base_ft1_t0.3"])
    func mergekitConfigsRunUnchanged(name: String) throws {
        let s = try Sandbox()
        try s.run("\"$T\" merge --config mergekit/configs/\(name).yaml -o \"\(s.path("out.safetensors"))\"", in: reference)
        try expectClose(s.path("out.safetensors"), "\(reference)/mergekit/\(name).safetensors")
        // The output says how it was made.
        let meta = try s.run("python3 -c \"import json,struct,sys; b=open('out.safetensors','rb').read(); n=struct.unpack('<Q',b[:8])[0]; print(json.loads(b[8:8+n])['__metadata__']['tessera.merge.method'])\"").stdout
        #expect(!meta.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
    }

    @Test func taskVectorsNegationAndSums() throws {
        let s = try Sandbox()
        let i = "\(reference)/inputs"
        try s.run("\"$T\" taskvec compute --base \(i)/base.safetensors --finetuned \(i)/ft1.safetensors -o tau1.safetensors")
        try expectClose(s.path("tau1.safetensors"), "\(reference)/task_vectors/task_vectors_reference.safetensors", prefix: "tau1.")
        try s.run("\"$T\" taskvec apply --base \(i)/base.safetensors --negate tau1.safetensors -o neg.safetensors")
        try expectClose(s.path("neg.safetensors"), "\(reference)/task_vectors/task_vectors_reference.safetensors", prefix: "neg_tau1.apply_to_scaling1.0.")
        try s.run("\"$T\" taskvec apply --base \(i)/base.safetensors --finetuned \(i)/ft1.safetensors=1 --finetuned \(i)/ft2.safetensors=1 --finetuned \(i)/ft3.safetensors=1 --scale 0.5 -o sum.safetensors")
        try expectClose(s.path("sum.safetensors"), "\(reference)/task_vectors/task_vectors_reference.safetensors", prefix: "sum_tau123.apply_to_scaling0.5.")
    }

    /// Checks out.safetensors' recorded input hashes against Python's hashlib over the inputs' bytes: prints the
    /// number of inputs, of matching hashes and of wrong ones.
    static func checkRecordedHashes(in s: Sandbox) throws -> String {
        try s.run("""
            python3 -c '
            import hashlib, json, struct
            def header(b): n = struct.unpack("<Q", b[:8])[0]; return n, json.loads(b[8:8 + n])
            n, h = header(open("out.safetensors", "rb").read())
            recorded = json.loads(h["__metadata__"]["tessera.merge.input_hashes"])
            good = bad = 0
            for path, entry in recorded.items():
                b = open(path, "rb").read(); k, t = header(b)
                for name, digest in entry.get("hashes", entry).items():
                    o = t[name]["data_offsets"]
                    if hashlib.sha256(b[8 + k + o[0]:8 + k + o[1]]).hexdigest() == digest: good += 1
                    else: bad += 1
            print(len(recorded), good, bad)'
            """).stdout
    }

    /// The provenance records each input tensor's SHA-256, hashed on a second core beside the merge (TIES reads arrays,
    /// and the hasher reads the file's range again; linear maps the files, and the hasher reads that mapping); checked
    /// here against Python's hashlib over the files' bytes.
    @Test(arguments: [("ties", "--base {i}/base.safetensors {i}/ft1.safetensors {i}/ft2.safetensors --densities 0.5,0.5", "3 9 0"),
                      ("linear", "{i}/ft1.safetensors {i}/ft2.safetensors", "2 6 0")])
    func provenanceHashesAreTheInputsSHA256(method: String, inputs: String, expected: String) throws {
        let s = try Sandbox()
        let i = "\(reference)/inputs"
        try s.run("\"$T\" merge --method \(method) \(inputs.replacingOccurrences(of: "{i}", with: i)) -o out.safetensors")
        let check = try Self.checkRecordedHashes(in: s)
        #expect(check.trimmingCharacters(in: .whitespacesAndNewlines) == expected, "\(check)")
    }

    /// Large tensors take the paths small ones do not: mapped inputs, hashes computed two at a time (the same tensor
    /// of two inputs), a third input's tensor hashed alone, and tensors of equal length within one file. The recorded
    /// hashes are checked against Python's hashlib.
    @Test func provenanceHashesOfLargeTensorsAreTheInputsSHA256() throws {
        let s = try Sandbox()
        try s.run("""
            python3 -c '
            import json, os, struct
            def finite(n):  # random float32 bits with the top exponent bit clear: finite, |x| < 2
                b = bytearray(os.urandom(4 * n)); b[3::4] = bytes(x & 0x3F for x in b[3::4]); return bytes(b)
            shapes = {"a": 1500000, "b": 1500000, "c": 7, "d": 300001}
            for f in ("m1", "m2", "m3"):
                header, data, at = {}, b"", 0
                for name, n in shapes.items():
                    header[name] = {"dtype": "F32", "shape": [n], "data_offsets": [at, at + 4 * n]}; data += finite(n); at += 4 * n
                h = json.dumps(header).encode(); h += b" " * (-len(h) % 8)
                open(f + ".safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)'
            """)
        try s.run("\"$T\" merge --method linear m1.safetensors m2.safetensors m3.safetensors -o out.safetensors")
        let check = try Self.checkRecordedHashes(in: s)
        #expect(check.trimmingCharacters(in: .whitespacesAndNewlines) == "3 12 0", "\(check)")
    }

    @Test func badMergeInputsGiveOneClearLine() throws {
        let s = try Sandbox()
        let i = "\(reference)/inputs"
        let r = try s.run("\"$T\" merge --method ties --base \(i)/base.safetensors \(i)/ft1.safetensors \(i)/ft2.safetensors --densities 0,0.5 -o out.safetensors", check: false)
        #expect(r.status != 0 && r.stderr.hasPrefix("tessera: ") && r.stderr.contains("density"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: s.path("out.safetensors")))
        let shape = try s.run("\"$T\" merge --method linear \(i)/ft1.safetensors \(i)/edge_tv.safetensors -o out.safetensors", check: false)
        #expect(shape.status != 0 && shape.stderr.hasPrefix("tessera: "), "\(shape.stderr)")
    }
}
