import ArgumentParser
import Testing
import TesseraCLI

@Suite struct HelpTests {
    /// Every command's help reads whole at 80 columns: no example broken in the middle of an argument.
    @Test func helpFitsEightyColumns() throws {
        func all(_ command: any ParsableCommand.Type) -> [any ParsableCommand.Type] {
            [command] + command.configuration.subcommands.flatMap { all($0) }
        }
        for command in all(TesseraCommand.self) {
            let discussion = command.configuration.discussion
            for line in discussion.split(separator: "\n") {
                // ArgumentParser wraps lines of 79 columns and more at 80.
                #expect(line.count <= 78, "\(command.configuration.commandName ?? "?"): \(line.count) columns: \(line)")
            }
            let help = TesseraCommand.helpMessage(for: command, columns: 80)
            for line in discussion.split(separator: "\n") where line.hasPrefix("  ") {
                #expect(help.contains(line), "\(command.configuration.commandName ?? "?"): example wrapped: \(line)")
            }
        }
    }
}
