import TesseraMath

/// A float32 buffer owned by one training pass (an activation kept for backward, a gradient, scratch), zeroed at
/// allocation. Sizes come from a validated batch and the model's own shapes.
final class TrainingBuffer {
    let p: UnsafeMutablePointer<Float>
    let count: Int

    init(_ count: Int) {
        self.count = count
        p = .allocate(capacity: max(1, count))
        p.initialize(repeating: 0, count: max(1, count))
    }

    deinit { p.deallocate() }

    func zero() { p.update(repeating: 0, count: max(1, count)) }
}

/// Row loops split over the cores when there are enough rows to pay for it.
enum RowParallel {
    static func forRows(_ rows: Int, minimum: Int = 32, _ body: (Range<Int>) -> Void) {
        guard rows >= minimum else {
            body(0..<rows)
            return
        }
        let chunks = min(8, rows / (minimum / 2))
        let size = (rows + chunks - 1) / chunks
        Parallel.forEach(chunks) { c in
            let lo = min(rows, c * size), hi = min(rows, lo + size)
            if lo < hi { body(lo..<hi) }
        }
    }
}

/// The buffers of the last pass, handed out again to the next pass of the same size: a step of SmolLM2 keeps about
/// a gigabyte of activations, and fresh pages cost a fault and a clearing each. Passes of another size drop them.
/// Buffers taken are not cleared (every pass overwrites what it reads) unless asked.
final class Workspace {
    private var free: [Int: [TrainingBuffer]] = [:]
    private var used: [TrainingBuffer] = []
    private var rows = -1

    /// Starts a pass over `rows` token rows: the previous pass's buffers become free if it had as many rows.
    func begin(rows: Int) {
        if rows != self.rows {
            free = [:]
            used = []
            self.rows = rows
        }
        for b in used { free[b.count, default: []].append(b) }
        used = []
    }

    func take(_ count: Int, zeroed: Bool = false) -> TrainingBuffer {
        let buffer: TrainingBuffer
        if let reused = free[count]?.popLast() {
            buffer = reused
            if zeroed { buffer.zero() }
        } else {
            buffer = TrainingBuffer(count)
        }
        used.append(buffer)
        return buffer
    }
}
