import Foundation

extension EvalReport {
    /// An aligned text table: one row per (task, metric), one column per revision, cells "value ± stderr".
    ///
    ///     task       metric      n     HEAD              main~1
    ///     arc-easy   acc         50    0.4600 ± 0.0712   0.4400 ± 0.0709
    public func table() -> String {
        let revs = revisions
        var rows: [[String]] = [["task", "metric", "n"] + revs]
        for task in tasks {
            for metric in metrics(of: task) {
                let cells = revs.map { rev -> String in
                    guard let r = result(task: task, metric: metric, revision: rev) else { return "-" }
                    if let se = r.stderr { return EvalFormat.value(r.value) + " ± " + EvalFormat.value(se) }
                    return EvalFormat.value(r.value)
                }
                let counts = revs.compactMap { result(task: task, metric: metric, revision: $0)?.count }
                var uniqueCounts: [Int] = []
                for c in counts where !uniqueCounts.contains(c) { uniqueCounts.append(c) }
                rows.append([task, metric, uniqueCounts.map(String.init).joined(separator: "/")] + cells)
            }
        }
        let columns = rows[0].count
        var widths = [Int](repeating: 0, count: columns)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        var out = ""
        for row in rows {
            var line = ""
            for (i, cell) in row.enumerated() {
                let last = i == columns - 1
                line += last ? cell : cell + String(repeating: " ", count: widths[i] - cell.count + 3)
            }
            out += line + "\n"
        }
        return out
    }
}
