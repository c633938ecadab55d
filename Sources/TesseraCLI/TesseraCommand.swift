import ArgumentParser
import TesseraCore

public struct TesseraCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Version control for model weights, tensor by tensor, inside git.",
        subcommands: []
    )
    public init() {}
}
