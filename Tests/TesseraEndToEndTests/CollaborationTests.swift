import Foundation
import Testing
import TesseraTestSupport

/// Issue 9: clone, work, push, as a newcomer does it, against a file:// remote and a real Git LFS HTTP server.
@Suite(.serialized) struct CollaborationTests {
    /// A published repository: a checkpoint and its config in a folder, pushed to `remote.git`. With `.http`, the
    /// objects go to a giftless server named in a committed `.lfsconfig` (as projects do), so every clone uses it.
    struct Published {
        let s: Sandbox
        let server: LFSServer?
        let v1: [UInt8]
    }

    func publish(_ kind: RemoteKind) throws -> Published {
        let s = try Sandbox()
        let server = kind == .http ? try LFSServer(storage: s.path("lfs-server")) : nil
        let repo = try s.makeRepository("origin-work")
        try s.run("git init -q --bare remote.git && git -C remote.git config uploadpack.allowFilter true")
        if let server {
            try s.run("git config -f .lfsconfig lfs.url \(server.url("models")) && git add .lfsconfig && git commit -qm 'lfs server'", in: repo)
        }
        let v1 = smallModel(layers: 4).encode()
        try FileManager.default.createDirectory(atPath: s.path("\(repo)/model"), withIntermediateDirectories: true)
        try Data(v1).write(to: URL(fileURLWithPath: s.path("\(repo)/model/model.safetensors")))
        try #"{"model_type": "test"}"#.write(toFile: s.path("\(repo)/model/config.json"), atomically: true, encoding: .utf8)
        try s.run("git add model && git commit -qm v1 && git remote add origin \"file://$PWD/../remote.git\" && git push -q -u origin main", in: repo)
        return Published(s: s, server: server, v1: v1)
    }

    func expectCheckedOut(_ p: Published, _ clone: String, _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(Array(try p.s.bytes("\(clone)/model/model.safetensors")) == expected, "worktree is not the checkpoint", sourceLocation: sourceLocation)
        #expect(try p.s.run("git status --porcelain", in: clone).stdout.isEmpty, "git status is not clean", sourceLocation: sourceLocation)
    }

    @Test(arguments: RemoteKind.allCases) func cloneThenInstallChecksOutTheRealFiles(_ kind: RemoteKind) throws {
        let p = try publish(kind)
        // No tessera configured for the clone: git leaves the manifests, and status is clean.
        try p.s.run("git clone -q \"file://$PWD/remote.git\" clone")
        #expect(try p.s.run("head -c 17 model/model.safetensors", in: "clone").stdout == "tessera-manifest ")
        // The README's step: `tessera install` in the clone fetches and checks them out.
        let out = try p.s.run("\"$T\" install", in: "clone").stdout
        #expect(out.contains("checked out model/model.safetensors"), "\(out)")
        try expectCheckedOut(p, "clone", p.v1)
        // A second run has nothing to do; `tessera pull` neither.
        #expect(!(try p.s.run("\"$T\" install", in: "clone").stdout.contains("checked out")))
        #expect(try p.s.run("\"$T\" pull", in: "clone").stdout.contains("every tracked file is checked out"))
    }

    @Test(arguments: RemoteKind.allCases) func aGlobalInstallMakesClonesThatPushTheirTensors(_ kind: RemoteKind) throws {
        let p = try publish(kind)
        try p.s.run("\"$T\" install --global")
        try p.s.run("git clone -q \"file://$PWD/remote.git\" clone")
        try expectCheckedOut(p, "clone", p.v1)
        // The filter installed the hooks when it first ran in the clone.
        let hook = try String(contentsOfFile: p.s.path("clone/.git/hooks/pre-push"), encoding: .utf8)
        #expect(hook.contains("tessera-hook"))
        // Work and push a new branch from the clone; a second clone gets every byte.
        let v2 = smallModel(layers: 4, changed: [2]).encode()
        try Data(v2).write(to: URL(fileURLWithPath: p.s.path("clone/model/model.safetensors")))
        try p.s.run("git switch -q -c tuned && git commit -qam tuned && git push -q origin tuned", in: "clone")
        try p.s.run("git clone -q -b tuned \"file://$PWD/remote.git\" second")
        try expectCheckedOut(p, "second", v2)
        try p.s.run("\"$T\" fsck", in: "second")
    }

    @Test(arguments: RemoteKind.allCases) func tesseraPushRepairsARemoteThatGotCommitsWithoutTensors(_ kind: RemoteKind) throws {
        let p = try publish(kind)
        try p.s.run("git clone -q \"file://$PWD/remote.git\" clone && cd clone && \"$T\" install >/dev/null")
        let v2 = smallModel(layers: 4, changed: [0, 3]).encode()
        try Data(v2).write(to: URL(fileURLWithPath: p.s.path("clone/model/model.safetensors")))
        // Pushed around the hook: the commits arrive, their two new tensors do not.
        try p.s.run("git commit -qam tuned && git push -q --no-verify origin main", in: "clone")
        let broken = try p.s.run("\"$T\" install --global >/dev/null && git clone -q \"file://$PWD/remote.git\" broken", check: false)
        #expect(broken.status != 0 && broken.stderr.contains("tessera:"), "\(broken.stderr)")
        // `tessera push` offers every object of the history and says what was really sent.
        let push = try p.s.run("\"$T\" push", in: "clone").stdout
        #expect(push.contains("sent 2 object(s)"), "\(push)")
        #expect(try p.s.run("\"$T\" push", in: "clone").stdout.contains("sent 0 object(s)"))
        try p.s.run("git clone -q \"file://$PWD/remote.git\" fixed")
        try expectCheckedOut(p, "fixed", v2)
    }

    @Test(arguments: [true, false]) func gitLFSAndTesseraInstallInEitherOrderAndPushBoth(_ lfsFirst: Bool) throws {
        let s = try Sandbox()
        let first = lfsFirst ? "git lfs install" : "\"$T\" install"
        let second = lfsFirst ? "\"$T\" install" : "git lfs install"
        try s.run("git init -q repo && cd repo && \(first) >/dev/null && \(second) >/dev/null")
        let hooks = try s.run("ls .git/hooks | grep -v sample", in: "repo").stdout
        #expect(hooks.contains("pre-push") && hooks.contains("pre-commit") && hooks.contains("post-checkout"), "\(hooks)")
        // Both kinds of files in one repository, pushed by one `git push`.
        try s.run("\"$T\" track '*.safetensors' >/dev/null && git lfs track '*.bin' >/dev/null", in: "repo")
        try smallModel(layers: 2).write(to: s.path("repo/model.safetensors"))
        try s.run("head -c 50000 /dev/urandom > data.bin && git add . && git commit -qm both", in: "repo")
        try s.run("git init -q --bare remote.git && cd repo && git remote add origin \"file://$PWD/../remote.git\" && git push -q -u origin main")
        try s.run("\"$T\" install --global >/dev/null && git lfs install --skip-repo >/dev/null && git clone -q \"file://$PWD/remote.git\" clone")
        #expect(try s.bytes("clone/model.safetensors") == s.bytes("repo/model.safetensors"))
        #expect(try s.bytes("clone/data.bin") == s.bytes("repo/data.bin"))
        // And uninstalling tessera gives git-lfs its own hook back.
        try s.run("\"$T\" uninstall >/dev/null && grep -q 'git lfs pre-push' .git/hooks/pre-push && ! grep -q tessera .git/hooks/pre-push", in: "repo")
    }

    @Test func aPartialCloneAnswersLikeAFullOne() throws {
        let p = try publish(.file)
        try Data(smallModel(layers: 4, changed: [1]).encode()).write(to: URL(fileURLWithPath: p.s.path("origin-work/model/model.safetensors")))
        try p.s.run("git commit -qam 'tune layer 1' && git push -q", in: "origin-work")
        try p.s.run("\"$T\" install --global >/dev/null")
        try p.s.run("git clone -q \"file://$PWD/remote.git\" full && git clone -q --filter=blob:none \"file://$PWD/remote.git\" partial")
        let full = try p.s.run("\"$T\" log model/model.safetensors", in: "full").stdout
        let partial = try p.s.run("\"$T\" log model/model.safetensors", in: "partial").stdout
        #expect(full == partial && full.contains("1 changed"), "full:\n\(full)\npartial:\n\(partial)")
        let ls = try p.s.run("\"$T\" ls HEAD~1:model/model.safetensors", in: "partial").stdout
        #expect(ls.contains("layers.1.weight"), "\(ls)")
        try p.s.run("\"$T\" merge --method linear HEAD~1:model/model.safetensors HEAD:model/model.safetensors -o ../merged.safetensors", in: "partial")
        try p.s.run("\"$T\" fsck", in: "partial")
    }

    @Test func installNamesTesseraByItsNameWhenItIsOnThePath() throws {
        let s = try Sandbox()
        try s.run("mkdir bin && ln -s \"$T\" bin/tessera && git init -q repo")
        let r = try s.run("PATH=\"$PWD/../bin:$PATH\" tessera install", in: "repo")
        #expect(!r.stderr.contains("not the `tessera` on your PATH"), "\(r.stderr)")
        #expect(try s.run("git config filter.tessera.process", in: "repo").stdout == "tessera filter-process\n")
        // Run from elsewhere (not the PATH's tessera), it writes its absolute path and says why.
        let r2 = try s.run("PATH=/usr/bin:/bin \"$T\" install", in: "repo")
        #expect(r2.stderr.contains("absolute path"), "\(r2.stderr)")
    }
}
