import Foundation

extension EvalReport {
    /// A file name for a task's chart: letters, digits, '-', '_' and '.' kept, anything else (':' of a limit, '/' of
    /// a task file path) replaced by '_'. `arc-easy:50` → `arc-easy_50.svg`.
    public static func chartFileName(task: String) -> String {
        let safe = String(task.unicodeScalars.map { u -> Character in
            (u.isASCII && (u.properties.isAlphabetic || ("0"..."9").contains(u) || u == "-" || u == "_" || u == ".")) ? Character(u) : "_"
        })
        return (safe.isEmpty ? "task" : safe) + ".svg"
    }

    /// One SVG bar chart per task, in task order.
    public func svgCharts() -> [(task: String, svg: String)] {
        tasks.map { ($0, svgChart(task: $0)) }
    }

    /// A grouped bar chart of one task: metrics along the x axis, one bar per revision in each group (colour = revision,
    /// with a legend), the value written on each bar, ± stderr as an error bar. Metrics that are all in [0, 1]
    /// (accuracies, Rouge-L) share one panel with a 0-1 axis; any other metric (perplexity, NLL) gets its own panel
    /// and axis, since their scales are unrelated. Plain string building; the output is standalone SVG 1.1.
    public func svgChart(task: String) -> String {
        let revs = revisions.filter { rev in results.contains { $0.task == task && $0.revision == rev } }
        let metricNames = metrics(of: task)
        let bounded = metricNames.filter { m in
            results.filter { $0.task == task && $0.metric == m }.allSatisfy { $0.value >= 0 && $0.value <= 1 }
        }
        var panels: [(title: String, metrics: [String])] = []
        if !bounded.isEmpty { panels.append(("score", bounded)) }
        for m in metricNames where !bounded.contains(m) { panels.append((m, [m])) }

        let barWidth = 30.0, barGap = 4.0, groupGap = 26.0
        let plotHeight = 220.0, top = 56.0, left = 64.0, bottom = 56.0, panelGap = 40.0
        let legendWidth = 24.0 + Double(revs.map(\.count).max() ?? 0) * 7.0 + 20
        let groupWidth = Double(max(1, revs.count)) * barWidth + Double(max(0, revs.count - 1)) * barGap
        let panelWidths = panels.map { Double($0.metrics.count) * (groupWidth + groupGap) + groupGap }
        let width = left + panelWidths.reduce(0, +) + Double(max(0, panels.count - 1)) * (panelGap + left) + 20 + legendWidth
        let height = top + plotHeight + bottom

        var svg = """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="\(fmt(width))" height="\(fmt(height))" viewBox="0 0 \(fmt(width)) \(fmt(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
        <rect x="0" y="0" width="\(fmt(width))" height="\(fmt(height))" fill="white"/>
        <text x="\(fmt(width / 2))" y="24" text-anchor="middle" font-size="16" font-weight="bold">\(escapeXML(task))</text>

        """
        var x0 = left
        for (panelIndex, panel) in panels.enumerated() {
            let panelWidth = panelWidths[panelIndex]
            let cells = panel.metrics.flatMap { m in revs.compactMap { result(task: task, metric: m, revision: $0) } }
            let (yMin, yMax, step) = panel.title == "score" ? (0.0, 1.0, 0.2) : EvalReport.axisRange(cells)
            func y(_ v: Double) -> Double { top + plotHeight * (1 - (v - yMin) / (yMax - yMin)) }

            // Axes, grid lines and tick labels.
            svg += "<g class=\"panel\">\n"
            var tick = yMin
            while tick <= yMax + step * 1e-6 {
                svg += "<line x1=\"\(fmt(x0))\" y1=\"\(fmt(y(tick)))\" x2=\"\(fmt(x0 + panelWidth))\" y2=\"\(fmt(y(tick)))\" stroke=\"#e0e0e0\" stroke-width=\"1\"/>\n"
                svg += "<text x=\"\(fmt(x0 - 6))\" y=\"\(fmt(y(tick) + 4))\" text-anchor=\"end\" font-size=\"11\">\(EvalReport.tickLabel(tick, step: step))</text>\n"
                tick += step
            }
            svg += "<line x1=\"\(fmt(x0))\" y1=\"\(fmt(top))\" x2=\"\(fmt(x0))\" y2=\"\(fmt(top + plotHeight))\" stroke=\"black\" stroke-width=\"1\"/>\n"
            svg += "<line x1=\"\(fmt(x0))\" y1=\"\(fmt(y(max(yMin, 0))))\" x2=\"\(fmt(x0 + panelWidth))\" y2=\"\(fmt(y(max(yMin, 0))))\" stroke=\"black\" stroke-width=\"1\"/>\n"
            let yLabelX = x0 - 46, yLabelY = top + plotHeight / 2
            svg += "<text x=\"\(fmt(yLabelX))\" y=\"\(fmt(yLabelY))\" text-anchor=\"middle\" font-size=\"12\" transform=\"rotate(-90 \(fmt(yLabelX)) \(fmt(yLabelY)))\">\(escapeXML(panel.title))</text>\n"
            svg += "<text x=\"\(fmt(x0 + panelWidth / 2))\" y=\"\(fmt(top + plotHeight + 44))\" text-anchor=\"middle\" font-size=\"12\">metric</text>\n"

            // Bars.
            for (g, metric) in panel.metrics.enumerated() {
                let gx = x0 + groupGap + Double(g) * (groupWidth + groupGap)
                svg += "<text x=\"\(fmt(gx + groupWidth / 2))\" y=\"\(fmt(top + plotHeight + 18))\" text-anchor=\"middle\" font-size=\"12\">\(escapeXML(metric))</text>\n"
                for (r, rev) in revs.enumerated() {
                    guard let cell = result(task: task, metric: metric, revision: rev), cell.value.isFinite else { continue }
                    let bx = gx + Double(r) * (barWidth + barGap)
                    let v = min(max(cell.value, yMin), yMax)
                    let base = max(yMin, 0)
                    let yTop = min(y(v), y(base)), h = abs(y(v) - y(base))
                    svg += "<rect x=\"\(fmt(bx))\" y=\"\(fmt(yTop))\" width=\"\(fmt(barWidth))\" height=\"\(fmt(h))\" fill=\"\(EvalReport.palette[r % EvalReport.palette.count])\"><title>\(escapeXML("\(rev) \(metric) = \(EvalFormat.value(cell.value))"))</title></rect>\n"
                    var labelY = y(v) - 4
                    if let se = cell.stderr, se.isFinite, se > 0 {
                        let hi = y(min(cell.value + se, yMax)), lo = y(max(cell.value - se, yMin)), cx = bx + barWidth / 2
                        svg += "<line x1=\"\(fmt(cx))\" y1=\"\(fmt(hi))\" x2=\"\(fmt(cx))\" y2=\"\(fmt(lo))\" stroke=\"#333333\" stroke-width=\"1\"/>\n"
                        svg += "<line x1=\"\(fmt(cx - 4))\" y1=\"\(fmt(hi))\" x2=\"\(fmt(cx + 4))\" y2=\"\(fmt(hi))\" stroke=\"#333333\" stroke-width=\"1\"/>\n"
                        labelY = min(labelY, hi - 4)
                    }
                    svg += "<text x=\"\(fmt(bx + barWidth / 2))\" y=\"\(fmt(labelY))\" text-anchor=\"middle\" font-size=\"9\">\(EvalReport.barLabel(cell.value))</text>\n"
                }
            }
            svg += "</g>\n"
            x0 += panelWidth + panelGap + left
        }

        // Legend: one swatch per revision.
        let lx = width - legendWidth
        svg += "<g class=\"legend\">\n<text x=\"\(fmt(lx))\" y=\"\(fmt(top))\" font-size=\"12\" font-weight=\"bold\">revision</text>\n"
        for (r, rev) in revs.enumerated() {
            let ly = top + 12 + Double(r) * 18
            svg += "<rect x=\"\(fmt(lx))\" y=\"\(fmt(ly))\" width=\"12\" height=\"12\" fill=\"\(EvalReport.palette[r % EvalReport.palette.count])\"/>\n"
            svg += "<text x=\"\(fmt(lx + 18))\" y=\"\(fmt(ly + 10))\" font-size=\"11\">\(escapeXML(rev))</text>\n"
        }
        svg += "</g>\n</svg>\n"
        return svg
    }

    /// matplotlib's default colour cycle (tab10), so charts look like the notebooks' bar plots.
    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    /// A 1-2-5 step axis from min(0, lowest) to just above the highest value (+ stderr).
    static func axisRange(_ cells: [EvalResult]) -> (Double, Double, Double) {
        let finite = cells.filter { $0.value.isFinite }
        let highest = finite.map { $0.value + ($0.stderr ?? 0) }.max() ?? 1
        let lowest = min(0, finite.map { $0.value - ($0.stderr ?? 0) }.min() ?? 0)
        let span = max(highest - lowest, 1e-9)
        let raw = span / 5
        let magnitude = pow(10, (log10(raw)).rounded(.down))
        let step = [1.0, 2.0, 5.0, 10.0].map { $0 * magnitude }.first { $0 >= raw } ?? raw
        let yMin = (lowest / step).rounded(.down) * step
        var yMax = (highest / step).rounded(.up) * step
        if yMax <= highest { yMax += step }
        return (yMin, yMax, step)
    }

    static func tickLabel(_ v: Double, step: Double) -> String {
        let decimals = step >= 1 ? 0 : min(6, Int((-log10(step)).rounded(.up)))
        return String(format: "%.\(decimals)f", abs(v) < step * 1e-9 ? 0 : v)
    }

    static func barLabel(_ v: Double) -> String {
        abs(v) >= 100 ? String(format: "%.1f", v) : (abs(v) >= 10 ? String(format: "%.2f", v) : String(format: "%.3f", v))
    }
}

private func fmt(_ v: Double) -> String {
    let s = String(format: "%.2f", v)
    return s.hasSuffix(".00") ? String(s.dropLast(3)) : s
}

func escapeXML(_ s: String) -> String {
    var out = ""
    for u in s.unicodeScalars {
        switch u {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        default:
            // Control characters other than tab/newline are not allowed in XML 1.0.
            if u.value < 0x20 && u != "\t" && u != "\n" { out += " " } else { out.unicodeScalars.append(u) }
        }
    }
    return out
}
