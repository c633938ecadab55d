import Foundation

/// A real Git LFS HTTP server (giftless, installed by scripts/setup.sh into .cache/venv-giftless), started on
/// 127.0.0.1 for one test and stopped with it.
public final class LFSServer {
    let process = Process()
    public let port: Int
    public let storage: String

    public init(storage: String) throws {
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
    public func url(_ repo: String) -> String { "http://127.0.0.1:\(port)/tessera/\(repo).git/info/lfs" }
}

/// Where a test's objects travel: git-lfs's standalone transfer to the bare remote's own folder (file://), or a
/// real LFS HTTP server beside it.
public enum RemoteKind: String, CaseIterable, CustomStringConvertible, Sendable {
    case file, http
    public var description: String { rawValue }
}
