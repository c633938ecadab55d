import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO

/// Task files read as hostile input: every problem is one error naming the file (and the line), never a crash or a
/// hang.
@Suite struct HostileTaskFileTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "tessera-hostile-tasks-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = directory + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func write(_ name: String, _ text: String) throws -> String { try write(name, Array(text.utf8)) }

    /// `UserTask(path:)` (or preparing it) fails with one line that contains every word of `words`.
    func expectRefused(_ path: String, _ words: [String], prepare: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let task = try UserTask(path: path)
            if prepare { _ = try task.prepare(data: EvalDataDirectory(directory)) }
            Issue.record("accepted a hostile task file", sourceLocation: sourceLocation)
        } catch let e as TesseraError {
            for w in words { #expect(e.message.contains(w), "'\(w)' not in \(e.message)", sourceLocation: sourceLocation) }
            #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
        } catch {
            Issue.record("not a TesseraError: \(error)", sourceLocation: sourceLocation)
        }
    }

    static let header = #"{"tessera_task": 1, "type": "multiple_choice", "name": "t"}"#

    @Test("invalid UTF-8 is reported on its line")
    func invalidUTF8() throws {
        var bytes = Array((Self.header + "\n" + #"{"context": "ok", "choices": ["a", "b"], "answer": 0}"# + "\n").utf8)
        bytes += Array(#"{"context": "bad "#.utf8) + [0xC3, 0x28, 0xFF] + Array(#"", "choices": ["a", "b"], "answer": 0}"#.utf8) + [0x0A]
        let path = try write("utf8.jsonl", bytes)
        expectRefused(path, [path + ":3:", "not UTF-8"])
    }

    @Test("deeply nested JSON, huge and negative numbers")
    func numbersAndNesting() throws {
        let deep = Self.header + "\n" + String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000) + "\n"
        expectRefused(try write("deep.jsonl", deep), ["deep.jsonl:2:", "nested too deeply"])
        let objects = Self.header + "\n" + String(repeating: #"{"a":"#, count: 100_000) + "1" + String(repeating: "}", count: 100_000) + "\n"
        expectRefused(try write("objects.jsonl", objects), ["objects.jsonl:2:"])
        for (answer, name) in [("1e999", "inf"), ("-1", "negative"), ("99999999999999999999999", "huge"), ("0.5", "fraction")] {
            let text = Self.header + "\n" + #"{"context": "c", "choices": ["a", "b"], "answer": "# + answer + "}\n"
            expectRefused(try write("\(name).jsonl", text), ["\(name).jsonl:2:", "\"answer\""])
        }
        let tokens = #"{"tessera_task": 1, "type": "generation", "name": "g", "max_new_tokens": -5}"# + "\n" + #"{"prompt": "p", "reference": "r"}"#
        expectRefused(try write("tokens.jsonl", tokens), ["tokens.jsonl:1:", "max_new_tokens"])
        let version = #"{"tessera_task": 1e400, "type": "perplexity", "name": "p"}"# + "\n" + #"{"text": "x"}"#
        expectRefused(try write("version.jsonl", version), ["version.jsonl:1:", "tessera_task"])
    }

    @Test("a huge line is read and checked (5 MB of text in one example)")
    func hugeLine() throws {
        let long = String(repeating: "abcdefghij", count: 500_000)
        let ok = #"{"tessera_task": 1, "type": "perplexity", "name": "p"}"# + "\n" + #"{"text": ""# + long + "\"}\n"
        let task = try UserTask(path: try write("long.jsonl", ok))
        guard case let .perplexity(texts) = task.examples else { Issue.record("wrong kind"); return }
        #expect(texts == [long])
        // The same line cut short is one error naming line 2.
        let cut = String(ok.dropLast(3))
        expectRefused(try write("cut.jsonl", cut), ["cut.jsonl:2:", "not valid JSON"])
    }

    @Test("a task file or a head that is a directory or a FIFO is refused without blocking")
    func directoriesAndFIFOs() throws {
        let folder = directory + "/folder.jsonl"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        expectRefused(folder, ["folder.jsonl", "a directory"])
        let fifo = directory + "/fifo.jsonl"
        #expect(mkfifo(fifo, 0o600) == 0)
        expectRefused(fifo, ["fifo.jsonl", "a FIFO"])

        let headFIFO = directory + "/head.safetensors"
        #expect(mkfifo(headFIFO, 0o600) == 0)
        let classification = #"{"tessera_task": 1, "type": "classification", "name": "c", "labels": ["a", "b"], "head": "head.safetensors"}"#
            + "\n" + #"{"text": "x", "label": "a"}"# + "\n"
        expectRefused(try write("c.jsonl", classification), ["c.jsonl", "head.safetensors", "a FIFO"], prepare: true)
        let headDirectory = #"{"tessera_task": 1, "type": "classification", "name": "c", "labels": ["a", "b"], "head": "."}"#
            + "\n" + #"{"text": "x", "label": "a"}"# + "\n"
        expectRefused(try write("d.jsonl", headDirectory), ["d.jsonl", "a directory"], prepare: true)
    }
}
