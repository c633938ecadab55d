import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraTestSupport

/// track, untrack, install and uninstall, run in process. (They configure git to run the binary that runs them, here
/// the test runner: these repositories never run the filter.)
@Suite struct SetupCommandTests {
    @Test func trackInstallsAndEditsGitattributes() throws {
        let s = try Sandbox()
        try s.run("git init -q repo")
        let repo = s.path("repo")
        let none = tesseraSucceeds("track", "-C", repo)
        #expect(none.stdout == "no patterns are tracked; try: tessera track \"*.safetensors\"\n")
        let track = tesseraSucceeds("track", "*.safetensors", "weights/**", "-C", repo)
        #expect(track.stdout == "installed tessera in this repository (git config and hooks)\ntracking *.safetensors\ntracking weights/**\n", "\(track.stdout)")
        let attributes = try String(contentsOfFile: repo + "/.gitattributes", encoding: .utf8)
        #expect(attributes.contains("*.safetensors filter=tessera diff=tessera merge=tessera -text"))
        #expect(try s.run("git config filter.tessera.process", in: "repo").stdout.hasSuffix(" filter-process\n"))
        #expect(tesseraSucceeds("track", "*.safetensors", "-C", repo).stdout == "*.safetensors is already tracked\n")
        #expect(tesseraSucceeds("track", "-C", repo).stdout == "*.safetensors\nweights/**\n")
        #expect(tesseraSucceeds("untrack", "weights/**", "*.bin", "-C", repo).stdout == "untracked weights/**\n*.bin was not tracked\n")
        let uninstall = tesseraSucceeds("uninstall", "-C", repo)
        #expect(uninstall.stdout.contains("removed [filter.tessera]"), "\(uninstall.stdout)")
        #expect(try s.run("git config filter.tessera.process", in: "repo", check: false).status != 0)
        #expect(tesseraSucceeds("uninstall", "-C", repo).stdout.hasPrefix("nothing to uninstall"))
    }

    @Test func installInARepositoryAndOutside() throws {
        let s = try Sandbox()
        try s.run("git init -q repo")
        let install = tesseraSucceeds("install", "--skip-checkout", "-C", s.path("repo"))
        #expect(install.stdout.contains("filter.tessera.required = true"), "\(install.stdout)")
        #expect(FileManager.default.fileExists(atPath: s.path("repo/.git/hooks/pre-push")))
        let outside = tessera("install", "-C", s.root)
        #expect(outside.tesseraError?.code == .git && outside.status == 1)
        #expect(tessera("uninstall", "-C", s.root).tesseraError?.code == .usage)
        #expect(tessera("track", "*.bin", "-C", s.root).tesseraError?.code == .git)
    }
}
