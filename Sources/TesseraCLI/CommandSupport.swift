import ArgumentParser
import Foundation
import TesseraCore
import TesseraIO

/// Options every command that reads the repository shares.
struct RepositoryOptions: ParsableArguments {
    @Option(name: [.customShort("C")], help: "Run as if tessera was started in this directory.")
    var directory: String = "."

    @Flag(help: "Print machine-readable JSON.")
    var json = false
}

/// Where this executable is, for git config (so hooks and filters run this very binary).
enum ExecutablePath {
    static var current: String {
        if let p = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return p }
        return CommandLine.arguments[0]
    }
}

func printJSON(_ value: JSONValue) {
    print(value.serialized())
}
