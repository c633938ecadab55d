import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraIO

/// Run by git (filter.tessera.process), not by people.
struct FilterProcessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "filter-process",
        abstract: "git's long-running clean/smudge filter (started by git; see `tessera install`).",
        shouldDisplay: false
    )

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        defer { Self.writeStats() }
        do {
            try FilterProcess().run()
        } catch let e as TesseraError {
            FileHandle.standardError.write(Data("tessera filter: \(e.description)\n".utf8))
            Self.writeStats()
            Foundation.exit(1)
        }
    }

    /// For benchmarks: with TESSERA_STATS_FILE set, the filter appends its peak resident memory when it exits.
    static func writeStats() {
        guard let path = ProcessInfo.processInfo.environment["TESSERA_STATS_FILE"] else { return }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        if let h = FileHandle(forWritingAtPath: path) ?? (FileManager.default.createFile(atPath: path, contents: nil) ? FileHandle(forWritingAtPath: path) : nil) {
            h.seekToEndOfFile()
            h.write(Data("filter_peak_rss_kb \(usage.ru_maxrss)\n".utf8))
            try? h.close()
        }
    }
}
