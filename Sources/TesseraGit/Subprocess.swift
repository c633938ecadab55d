import Foundation
import TesseraCore
import TesseraIO

/// Runs git and git-lfs where git itself must act (transfers, index updates). Output is captured; stderr can be
/// passed through so that the user sees git's own progress and messages.
public struct Subprocess {
    public struct Result {
        public var status: Int32
        public var stdout: [UInt8]
        public var stderr: String
        public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    }

    /// Variables through which git tells a child which repository it is in. A command run in another repository
    /// (a scratch one) must not inherit them: inside a filter or hook started by `git clone`, `git init` would
    /// otherwise act on the repository being cloned.
    public static let repositoryVariables = ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                                             "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_PREFIX"]

    public static func run(_ arguments: [String], directory: String? = nil, input: [UInt8]? = nil,
                           environment: [String: String] = [:], unsetting: [String] = [], passStderr: Bool = false) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = arguments
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        if !environment.isEmpty || !unsetting.isEmpty {
            var env = ProcessInfo.processInfo.environment
            for (k, v) in environment { env[k] = v }
            for k in unsetting { env.removeValue(forKey: k) }
            p.environment = env
        }
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = passStderr ? FileHandle.standardError : err
        let inPipe = Pipe()
        p.standardInput = input == nil ? FileHandle.nullDevice : inPipe
        do {
            try p.run()
        } catch {
            throw TesseraError(.git, "cannot run \(arguments.first ?? "?")", hint: "install it (scripts/setup.sh does)", underlying: error)
        }
        if let input {
            let h = inPipe.fileHandleForWriting
            DispatchQueue.global().async {
                h.write(Data(input))
                try? h.close()
            }
        }
        final class Box: @unchecked Sendable { var data = Data() }  // written by one thread, read after group.wait()
        let errBox = Box()
        let group = DispatchGroup()
        if !passStderr {
            group.enter()
            let handle = err.fileHandleForReading
            DispatchQueue.global().async {
                errBox.data = handle.readDataToEndOfFile()
                group.leave()
            }
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        let errData = errBox.data
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: Array(outData), stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Runs and throws with git's own message on failure.
    @discardableResult
    public static func check(_ arguments: [String], directory: String? = nil, input: [UInt8]? = nil, what: String,
                             hint: String? = nil, passStderr: Bool = false) throws -> Result {
        let r = try run(arguments, directory: directory, input: input, passStderr: passStderr)
        guard r.status == 0 else {
            let msg = r.stderr.split(separator: "\n").last.map(String.init) ?? "exit status \(r.status)"
            throw TesseraError(.git, "\(what): \(msg)", hint: hint)
        }
        return r
    }
}
