import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraTestSupport

/// Commands that write checkpoints (merge, taskvec), run in process, inside a repository and outside.
@Suite struct CheckpointCommandTests {
    @Test func mergeOfFilesAndRevisions() throws {
        let s = try Sandbox()
        let repo = try s.repositoryWithHistory(layers: 2)
        let out = s.path("merged.safetensors")
        let run = tesseraSucceeds("merge", "--method", "linear", "HEAD~1:model.safetensors", "HEAD:model.safetensors", "-o", out, "-C", repo)
        #expect(run.stdout.hasPrefix("merged 3 tensors (8256 parameters) with linear into \(out) in "), "\(run.stdout)")
        let merged = try Checkpoints.tensors(out)
        let a = smallModel(layers: 2).entries, b = smallModel(layers: 2, changed: [1]).entries
        #expect(merged["layers.0.weight"]?.bytes == Data(a[0].bytes))  // the same in both: itself
        let average = zip(Checkpoints.values(ReadTensor(dtype: "F32", shape: [64, 64], bytes: Data(a[1].bytes))),
                          Checkpoints.values(ReadTensor(dtype: "F32", shape: [64, 64], bytes: Data(b[1].bytes)))).map { ($0 + $1) / 2 }
        #expect(zip(Checkpoints.values(try #require(merged["layers.1.weight"])), average).allSatisfy { abs($0 - $1) <= 1e-7 })
        // Provenance names the inputs as given.
        #expect(try Checkpoints.metadata(out)["tessera.merge.method"] == "linear")
    }

    @Test func mergeRefusalsAreErrorsWithCodes() throws {
        let s = try Sandbox()
        try smallModel(layers: 1).write(to: s.path("a.safetensors"))
        let a = s.path("a.safetensors")
        // Usage errors of the command line exit 2, as `tessera` itself does.
        let noMethod = tessera("merge", a, "-o", s.path("m.safetensors"))
        #expect(noMethod.error != nil && noMethod.status == 2)
        let unknown = tessera("merge", "--method", "averaging", a, a, "-o", s.path("m.safetensors"))
        #expect(unknown.tesseraError != nil && unknown.status != 0, "\(String(describing: unknown.error))")
        let missing = tessera("merge", "--method", "linear", a, s.path("nothing.safetensors"), "-o", s.path("m.safetensors"))
        #expect(missing.tesseraError?.code == .notFound && missing.tesseraError?.message.contains("no such file or folder") == true)
        // REV:path outside a repository.
        let outside = tessera("merge", "--method", "linear", a, "HEAD:a.safetensors", "-o", s.path("m.safetensors"), "-C", s.root)
        #expect(outside.tesseraError?.code == .usage, "\(String(describing: outside.error))")
        #expect(!FileManager.default.fileExists(atPath: s.path("m.safetensors")))
    }

    @Test func taskVectorsComputedAndApplied() throws {
        let s = try Sandbox()
        try smallModel(layers: 2).write(to: s.path("base.safetensors"))
        try smallModel(layers: 2, changed: [0]).write(to: s.path("ft.safetensors"))
        let compute = tesseraSucceeds("taskvec", "compute", "--base", s.path("base.safetensors"), "--finetuned", s.path("ft.safetensors"),
                                      "-o", s.path("tau.safetensors"))
        #expect(compute.stdout.contains("3 tensors to \(s.path("tau.safetensors"))"), "\(compute.stdout)")
        let tau = try Checkpoints.tensors(s.path("tau.safetensors"))
        #expect(Checkpoints.values(try #require(tau["layers.1.weight"])).allSatisfy { $0 == 0 })
        tesseraSucceeds("taskvec", "apply", "--base", s.path("base.safetensors"), "--add", s.path("tau.safetensors"), "-o", s.path("again.safetensors"))
        let again = try Checkpoints.tensors(s.path("again.safetensors")), ft = try Checkpoints.tensors(s.path("ft.safetensors"))
        for name in ["layers.0.weight", "layers.1.weight", "head.bias"] {
            let x = Checkpoints.values(try #require(again[name])), y = Checkpoints.values(try #require(ft[name]))
            #expect(zip(x, y).allSatisfy { abs($0 - $1) <= 1e-7 }, "\(name)")
        }
        let none = tessera("taskvec", "apply", "--base", s.path("base.safetensors"), "-o", s.path("x.safetensors"))
        #expect(none.status == 2)
    }
}
