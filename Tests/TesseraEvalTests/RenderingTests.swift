import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
import TesseraCore
import TesseraEval
import TesseraIO

/// Table, JSON and SVG rendering of results for several revisions.
@Suite struct RenderingTests {
    let report = EvalReport([
        EvalResult(task: "arc-easy:50", metric: "acc", value: 0.46, stderr: 0.0712, count: 50, revision: "main"),
        EvalResult(task: "arc-easy:50", metric: "acc_norm", value: 0.44, stderr: 0.0709, count: 50, revision: "main"),
        EvalResult(task: "wikitext:20", metric: "nll", value: 3.858584, stderr: 0.05, count: 20, revision: "main"),
        EvalResult(task: "wikitext:20", metric: "perplexity", value: 47.3982, count: 20, revision: "main"),
        EvalResult(task: "arc-easy:50", metric: "acc", value: 0.5, stderr: 0.0714, count: 50, revision: "merged <ties>"),
        EvalResult(task: "arc-easy:50", metric: "acc_norm", value: 0.48, stderr: 0.0714, count: 50, revision: "merged <ties>"),
        EvalResult(task: "wikitext:20", metric: "nll", value: 3.9, stderr: 0.05, count: 20, revision: "merged <ties>"),
        EvalResult(task: "wikitext:20", metric: "perplexity", value: 49.402449, count: 20, revision: "merged <ties>"),
    ])

    @Test func tableHasRevisionsAsAlignedColumns() {
        let lines = report.table().split(separator: "\n").map(String.init)
        #expect(lines.count == 5)
        #expect(lines[0].hasPrefix("task") && lines[0].contains("main") && lines[0].hasSuffix("merged <ties>"))
        #expect(lines[1].contains("arc-easy:50") && lines[1].contains("0.4600 ± 0.0712") && lines[1].contains("0.5000 ± 0.0714"))
        #expect(lines[4].contains("perplexity") && lines[4].contains("47.3982") && lines[4].contains("49.4024"))
        // Columns are aligned: the revision column starts at the same offset on every line.
        let column = lines[0].distance(from: lines[0].startIndex, to: lines[0].range(of: "main")!.lowerBound)
        for line in lines.dropFirst() {
            let cell = line.index(line.startIndex, offsetBy: column)
            #expect(line[line.index(before: cell)] == " " && line[cell] != " ", "misaligned: \(line)")
        }
    }

    @Test func jsonHasEveryResult() throws {
        let object = try JSONSerialization.jsonObject(with: Data(report.json().utf8)) as! [String: Any]
        let results = object["results"] as! [[String: Any]]
        #expect(results.count == 8)
        #expect(results[0]["task"] as? String == "arc-easy:50")
        #expect(results[0]["revision"] as? String == "main")
        #expect(results[0]["value"] as? Double == 0.46)
        #expect(results[0]["n"] as? Int == 50)
        #expect(results[3]["stderr"] is NSNull)
        #expect(results[7]["revision"] as? String == "merged <ties>")
    }

    @Test func svgChartsParseAsXMLWithOneBarPerValue() throws {
        let charts = report.svgCharts()
        #expect(charts.map(\.task) == ["arc-easy:50", "wikitext:20"])
        for (_, svg) in charts {
            let delegate = SVGCounter()
            let parser = XMLParser(data: Data(svg.utf8))
            parser.delegate = delegate
            #expect(parser.parse(), "XMLParser: \(String(describing: parser.parserError))")
            #expect(delegate.root == "svg")
            // 4 bars (2 metrics × 2 revisions) + background + 2 legend swatches.
            #expect(delegate.counts["rect"] == 7)
            #expect(delegate.texts.contains("merged <ties>"))
        }
        let arc = charts[0].svg
        #expect(arc.contains(">0.460<") && arc.contains(">0.500<"))  // values on bars
        #expect(arc.contains(">acc_norm<") && arc.contains(">score<"))  // x labels and y axis label
        let wiki = charts[1].svg
        #expect(wiki.contains(">perplexity<") && wiki.contains(">47.40<"))
    }

    /// The same SVG also parses with Python's xml.etree (an independent XML parser), when python3 is there.
    @Test func svgParsesWithPythonElementTree() throws {
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let python else { return }
        for (task, svg) in report.svgCharts() {
            let path = try EvalTestFiles.temporaryFile("\(task.replacingOccurrences(of: ":", with: "_")).svg", svg)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = ["-c", "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); print(r.tag, len(r.findall('.//{http://www.w3.org/2000/svg}rect')))", path]
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            process.waitUntilExit()
            let printed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus == 0)
            #expect(printed.trimmingCharacters(in: .whitespacesAndNewlines) == "{http://www.w3.org/2000/svg}svg 7")
        }
    }

    @Test func chartFileNamesAreSafe() {
        #expect(EvalReport.chartFileName(task: "arc-easy:50") == "arc-easy_50.svg")
        #expect(EvalReport.chartFileName(task: "my tasks/qa.v2") == "my_tasks_qa.v2.svg")
    }

    @Test func dataDirectoryPrecedence() {
        let env = [EvalDataDirectory.environmentVariable: "/from/env"]
        #expect(EvalDataDirectory.resolve(explicit: "/flag", default: "/proj/data", environment: env).path == "/flag")
        #expect(EvalDataDirectory.resolve(explicit: nil, default: "/proj/data", environment: env).path == "/from/env")
        #expect(EvalDataDirectory.resolve(explicit: nil, default: "/proj/data", environment: [:]).path == "/proj/data")
    }

    @Test func progressLineShowsCountRateAndETA() {
        let line = ProgressReporter.render(label: "sst2", done: 218, total: 872, elapsedSeconds: 10)
        #expect(line == "sst2 [######..................] 218/872  21.8/s  ETA 0:30")
        #expect(ProgressReporter.render(label: "x", done: 0, total: 5, elapsedSeconds: 0).hasSuffix("ETA --:--"))
        let quiet = ProgressReporter(label: "t", total: 3, enabled: false)
        quiet.advance(by: 2)
        quiet.finish()
        #expect(quiet.completed == 2)
    }
}

private final class SVGCounter: NSObject, XMLParserDelegate {
    var root: String?
    var counts: [String: Int] = [:]
    var texts: [String] = []
    private var current = ""
    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
        if root == nil { root = name }
        counts[name, default: 0] += 1
        current = ""
    }
    func parser(_ parser: XMLParser, foundCharacters string: String) { current += string }
    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text" { texts.append(current) }
    }
}
