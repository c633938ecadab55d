import Foundation

/// A progress bar with rate and ETA on stderr, drawn only when stderr is a terminal (isatty(2)); silent when piped,
/// so logs and CI output stay clean.
///
/// A class because the count changes as work advances; the lock makes it safe to advance from worker threads.
public final class ProgressReporter: @unchecked Sendable {
    public let label: String
    public let total: Int
    public let enabled: Bool
    private let lock = NSLock()
    private var done = 0
    private let start = DispatchTime.now()
    private var lastDraw: UInt64 = 0
    private var drewSomething = false

    public init(label: String, total: Int, enabled: Bool = isatty(2) != 0) {
        self.label = label
        self.total = total
        self.enabled = enabled
    }

    /// A reporter that never draws.
    public static var silent: ProgressReporter { ProgressReporter(label: "", total: 0, enabled: false) }

    public var completed: Int { lock.lock(); defer { lock.unlock() }; return done }

    public func advance(by n: Int = 1) {
        lock.lock()
        defer { lock.unlock() }
        done += n
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        // Redraw at most ten times a second, and always on the last item.
        guard now - lastDraw > 100_000_000 || done >= total else { return }
        lastDraw = now
        draw(now: now)
    }

    /// Ends the bar's line.
    public func finish() {
        lock.lock()
        defer { lock.unlock() }
        guard enabled, drewSomething else { return }
        draw(now: DispatchTime.now().uptimeNanoseconds)
        FileHandle.standardError.write(Data("\n".utf8))
        drewSomething = false
    }

    private func draw(now: UInt64) {
        let elapsed = Double(now - start.uptimeNanoseconds) / 1e9
        let line = ProgressReporter.render(label: label, done: done, total: total, elapsedSeconds: elapsed)
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        drewSomething = true
    }

    /// One line of the bar: `label [#######.......] 120/872  34.2/s  ETA 0:22`.
    public static func render(label: String, done: Int, total: Int, elapsedSeconds: Double, width: Int = 24) -> String {
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 0
        let filled = Int((fraction * Double(width)).rounded(.down))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let rate = elapsedSeconds > 0 ? Double(done) / elapsedSeconds : 0
        var eta = "--:--"
        if rate > 0, total >= done {
            let seconds = Int((Double(total - done) / rate).rounded(.up))
            eta = seconds >= 3600 ? String(format: "%d:%02d:%02d", seconds / 3600, seconds / 60 % 60, seconds % 60)
                                  : String(format: "%d:%02d", seconds / 60, seconds % 60)
        }
        return "\(label) [\(bar)] \(done)/\(total)  \(String(format: "%.1f", rate))/s  ETA \(eta)"
    }
}
