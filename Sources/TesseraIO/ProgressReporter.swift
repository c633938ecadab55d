import Foundation

/// A progress bar with rate and ETA on stderr, drawn only when stderr is a terminal (isatty(2)); silent when piped,
/// so logs and CI output stay clean.
///
/// A class because the count changes as work advances; the lock makes it safe to advance from worker threads.
public final class ProgressReporter: @unchecked Sendable {
    /// What the counts are: items (`120/872  34.2/s`) or bytes (`1.2 GB/3.4 GB  230 MB/s`).
    public enum Unit: Sendable { case items, bytes }

    public let label: String
    public private(set) var total: Int
    public let enabled: Bool
    public let unit: Unit
    private let lock = NSLock()
    private var done = 0
    private let start = DispatchTime.now()
    private var lastDraw: UInt64 = 0
    private var drewSomething = false

    public init(label: String, total: Int, unit: Unit = .items, enabled: Bool = isatty(2) != 0) {
        self.label = label
        self.total = total
        self.unit = unit
        self.enabled = enabled
    }

    /// Sets the count (for work measured from outside, e.g. bytes a transfer reports), redrawing as `advance` does.
    public func update(completed: Int, total newTotal: Int? = nil) {
        lock.lock()
        defer { lock.unlock() }
        if let newTotal { total = newTotal }
        done = completed
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        guard now - lastDraw > 100_000_000 else { return }
        lastDraw = now
        draw(now: now)
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
        let line = ProgressReporter.render(label: label, done: done, total: total, elapsedSeconds: elapsed, unit: unit)
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        drewSomething = true
    }

    /// One line of the bar: `label [#######.......] 120/872  34.2/s  ETA 0:22`.
    public static func render(label: String, done: Int, total: Int, elapsedSeconds: Double, width: Int = 24, unit: Unit = .items) -> String {
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
        if unit == .bytes {
            return "\(label) [\(bar)] \(humanBytes(done))/\(humanBytes(total))  \(humanBytes(Int(rate)))/s  ETA \(eta)"
        }
        return "\(label) [\(bar)] \(done)/\(total)  \(String(format: "%.1f", rate))/s  ETA \(eta)"
    }
}

/// A byte count for people: "183 B", "4.2 MB", "1.5 GB" (powers of 1000, as git-lfs prints them).
public func humanBytes(_ n: Int) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"]
    var v = Double(n)
    var u = 0
    while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}
