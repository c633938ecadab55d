import TesseraMath

/// The set of entries torch's CPU `topk(x, k, largest=True)` returns, so that sce's `select_topk` keeps the entries
/// mergekit keeps when variances tie at the cut (in float16 and bfloat16 they tie by the hundred).
///
/// ATen's CPU kernel (`topk_impl_loop`, TopKImpl.h) fills (value, index) pairs in index order and, per row, runs
/// libstdc++'s `std::partial_sort(first, first + k, last)` when k · 64 ≤ n, else `std::nth_element(first,
/// first + k − 1, last)`, both under `a > b` (NaN first); the first k pairs are the result (a sort of them afterwards
/// changes their order, not the set). Which of several tied values end up among the first k depends on those two
/// algorithms, replayed here step for step with `TorchSort`'s libstdc++ building blocks (its median-of-three pivot,
/// Hoare partition, insertion sort and heap adjustment): `partial_sort` selects through a heap of the first k
/// (`__heap_select`), `nth_element` is introselect (partitions while more than 3 elements remain, a heap select past
/// depth 2·⌊log₂ n⌋, an insertion sort of the last range). When no tie straddles the cut the set is unique and the
/// radix select decides it alone.
public enum TorchTopK {
    /// Zeroes, in place, the entries of `x` (non-negative values, e.g. variances) that `torch.topk(x, k)` does not
    /// return. k ≤ 0 zeroes everything; k ≥ count keeps everything.
    public static func keepLargest(_ x: UnsafeMutableBufferPointer<Float>, k: Int) {
        let n = x.count
        guard k > 0 else {
            for i in 0..<n { x[i] = 0 }
            return
        }
        if k >= n { return }
        let t = MagnitudeSelect.threshold(UnsafeBufferPointer(x), rank: k - 1, descending: true)
        if t.before + t.ties == k || n > Int(UInt32.max) {
            // Every element tied at the threshold is kept: the set is unique. (Past 2^32 entries, which the pairs'
            // 32-bit indices cannot name, ties are kept by lower index.)
            MagnitudeSelect.keepTopK(x, k: k)
            return
        }
        var keep = [Bool](repeating: false, count: n)
        for i in selectedIndices(UnsafeBufferPointer(x), k: k) { keep[i] = true }
        for i in 0..<n where !keep[i] { x[i] = 0 }
    }

    /// The indices `torch.topk(x, k, largest=True)` returns, in the order the selection leaves them (not sorted).
    /// k in 1...count; count < 2^32.
    public static func selectedIndices(_ x: UnsafeBufferPointer<Float>, k: Int) -> [Int] {
        let n = x.count
        guard k > 0, n > 0, n <= Int(UInt32.max) else { return [] }
        if k >= n { return Array(0..<n) }
        let pairs = UnsafeMutablePointer<TorchSort.Pair>.allocate(capacity: n)
        defer { pairs.deallocate() }
        // `a > b` with NaN first is `−a < −b` with NaN as −∞: TorchSort's ascending routines serve.
        for i in 0..<n {
            let v = x[i]
            pairs[i] = TorchSort.Pair(key: v.isNaN ? -.infinity : -v, index: UInt32(truncatingIfNeeded: i))
        }
        if k * 64 <= n {
            heapSelect(pairs, 0, k, n)
        } else {
            var lg = 0
            while (1 << (lg + 1)) <= n { lg += 1 }
            introselect(pairs, 0, k - 1, n, depth: 2 * lg)
        }
        return (0..<k).map { Int(pairs[$0].index) }
    }

    /// libstdc++'s `__heap_select(first, middle, last)`: a heap of [first, middle) whose top is its greatest
    /// element under `less`; each later element less than the top replaces it.
    static func heapSelect(_ a: UnsafeMutablePointer<TorchSort.Pair>, _ first: Int, _ middle: Int, _ last: Int) {
        let length = middle - first
        let order = TorchSort.PairOrdering()
        if length >= 2 {
            var parent = (length - 2) / 2
            while true {
                TorchSort.adjustHeap(a, first, parent, length, a[first + parent], order)
                if parent == 0 { break }
                parent -= 1
            }
        }
        var i = middle
        while i < last {
            if a[i].key < a[first].key {
                // __pop_heap(first, middle, i): the top goes to i, i's element sifts down from the top.
                let value = a[i]
                a[i] = a[first]
                TorchSort.adjustHeap(a, first, 0, length, value, order)
            }
            i += 1
        }
    }

    /// libstdc++'s `__introselect(first, nth, last, depth)` (what `std::nth_element` runs).
    static func introselect(_ a: UnsafeMutablePointer<TorchSort.Pair>, _ first0: Int, _ nth: Int, _ last0: Int, depth depth0: Int) {
        var first = first0, last = last0, depth = depth0
        let order = TorchSort.PairOrdering()
        while last - first > 3 {
            if depth == 0 {
                heapSelect(a, first, nth + 1, last)
                TorchSort.swapAt(a, first, nth)
                return
            }
            depth -= 1
            let mid = first + (last - first) / 2
            TorchSort.moveMedianToFirst(a, first, first + 1, mid, last - 1, order)
            let cut = TorchSort.unguardedPartition(a, first + 1, last, pivot: first, order)
            if cut <= nth { first = cut } else { last = cut }
        }
        TorchSort.insertionSort(a, first, last, order)
    }
}
