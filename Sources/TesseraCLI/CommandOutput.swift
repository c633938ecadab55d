import Foundation

/// Where commands print: the process's standard output and error, or a capture, so that tests can run commands in
/// process (`TesseraCommand.parseAsRoot(...).run()`) and read what they printed.
public final class CommandOutput: @unchecked Sendable {
    // @unchecked: the captured text is guarded by `lock`.

    /// The output of the commands running in this task (the process's own outside `capturing`).
    @TaskLocal public static var current = CommandOutput(capturing: false)

    private let capturing: Bool
    private let lock = NSLock()
    private var out = ""
    private var err = ""

    private init(capturing: Bool) { self.capturing = capturing }

    /// What the commands printed to standard output.
    public var standardOutput: String { lock.lock(); defer { lock.unlock() }; return out }
    /// What the commands printed to standard error.
    public var standardError: String { lock.lock(); defer { lock.unlock() }; return err }

    /// Runs `body` with everything that commands print going to a new capture; returns the capture and what `body`
    /// threw, if anything.
    public static func capturing(_ body: () throws -> Void) -> (output: CommandOutput, error: (any Error)?) {
        let capture = CommandOutput(capturing: true)
        do {
            try $current.withValue(capture) { try body() }
            return (capture, nil)
        } catch {
            return (capture, error)
        }
    }

    func write(_ text: String) {
        guard capturing else {
            Swift.print(text, terminator: "")
            return
        }
        lock.lock(); out += text; lock.unlock()
    }

    func writeError(_ text: String) {
        guard capturing else {
            FileHandle.standardError.write(Data(text.utf8))
            return
        }
        lock.lock(); err += text; lock.unlock()
    }
}

/// Commands print through this, which shadows the standard library's `print` in this module: to standard output,
/// or to the capture of a test running the command in process.
func print(_ items: Any..., separator: String = " ", terminator: String = "\n") {
    CommandOutput.current.write(items.map { "\($0)" }.joined(separator: separator) + terminator)
}

/// Writes a line to standard error (or the capture).
func printError(_ line: String) {
    CommandOutput.current.writeError(line + "\n")
}
