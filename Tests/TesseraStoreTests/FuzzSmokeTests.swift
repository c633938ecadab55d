import Foundation
import Testing
import TesseraTestSupport

/// The fuzz targets of Fuzz/ (built with libFuzzer's runtime by scripts/fuzz-build.sh, which scripts/test.sh runs),
/// each run for a bounded time on its seed corpus, and every regression input of Fuzz/Regressions replayed. A crash,
/// a hang (libFuzzer's -timeout) or a runaway allocation (-rss_limit_mb) fails the test, naming the target and the
/// reproducer (kept in Fuzz/Out/smoke/TARGET/). TESSERA_FUZZ_SECONDS sets the time per target (default 10);
/// TESSERA_FUZZ_BIN the directory of the fuzz executables (default .build-fuzz/release).
@Suite(.serialized) struct FuzzSmokeTests {
    struct Target: CustomStringConvertible, Sendable {
        let name: String
        let executable: String
        var description: String { name }
    }

    static let targets = [
        Target(name: "safetensors", executable: "FuzzSafetensors"),
        Target(name: "manifest", executable: "FuzzManifest"),
        Target(name: "object", executable: "FuzzObject"),
        Target(name: "gguf", executable: "FuzzGGUF"),
        Target(name: "taskfile", executable: "FuzzTaskFile"),
        Target(name: "mergeconfig", executable: "FuzzMergeConfig"),
    ]

    static let root = packageRoot

    static let binDirectory = ProcessInfo.processInfo.environment["TESSERA_FUZZ_BIN"] ?? root + "/.build-fuzz/release"
    static let seconds = Int(ProcessInfo.processInfo.environment["TESSERA_FUZZ_SECONDS"] ?? "") ?? 10
    static let limits = ["-timeout=10", "-rss_limit_mb=2048"]

    @Test(arguments: targets) func fuzzingTheSeedCorpusFindsNothing(_ target: Target) async throws {
        guard let executable = try locate(target) else { return }
        let seeds = "\(Self.root)/Fuzz/Corpus/\(target.name)"
        #expect(try FileManager.default.contentsOfDirectory(atPath: seeds).count >= 3, "the seed corpus \(seeds) is (nearly) empty")
        let out = try outputDirectory(target, "fuzz")
        // New inputs go to the first corpus directory, a scratch one: the committed seeds stay as they are.
        let scratch = out + "/corpus"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let run = try await runFuzzer(executable, Self.limits + [
            "-max_total_time=\(Self.seconds)", "-print_final_stats=1", "-dict=\(Self.root)/Fuzz/Dictionaries/\(target.name).dict",
            "-artifact_prefix=\(out)/", scratch, seeds,
        ], log: out + "/log", deadline: Self.seconds + 300)
        report(target, run, out: out, what: "fuzzing its seed corpus for \(Self.seconds) s")
        let executed = run.log.split(separator: "\n").first { $0.hasPrefix("stat::number_of_executed_units:") }
            .flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        #expect(run.status != 0 || executed > 0, "fuzz target \(target.name) executed no input (log: \(out)/log)")
    }

    @Test(arguments: targets) func regressionInputsReplayCleanly(_ target: Target) async throws {
        let dir = "\(Self.root)/Fuzz/Regressions/\(target.name)"
        let inputs = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
            .filter { !$0.hasPrefix(".") && $0 != "README.md" }.sorted().map { dir + "/" + $0 }
        if inputs.isEmpty { return }
        guard let executable = try locate(target) else { return }
        let out = try outputDirectory(target, "regressions")
        let run = try await runFuzzer(executable, Self.limits + ["-runs=1", "-artifact_prefix=\(out)/"] + inputs,
                                log: out + "/log", deadline: 60 + 20 * inputs.count)
        report(target, run, out: out, what: "replaying \(inputs.count) regression input(s) of \(dir)", inputsGiven: true)
    }

    // MARK: Running a fuzzer

    struct Run {
        var status: Int32
        var log: String
        var stopped: Bool
    }

    func locate(_ target: Target) throws -> String? {
        let path = "\(Self.binDirectory)/\(target.executable)"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            Issue.record("fuzz target \(target.executable) is not built at \(Self.binDirectory): run scripts/fuzz-build.sh (scripts/test.sh does)")
            return nil
        }
        return path
    }

    func outputDirectory(_ target: Target, _ kind: String) throws -> String {
        let dir = "\(Self.root)/Fuzz/Out/smoke/\(target.name)-\(kind)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Runs a fuzz executable with its output in `log`; one that outlives `deadline` seconds (libFuzzer stops itself
    /// long before) is killed and reported. The wait sleeps asynchronously: the test holds no thread meanwhile.
    func runFuzzer(_ executable: String, _ arguments: [String], log: String, deadline: Int) async throws -> Run {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? handle.close() }
        let p = Process()
        // Started through a shell that does not exec it: a process started straight from this one would inherit the
        // test process's peak RSS (Linux keeps the pre-exec high-water mark in ru_maxrss, a gigabyte or more once the
        // engine tests have loaded models), and libFuzzer would take that for its own use of memory and stop at
        // -rss_limit_mb. The shell's child starts from the shell's few megabytes.
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "\"$0\" \"$@\"; exit $?", executable] + arguments
        var env = ProcessInfo.processInfo.environment
        env["SWIFT_BACKTRACE"] = "enable=no"  // libFuzzer's own crash handler reports and saves the input
        // The target's scratch stores, in a directory of this run's (a crashed target cannot remove its own).
        let scratchBase = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()
        let scratch = scratchBase + "/tessera-fuzz-smoke-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        env["TESSERA_FUZZ_TMPDIR"] = scratch
        p.environment = env
        p.currentDirectoryURL = URL(fileURLWithPath: (log as NSString).deletingLastPathComponent)
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        let end = Date().addingTimeInterval(TimeInterval(deadline))
        while p.isRunning && Date() < end { try await Task.sleep(for: .milliseconds(200)) }
        let stopped = p.isRunning
        if stopped {
            // The shell and the fuzzer under it (and fork-mode children, if any): the shell's process group is ours.
            kill(-p.processIdentifier, SIGKILL)
            kill(p.processIdentifier, SIGKILL)
        }
        p.waitUntilExit()
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: log))) ?? Data(), as: UTF8.self)
        return Run(status: p.terminationStatus, log: text, stopped: stopped)
    }

    /// Records a failed run: the input that failed (the one being run when inputs were given, else the one libFuzzer
    /// saved), how to replay it, and the lines of the log that say what went wrong.
    func report(_ target: Target, _ run: Run, out: String, what: String, inputsGiven: Bool = false) {
        if run.stopped {
            Issue.record("fuzz target \(target.name) did not stop while \(what) and was killed (log: \(out)/log)")
            return
        }
        guard run.status != 0 else { return }
        let artifacts = ((try? FileManager.default.contentsOfDirectory(atPath: out)) ?? [])
            .filter { ["crash-", "timeout-", "oom-", "leak-", "slow-unit-"].contains(where: $0.hasPrefix) }.map { out + "/" + $0 }
        let lines = run.log.split(separator: "\n")
        let cause = lines.filter {
            $0.contains("Fatal error") || $0.contains("FUZZ FINDING") || $0.contains("ERROR: libFuzzer") || $0.hasPrefix("SUMMARY")
                || ($0.contains("/Sources/Tessera") && $0.drop(while: { $0 == " " }).hasPrefix("#"))  // stack frames
        }.prefix(8).joined(separator: "\n")
        let running = lines.last { $0.hasPrefix("Running: ") }.map { String($0.dropFirst(9)) }
        let reproducer = (inputsGiven ? running ?? artifacts.first : artifacts.first ?? running) ?? "(none saved)"
        Issue.record("""
            fuzz target \(target.name) failed (exit \(run.status)) while \(what)
            reproducer: \(reproducer)
            replay: \(Self.binDirectory)/\(target.executable) \(reproducer)
            \(cause)
            (full log: \(out)/log)
            """)
    }
}
