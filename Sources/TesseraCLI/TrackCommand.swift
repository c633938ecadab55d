import ArgumentParser
import Foundation
import TesseraGit
import TesseraIO

struct TrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Track files matching a pattern with Tessera (writes .gitattributes).",
        discussion: """
        With no pattern, lists the tracked patterns. Installs Tessera in the
        repository first if it is not yet, so that a tracked pattern never commits raw
        files by accident. Safetensors, GGUF, PyTorch zip checkpoints (torch.save)
        and NumPy .npz archives are stored per tensor; other files are stored whole.
        Examples:
          tessera track "*.safetensors"
          tessera track "*.gguf" "*.pt" "*.bin" "*.npz"
          tessera track "checkpoints/**"
        """
    )

    @Argument(help: "gitattributes patterns, e.g. \"*.safetensors\".")
    var patterns: [String] = []

    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    func run() throws {
        let repository = try GitRepository(discovering: directory)
        guard let worktree = repository.workdir else { throw TesseraError(.usage, "this repository is bare", hint: "track files in a clone with a working tree") }
        if patterns.isEmpty {
            let tracked = Attributes.patterns(in: worktree)
            if tracked.isEmpty { print("no patterns are tracked; try: tessera track \"*.safetensors\"") }
            for p in tracked { print(p) }
            return
        }
        if !Installer.isInstalled(repository) {
            let (name, warning) = Installer.configuredName(forBinaryAt: ExecutablePath.current)
            _ = try Installer(repository: repository, executable: name).install(scope: .local)
            print("installed tessera in this repository (git config and hooks)")
            if let warning { printError("tessera: \(warning)") }
        }
        for p in patterns {
            print(try Attributes.track(p, in: worktree) ? "tracking \(p)" : "\(p) is already tracked")
        }
    }
}
