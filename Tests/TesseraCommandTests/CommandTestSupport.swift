import ArgumentParser
import Foundation
import Testing
import TesseraCLI
import TesseraIO
import TesseraStore
import TesseraTestSupport

/// A command line run in this process, as `tessera ARGUMENTS` would run it: what it printed and what it threw.
struct CommandRun {
    var stdout: String
    var stderr: String
    /// The error the command (or the parsing of its arguments) threw; nil when it succeeded.
    var error: (any Error)?

    var tesseraError: TesseraError? { error as? TesseraError }

    /// The exit status `tessera` would give (`TesseraCommand.runMain`'s rules).
    var status: Int32 {
        guard let error else { return 0 }
        if let e = error as? TesseraError { return e.code == .usage ? 2 : 1 }
        let code = TesseraCommand.exitCode(for: error)
        return code == .validationFailure ? 2 : code.rawValue
    }
}

/// Runs `tessera ARGUMENTS` in process, capturing its output. Repositories are named with `-C`; paths should be
/// absolute (the test process's current directory is the package's).
func tessera(_ arguments: [String]) -> CommandRun {
    let (output, error) = CommandOutput.capturing {
        var command = try TesseraCommand.parseAsRoot(arguments)
        try command.run()
    }
    return CommandRun(stdout: output.standardOutput, stderr: output.standardError, error: error)
}

func tessera(_ arguments: String...) -> CommandRun { tessera(arguments) }

/// Runs `tessera ARGUMENTS` and records an issue unless it succeeds.
@discardableResult
func tesseraSucceeds(_ arguments: String..., sourceLocation: SourceLocation = #_sourceLocation) -> CommandRun {
    let run = tessera(arguments)
    if let error = run.error { Issue.record("tessera \(arguments.joined(separator: " ")) failed: \(error)\n\(run.stdout)", sourceLocation: sourceLocation) }
    return run
}

extension Sandbox {
    /// A repository (made with real git and the tessera binary) holding model.safetensors at v1, then with layer 1
    /// changed (v2); its absolute path.
    func repositoryWithHistory(layers: Int = 4) throws -> String {
        let repo = try makeRepository()
        try smallModel(layers: layers).write(to: path("repo/model.safetensors"))
        try run("git add model.safetensors && git commit -qm v1", in: repo)
        try smallModel(layers: layers, changed: [1]).write(to: path("repo/model.safetensors"))
        try run("git commit -qam 'layer 1'", in: repo)
        return path(repo)
    }

    /// The store of a repository made in the sandbox (an absolute path).
    func store(_ repository: String) throws -> ObjectStore { try ObjectStore(root: repository + "/.git/tessera") }
}
