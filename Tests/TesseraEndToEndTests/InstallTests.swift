import Foundation
import Testing
import TesseraGit
import TesseraTestSupport

@Suite struct InstallTests {
    @Test func installChainsExistingHooksAndUninstallRestoresThem() throws {
        let s = try Sandbox()
        try s.run("git init -q repo")
        let userHook = "#!/bin/sh\necho user-pre-push-ran \"$1\" >> \"$(git rev-parse --git-dir)/user-hook.log\"\ncat >/dev/null\n"
        try userHook.write(toFile: s.path("repo/.git/hooks/pre-push"), atomically: true, encoding: .utf8)
        try s.run("chmod +x .git/hooks/pre-push", in: "repo")
        let out = try s.run("\"$T\" install", in: "repo").stdout
        #expect(out.contains("kept your pre-push hook"))
        #expect(try String(contentsOfFile: s.path("repo/.git/hooks/pre-push.tessera-chained"), encoding: .utf8) == userHook)
        #expect(try s.run("git config filter.tessera.process", in: "repo").stdout.hasSuffix(" filter-process\n"))
        #expect(try s.run("git config filter.tessera.required", in: "repo").stdout == "true\n")
        // Installing again changes nothing and never overwrites the chained hook.
        try s.run("\"$T\" install", in: "repo")
        #expect(try String(contentsOfFile: s.path("repo/.git/hooks/pre-push.tessera-chained"), encoding: .utf8) == userHook)
        // The chained hook still runs on push.
        try s.run("git init -q --bare remote.git && cd repo && \"$T\" track '*.safetensors' >/dev/null && git add .gitattributes && git commit -qm a && git push -q ../remote.git HEAD:refs/heads/main")
        #expect(try String(contentsOfFile: s.path("repo/.git/user-hook.log"), encoding: .utf8).contains("user-pre-push-ran"))
        // Uninstall removes config and hooks and puts the user's hook back.
        try s.run("\"$T\" uninstall", in: "repo")
        #expect(try String(contentsOfFile: s.path("repo/.git/hooks/pre-push"), encoding: .utf8) == userHook)
        #expect(try s.run("git config filter.tessera.process", in: "repo", check: false).status != 0)
        #expect(!FileManager.default.fileExists(atPath: s.path("repo/.git/hooks/post-checkout")))
    }

    @Test func globalInstallConfiguresTheUser() throws {
        let s = try Sandbox()
        try s.run("\"$T\" install --global")
        #expect(try s.run("git config --global filter.tessera.process").stdout.contains("filter-process"))
        try s.run("\"$T\" uninstall --global")
        #expect(try s.run("git config --global filter.tessera.process", check: false).status != 0)
    }

    @Test func trackAndUntrackEditGitattributes() throws {
        let s = try Sandbox()
        try s.run("git init -q repo")
        try s.run("\"$T\" track '*.safetensors' 'ckpt/**'", in: "repo")
        let attrs = try String(contentsOfFile: s.path("repo/.gitattributes"), encoding: .utf8)
        // A pattern that takes in PEFT adapter weights also sends adapter_config.json (kept as text) through tessera's diff.
        #expect(attrs == "*.safetensors filter=tessera diff=tessera merge=tessera -text\nckpt/** filter=tessera diff=tessera merge=tessera -text\nadapter_config.json !filter diff=tessera\n")
        #expect(try s.run("\"$T\" track", in: "repo").stdout == "*.safetensors\nckpt/**\n")
        try s.run("\"$T\" untrack 'ckpt/**'", in: "repo")
        #expect(try s.run("\"$T\" track", in: "repo").stdout == "*.safetensors\n")
    }

    @Test func forgettingInstallIsCaughtBeforeARawCheckpointIsCommitted() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        // The filter configuration is gone (e.g. a fresh clone before `tessera install`), the hooks are there.
        try s.run("git config --remove-section filter.tessera", in: repo)
        var big = TestCheckpoint()
        for i in 0..<2 { big.add("w\(i)", shape: [512, 512], seed: UInt64(i + 1)) }
        try big.write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors", in: repo)
        let r = try s.run("git commit -qm raw", in: repo, check: false)
        #expect(r.status != 0)
        #expect(r.stderr.contains("tessera: model.safetensors") && r.stderr.contains("tessera install"), "\(r.stderr)")
        #expect(try s.run("git rev-list --count HEAD", in: repo).stdout == "1\n")
    }

    @Test func hookScriptsInTheRepositoryMatchWhatInstallWrites() throws {
        for name in GitHooks.names {
            let committed = try String(contentsOfFile: "\(packageRoot)/hooks/\(name)", encoding: .utf8)
            #expect(committed == GitHooks.script(name), "hooks/\(name) is out of date: regenerate it with scripts/write-hooks.sh")
        }
        // Hooks of earlier versions are gone from the repository's hooks/ folder too.
        for name in ["post-checkout", "post-merge"] { #expect(!FileManager.default.fileExists(atPath: "\(packageRoot)/hooks/\(name)")) }
    }
}

@Suite struct MaintenanceTests {
    @Test func lsLogFsckAndGc() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try smallModel(layers: 3).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors && git commit -qm base", in: repo)
        try smallModel(layers: 3, changed: [2]).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git commit -qam 'change layer 2'", in: repo)

        let ls = try s.run("\"$T\" ls HEAD:model.safetensors", in: repo).stdout
        #expect(ls.contains("layers.2.weight  F32    [64,64]  16384"))
        #expect(ls.contains("bg4+zstd"))
        #expect(ls.contains("metadata:\n  format: pt"))

        let log = try s.run("\"$T\" log model.safetensors --tensor layers.2.weight", in: repo).stdout
        #expect(log.contains("change layer 2") && log.contains("base"))
        let log0 = try s.run("\"$T\" log model.safetensors --tensor layers.0.weight", in: repo).stdout
        #expect(!log0.contains("change layer 2") && log0.contains("base"))

        // An unreachable object (a staged version that was never committed) is deleted by gc, nothing else is.
        try smallModel(layers: 3, changed: [0]).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git add model.safetensors", in: repo)
        let before = s.objectCount(repo)
        // Still staged: reachable through the index.
        #expect(try s.run("\"$T\" gc --prune now", in: repo).stdout.contains("deleted 0 unreachable"))
        try s.run("git reset -q --hard && rm -rf .git/tessera/statcache", in: repo)
        let gc = try s.run("\"$T\" gc --prune now", in: repo).stdout
        #expect(gc.contains("deleted 1 unreachable"), "\(gc)")
        #expect(s.objectCount(repo) == before - 1)
        try s.run("\"$T\" fsck", in: repo)
        try s.run("git checkout -q HEAD~1 -- model.safetensors && git checkout -q HEAD -- model.safetensors", in: repo)

        // Stashed versions are reachable (through the stash reflog) and survive gc.
        try smallModel(layers: 3, changed: [1]).write(to: s.path("\(repo)/model.safetensors"))
        let stashed = Array(try s.bytes("\(repo)/model.safetensors"))
        try s.run("git stash -q && rm -rf .git/tessera/statcache && \"$T\" gc --prune now && git stash pop -q", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == stashed)
    }
}
