import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO

public struct TesseraCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Version control for model weights, tensor by tensor, inside git.",
        discussion: """
        Quick start:
          tessera install                     # per repository, or --global
          tessera track "*.safetensors"       # then git add, commit, push
          git diff                            # changed tensors, with numbers
          tessera ls HEAD~1:model.safetensors # tensors at any revision
        Also reachable as `git tessera ...`.
        """,
        version: TesseraVersion.string,
        subcommands: [
            InstallCommand.self, UninstallCommand.self, TrackCommand.self, UntrackCommand.self,
            LsCommand.self, LogCommand.self, FsckCommand.self, GcCommand.self, RepackCommand.self, FetchCommand.self, PushCommand.self, PullCommand.self,
            MergeCommand.self, TaskVectorCommand.self, LoraCommand.self, ExpertsCommand.self, RouteCommand.self, TrainCommand.self, FisherCommand.self, ResolveCommand.self, EvalCommand.self, ImportCommand.self,
            MergeDriverCommand.self, BenchEngineCommand.self,
            FilterProcessCommand.self, HookCommand.self, HookScriptCommand.self, DiffDriverCommand.self, TextconvCommand.self,
        ]
    )
    public init() {}

    /// Runs the command line: domain errors print one line (`tessera: what is wrong; what to do`) and exit 1.
    public static func runMain(_ arguments: [String]? = nil) {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch let error as TesseraError {
            FileHandle.standardError.write(Data("tessera: \(error.description)\n".utf8))
            Foundation.exit(error.code == .usage ? 2 : 1)
        } catch {
            // Usage errors exit 2 (as documented, and as TesseraError's usage code does), not ArgumentParser's 64.
            if TesseraCommand.exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((TesseraCommand.fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}

public enum TesseraVersion {
    public static let string = "0.1.0"
}
