import Foundation
import Testing

public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String

    public init(status: Int32, stdout: String, stderr: String) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }
}

public struct CommandFailed: Error, CustomStringConvertible {
    public var command: String
    public var result: CommandResult

    public init(command: String, result: CommandResult) {
        self.command = command
        self.result = result
    }

    public var description: String { "`\(command)` exited \(result.status):\n\(result.stdout)\n\(result.stderr)" }
}

/// A scratch directory with an isolated HOME (no user or system git config leaks into tests).
public final class Sandbox {
    public let root: String

    public init() throws {
        root = NSTemporaryDirectory() + "tessera-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: root + "/home", withIntermediateDirectories: true)
        try "[user]\n\tname = Tessera Test\n\temail = test@tessera.invalid\n[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n"
            .write(toFile: root + "/home/.gitconfig", atomically: true, encoding: .utf8)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    public var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["HOME"] = root + "/home"
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        env["GIT_TERMINAL_PROMPT"] = "0"
        env["LC_ALL"] = "C"
        // A crashing tessera must show up as a failure, not as a hang: Swift's crash backtracer, left on, can keep
        // the crashed process's pipes open long after it died, and the test would wait for their end forever.
        env["SWIFT_BACKTRACE"] = "enable=no"
        // Tests run side by side on few cores; OpenBLAS threads that spin-wait for each other across processes can
        // slow an evaluation down a hundredfold. One BLAS thread per tessera process keeps the suite's time steady.
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.removeValue(forKey: "GIT_DIR")
        env.removeValue(forKey: "GIT_WORK_TREE")
        return env
    }

    /// Runs a shell command line in `directory` (relative to the sandbox root, or absolute), with `$T` naming the
    /// tessera binary under test.
    /// A command that dies of a signal, or makes git report that a filter, driver or hook did (git says "died of
    /// signal"), fails the test even with `check: false`: expecting an error must never accept a crash. Tests that
    /// kill a process on purpose pass `expectKilled: true`.
    @discardableResult
    public func run(_ command: String, in directory: String = "", input: String? = nil, check: Bool = true,
             expectKilled: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        p.currentDirectoryURL = URL(fileURLWithPath: directory.hasPrefix("/") ? directory : root + "/" + directory)
        var env = environment
        env["T"] = tesseraBinary
        p.environment = env
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = input == nil ? FileHandle.nullDevice : inp
        try p.run()
        if let input { inp.fileHandleForWriting.write(Data(input.utf8)); try? inp.fileHandleForWriting.close() }
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box()
        let g = DispatchGroup()
        g.enter()
        let eh = err.fileHandleForReading
        DispatchQueue.global().async { errBox.data = eh.readDataToEndOfFile(); g.leave() }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        g.wait()
        p.waitUntilExit()
        let r = CommandResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: errBox.data, as: UTF8.self))
        if !expectKilled {
            // sh reports a child killed by signal N as 128 + N; git's own fatal errors exit with exactly 128.
            let killed = r.status > 128 && r.status < 128 + 65
            if killed || r.stderr.contains("died of signal") || r.stderr.contains("Segmentation fault") {
                Issue.record("`\(command)` crashed (exit \(r.status)):\n\(r.stderr)", sourceLocation: sourceLocation)
            }
        }
        if check && r.status != 0 { throw CommandFailed(command: command, result: r) }
        return r
    }

    public func path(_ relative: String) -> String { root + "/" + relative }

    public func bytes(_ relative: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path(relative))) }

    /// A new repository with Tessera installed and "*.safetensors" tracked (attributes committed).
    public func makeRepository(_ name: String = "repo") throws -> String {
        try run("git init -q \(name) && cd \(name) && \"$T\" track '*.safetensors' >/dev/null && git add .gitattributes && git commit -qm 'track checkpoints'")
        return name
    }

    /// Number of files in the repository's object store.
    public func objectCount(_ repo: String) -> Int {
        let dir = path(repo) + "/.git/tessera/objects"
        guard let e = FileManager.default.enumerator(atPath: dir) else { return 0 }
        var n = 0
        while let f = e.nextObject() as? String { if f.count == 65 { n += 1 } }
        return n
    }

    public func storeBytes(_ repo: String) -> Int {
        let dir = path(repo) + "/.git/tessera/objects"
        guard let e = FileManager.default.enumerator(atPath: dir) else { return 0 }
        var n = 0
        while let f = e.nextObject() as? String {
            if let s = try? FileManager.default.attributesOfItem(atPath: dir + "/" + f)[.size] as? Int, f.count == 65 { n += s }
        }
        return n
    }
}
