import Foundation
import Testing
import TesseraTestSupport

/// Hostile and broken input: one clear line from tessera, git's state consistent, no partial object visible.
@Suite struct BadInputTests {
    /// Adds `bytes` as bad.safetensors, expects failure, and checks that nothing half-done is visible.
    func expectRejected(_ bytes: [UInt8], mentioning fragments: [String], sourceLine: Int = #line) throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        try Data(bytes).write(to: URL(fileURLWithPath: s.path("\(repo)/bad.safetensors")))
        let r = try s.run("git add bad.safetensors", in: repo, check: false)
        #expect(r.status != 0, "git add accepted a bad file (line \(sourceLine))")
        let ours = r.stderr.split(separator: "\n").filter { $0.hasPrefix("tessera: ") }
        #expect(ours.count == 1, "expected one tessera line, got: \(r.stderr) (line \(sourceLine))")
        let line = String(ours.first ?? "")
        #expect(line.contains("bad.safetensors"), "\(line)")
        for f in fragments { #expect(line.contains(f), "'\(f)' not in: \(line) (line \(sourceLine))") }
        // What to do is said too (after the ';').
        #expect(line.contains(";"), "no hint in: \(line)")
        // Nothing was staged, nothing partial is in the store.
        #expect(try s.run("git ls-files --stage bad.safetensors", in: repo).stdout.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.path("\(repo)/.git/tessera/tmp")).isEmpty)
        try s.run("\"$T\" fsck --unreachable", in: repo)
    }

    var good: TestCheckpoint { smallModel(layers: 3) }

    @Test func truncatedFile() throws {
        let b = good.encode()
        try expectRejected(Array(b[0..<(b.count - 1000)]), mentioning: ["truncated", "layers.2.weight"])
    }

    @Test func headerLongerThanTheFile() throws {
        var b = Array(good.encode()[0..<200])
        b[0] = 0x00; b[1] = 0x10  // header length 4096 > file
        b[2...7] = [0, 0, 0, 0, 0, 0]
        try expectRejected(b, mentioning: ["header length 4096 is longer than the file"])
    }

    @Test func overlappingOffsets() throws {
        let json = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#
        try expectRejected(TestCheckpoint.withHeader(json, data: [UInt8](repeating: 1, count: 24)), mentioning: ["overlap", "'a'", "'b'"])
    }

    @Test func offsetsOutOfRange() throws {
        let json = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[1000,1008]}}"#
        try expectRejected(TestCheckpoint.withHeader(json, data: [UInt8](repeating: 1, count: 16)), mentioning: ["'b'"])
    }

    @Test func shapeTimesDtypeDisagreesWithByteLength() throws {
        let json = #"{"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,32]}}"#
        try expectRejected(TestCheckpoint.withHeader(json, data: [UInt8](repeating: 1, count: 32)), mentioning: ["'w'", "36 bytes", "32 bytes"])
    }

    @Test func invalidJSONHeader() throws {
        let json = #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},,}"#
        try expectRejected(TestCheckpoint.withHeader(json, data: [1, 2, 3, 4]), mentioning: ["JSON header is invalid"])
    }

    @Test func duplicateTensorNames() throws {
        let json = #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        try expectRejected(TestCheckpoint.withHeader(json, data: [UInt8](repeating: 0, count: 8)), mentioning: ["duplicate", "\"w\""])
    }

    @Test func tensorNameWithPathCharacters() throws {
        let json = #"{"../../etc/passwd":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        try expectRejected(TestCheckpoint.withHeader(json, data: [0, 0, 0, 0]), mentioning: ["path characters"])
    }

    @Test func missingAndCorruptObjectsAtCheckout() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        let v1 = smallModel(layers: 3).encode()
        try Data(v1).write(to: URL(fileURLWithPath: s.path("\(repo)/model.safetensors")))
        try s.run("git add model.safetensors && git commit -qm v1", in: repo)
        try smallModel(layers: 3, changed: [1]).write(to: s.path("\(repo)/model.safetensors"))
        try s.run("git commit -qam v2", in: repo)
        let v2 = Array(try s.bytes("\(repo)/model.safetensors"))
        // The object only v1 has: layers.1.weight's old value.
        let old = objectsByName(try s.run("\"$T\" ls HEAD~1:model.safetensors --json", in: repo).stdout)["layers.1.weight"]!
        let objectPath = ".git/tessera/objects/\(old.prefix(2))/\(old.dropFirst(2))"

        // Corrupt: one flipped byte.
        try s.run("chmod u+w \(objectPath) && printf '\\377' | dd of=\(objectPath) bs=1 seek=100 conv=notrunc 2>/dev/null", in: repo)
        var r = try s.run("git checkout HEAD~1 -- model.safetensors", in: repo, check: false)
        #expect(r.status != 0)
        var ours = r.stderr.split(separator: "\n").filter { $0.hasPrefix("tessera: ") }
        #expect(ours.count == 1 && ours[0].contains("corrupt") && ours[0].contains("layers.1.weight") && ours[0].contains("model.safetensors"), "\(r.stderr)")
        // git removes the file before it asks for the new content; the index still holds v2, and checking v2 out
        // again restores it: nothing is half-written, nothing is lost.
        #expect(try s.run("git diff --cached --name-only", in: repo).stdout.isEmpty)
        try s.run("git checkout -q -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == v2, "v2 could not be restored")
        let fsck = try s.run("\"$T\" fsck", in: repo, check: false)
        #expect(fsck.status != 0 && fsck.stdout.contains("corrupt \(old)"))

        // Missing (and no remote to fetch it from).
        try s.run("rm -f \(objectPath)", in: repo)
        r = try s.run("git checkout HEAD~1 -- model.safetensors", in: repo, check: false)
        #expect(r.status != 0)
        ours = r.stderr.split(separator: "\n").filter { $0.hasPrefix("tessera: ") }
        #expect(ours.count == 1 && ours[0].contains("model.safetensors") && ours[0].contains("fetch"), "\(r.stderr)")
        try s.run("git checkout -q -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == v2)
    }

    @Test func fullDiskDuringAdd() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        // A real full disk: the store on a 256 KB tmpfs (needs mount privileges, which CI's root has).
        let mounted = try s.run("mount -t tmpfs -o size=256k tmpfs .git/tessera", in: repo, check: false)
        try #require(mounted.status == 0, "cannot mount a tmpfs here: \(mounted.stderr)")
        defer { _ = try? s.run("umount .git/tessera", in: repo, check: false) }
        try s.run("\"$T\" fsck >/dev/null", in: repo)  // recreates the store layout on the small disk
        var big = TestCheckpoint()
        for i in 0..<4 { big.add("w\(i)", shape: [256, 256], seed: UInt64(i + 1)) }
        try big.write(to: s.path("\(repo)/model.safetensors"))
        let r = try s.run("git add model.safetensors", in: repo, check: false)
        #expect(r.status != 0)
        let ours = r.stderr.split(separator: "\n").filter { $0.hasPrefix("tessera: ") }
        #expect(ours.count == 1 && ours[0].contains("No space left on device") && ours[0].contains("free disk space"), "\(r.stderr)")
        #expect(try s.run("git ls-files --stage model.safetensors", in: repo).stdout.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.path("\(repo)/.git/tessera/tmp")).isEmpty)
        try s.run("\"$T\" fsck --unreachable", in: repo)
        // With space again, the same add succeeds and round-trips.
        try s.run("umount .git/tessera", in: repo)
        try s.run("git add model.safetensors && git commit -qm ok && rm model.safetensors && git checkout -q -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == big.encode())
    }

    @Test func filterKilledMidAdd() throws {
        let s = try Sandbox()
        let repo = try s.makeRepository()
        var big = TestCheckpoint()
        for i in 0..<96 { big.add("w\(i)", shape: [512, 512], seed: UInt64(i + 1)) }  // 96 MB
        try big.write(to: s.path("\(repo)/model.safetensors"))
        // Start the add, wait until the filter is writing objects (temporary files appear), then kill it.
        let r = try s.run("""
            git add model.safetensors & pid=$!
            killed=no
            for i in $(seq 1 2000); do
              n=$(ls .git/tessera/tmp 2>/dev/null | wc -l)
              if [ "$n" -ge 2 ]; then
                # Only this repository's filter (other tests run theirs at the same time).
                for p in $(pgrep -f 'filter-proces[s]'); do [ "$(readlink /proc/$p/cwd)" = "$(pwd -P)" ] && kill -9 $p && killed=yes; done
                break
              fi
              sleep 0.005
            done
            wait $pid; echo "add exit $? killed $killed"
            """, in: repo, check: false, expectKilled: true)
        #expect(r.stdout.contains("killed yes") && !r.stdout.contains("add exit 0"), "\(r.stdout) \(r.stderr)")
        #expect(try s.run("git ls-files --stage model.safetensors", in: repo).stdout.isEmpty)
        // Complete objects are valid; a half-written one can only be a temporary file, which gc removes.
        try s.run("\"$T\" fsck --unreachable", in: repo)
        try s.run("\"$T\" gc --prune now", in: repo)
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.path("\(repo)/.git/tessera/tmp")).isEmpty)
        try s.run("git add model.safetensors && git commit -qm ok && rm model.safetensors && git checkout -q -- model.safetensors", in: repo)
        #expect(Array(try s.bytes("\(repo)/model.safetensors")) == big.encode())
    }
}
