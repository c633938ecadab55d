import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraRouting

struct ExpertsRemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove an expert from a library (its folder and its library.json entry).",
        discussion: """
        The expert stays in git history; commit the removal like any change.
        Example:
          tessera experts remove experts sst2
        """
    )

    @Argument(help: "The library folder.") var library: String
    @Argument(help: "The expert's name.") var name: String
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.") var directory: String = "."

    func run() throws {
        let resolver = CheckpointResolver(directory: directory, hashesFileInputs: false)
        var index = try ExpertLibraryFiles.readIndex(library, resolver: resolver)
        try ExpertLibraryIndex.checkName(name)
        guard let i = index.experts.firstIndex(where: { $0.name == name }) else {
            throw TesseraError(.notFound, "\(library) has no expert '\(name)'", hint: "`tessera experts list \(library)` lists them")
        }
        index.experts.remove(at: i)
        // The index first: a crash in between leaves an unlisted folder, never an entry without its files.
        try ExpertLibraryFiles.writeIndex(index, library: library)
        try? FileManager.default.removeItem(atPath: ExpertLibraryFiles.path(library, name))
        print("removed \(name) from \(library) (\(index.experts.count) experts left)")
    }
}
