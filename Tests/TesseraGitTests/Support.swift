import Foundation
import Testing
import TesseraCore

/// The package root, from this file's path.
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// The tessera executable under test: $TESSERA_BIN, else the newest of .build/{release,debug}/tessera.
let tesseraBinary: String = {
    if let p = ProcessInfo.processInfo.environment["TESSERA_BIN"], FileManager.default.isExecutableFile(atPath: p) { return p }
    let candidates = ["release", "debug"].map { "\(packageRoot)/.build/\($0)/tessera" }
        .filter { FileManager.default.isExecutableFile(atPath: $0) }
    let newest = candidates.max { a, b in
        let da = (try? FileManager.default.attributesOfItem(atPath: a)[.modificationDate] as? Date) ?? .distantPast
        let db = (try? FileManager.default.attributesOfItem(atPath: b)[.modificationDate] as? Date) ?? .distantPast
        return da < db
    }
    return newest ?? "tessera"
}()

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

struct CommandFailed: Error, CustomStringConvertible {
    var command: String
    var result: CommandResult
    var description: String { "`\(command)` exited \(result.status):\n\(result.stdout)\n\(result.stderr)" }
}

/// A scratch directory with an isolated HOME (no user or system git config leaks into tests).
final class Sandbox {
    let root: String

    init() throws {
        root = NSTemporaryDirectory() + "tessera-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: root + "/home", withIntermediateDirectories: true)
        try "[user]\n\tname = Tessera Test\n\temail = test@tessera.invalid\n[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n"
            .write(toFile: root + "/home/.gitconfig", atomically: true, encoding: .utf8)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    var environment: [String: String] {
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

    /// Runs a shell command line in `directory` (relative to the sandbox root).
    @discardableResult
    /// A command that dies of a signal, or makes git report that a filter, driver or hook did (git says "died of
    /// signal"), fails the test even with `check: false`: expecting an error must never accept a crash. Tests that
    /// kill a process on purpose pass `expectKilled: true`.
    func run(_ command: String, in directory: String = "", input: String? = nil, check: Bool = true,
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

    func path(_ relative: String) -> String { root + "/" + relative }

    func bytes(_ relative: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path(relative))) }

    /// A new repository with Tessera installed and "*.safetensors" tracked (attributes committed).
    func makeRepository(_ name: String = "repo") throws -> String {
        try run("git init -q \(name) && cd \(name) && \"$T\" track '*.safetensors' >/dev/null && git add .gitattributes && git commit -qm 'track checkpoints'")
        return name
    }

    /// Number of files in the repository's object store.
    func objectCount(_ repo: String) -> Int {
        let dir = path(repo) + "/.git/tessera/objects"
        guard let e = FileManager.default.enumerator(atPath: dir) else { return 0 }
        var n = 0
        while let f = e.nextObject() as? String { if f.count == 65 { n += 1 } }
        return n
    }

    func storeBytes(_ repo: String) -> Int {
        let dir = path(repo) + "/.git/tessera/objects"
        guard let e = FileManager.default.enumerator(atPath: dir) else { return 0 }
        var n = 0
        while let f = e.nextObject() as? String {
            if let s = try? FileManager.default.attributesOfItem(atPath: dir + "/" + f)[.size] as? Int, f.count == 65 { n += s }
        }
        return n
    }
}

/// Independent checkpoint writer for tests: builds safetensors bytes by hand (not with Tessera's writer), with
/// control over header order, padding and gaps, so that tests can also produce malformed files.
struct TestCheckpoint {
    struct Entry {
        var name: String
        var dtype: String
        var shape: [Int]
        var bytes: [UInt8]
    }
    var entries: [Entry] = []
    var metadata: [String: String]? = ["format": "pt"]

    /// Deterministic pseudo-random float32 values (xorshift), so tests need no numpy.
    static func floats(_ n: Int, seed: UInt64, scale: Float = 0.02) -> [Float] {
        var s = seed &* 0x9E3779B97F4A7C15 | 1
        return (0..<n).map { _ in
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            return (Float(s % 2_000_001) / 1_000_000 - 1) * scale
        }
    }

    static func f32Bytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

    mutating func add(_ name: String, shape: [Int], seed: UInt64, dtype: String = "F32") {
        let n = shape.reduce(1, *)
        let values = TestCheckpoint.floats(n, seed: seed)
        let bytes: [UInt8]
        switch dtype {
        case "F32": bytes = TestCheckpoint.f32Bytes(values)
        case "BF16": bytes = values.flatMap { v -> [UInt8] in let b = v.bitPattern >> 16; return [UInt8(b & 0xFF), UInt8(b >> 8)] }
        case "F16", "I16", "U16": bytes = values.flatMap { v -> [UInt8] in let b = UInt16(truncatingIfNeeded: v.bitPattern >> 13); return [UInt8(b & 0xFF), UInt8(b >> 8)] }
        case "F64", "I64", "U64": bytes = values.flatMap { v -> [UInt8] in withUnsafeBytes(of: Double(v).bitPattern) { Array($0) } }
        case "I32", "U32": bytes = TestCheckpoint.f32Bytes(values)
        default: bytes = values.map { UInt8(truncatingIfNeeded: $0.bitPattern >> 20) }
        }
        entries.append(Entry(name: name, dtype: dtype, shape: shape, bytes: bytes))
    }

    /// The file: header keys in the given order, data in entry order, optional gap bytes after each tensor.
    func encode(gaps: [Int: [UInt8]] = [:], trailing: [UInt8] = []) -> [UInt8] {
        var header = "{"
        var parts: [String] = []
        if let metadata {
            parts.append("\"__metadata__\":{" + metadata.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",") + "}")
        }
        var offset = 0
        var data: [UInt8] = []
        for (k, e) in entries.enumerated() {
            parts.append("\"\(e.name)\":{\"dtype\":\"\(e.dtype)\",\"shape\":[\(e.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + e.bytes.count)]}")
            data += e.bytes
            offset += e.bytes.count
            if let g = gaps[k] { data += g; offset += g.count }
        }
        header += parts.joined(separator: ",") + "}"
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var out: [UInt8] = []
        var n = UInt64(h.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        return out + h + data + trailing
    }

    static func withHeader(_ json: String, data: [UInt8]) -> [UInt8] {
        let h = Array(json.utf8)
        var out: [UInt8] = []
        var n = UInt64(h.count)
        for _ in 0..<8 { out.append(UInt8(n & 0xFF)); n >>= 8 }
        return out + h + data
    }

    func write(to path: String, gaps: [Int: [UInt8]] = [:], trailing: [UInt8] = []) throws {
        try Data(encode(gaps: gaps, trailing: trailing)).write(to: URL(fileURLWithPath: path))
    }
}

/// A small model: `n` float32 matrices of 64×64 plus a bias, named like a transformer's layers.
func smallModel(layers: Int = 6, seedOffset: UInt64 = 0, changed: Set<Int> = []) -> TestCheckpoint {
    var c = TestCheckpoint()
    for i in 0..<layers {
        c.add("layers.\(i).weight", shape: [64, 64], seed: UInt64(i + 1) + (changed.contains(i) ? 1000 : 0) + seedOffset)
    }
    c.add("head.bias", shape: [64], seed: 99 + seedOffset)
    return c
}

/// A real Git LFS HTTP server (giftless, installed by scripts/setup.sh into .cache/venv-giftless), started on
/// 127.0.0.1 for one test and stopped with it.
final class LFSServer {
    let process = Process()
    let port: Int
    let storage: String

    init(storage: String) throws {
        self.storage = storage
        let python = packageRoot + "/.cache/venv-giftless/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw CommandFailed(command: "giftless", result: CommandResult(status: 1, stdout: "", stderr: "\(python) is missing: run scripts/setup.sh"))
        }
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [packageRoot + "/scripts/lfs-test-server.py", storage]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        // The first line is the port.
        var line = Data()
        while !line.contains(0x0A) {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line += d
        }
        guard let p = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            process.terminate()
            throw CommandFailed(command: "giftless", result: CommandResult(status: 1, stdout: String(decoding: line, as: UTF8.self), stderr: "no port"))
        }
        port = p
    }

    deinit {
        // SIGKILL: the test runner's threads block SIGTERM, and a child inherits that mask.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// The LFS endpoint for a repository name.
    func url(_ repo: String) -> String { "http://127.0.0.1:\(port)/tessera/\(repo).git/info/lfs" }
}

/// Where a test's objects travel: git-lfs's standalone transfer to the bare remote's own folder (file://), or a
/// real LFS HTTP server beside it.
enum RemoteKind: String, CaseIterable, CustomStringConvertible {
    case file, http
    var description: String { rawValue }
}
