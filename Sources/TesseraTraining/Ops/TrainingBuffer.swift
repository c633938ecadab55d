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
