import Foundation
import TesseraCore

extension EvalReport {
    /// `{"results": [{"task", "metric", "revision", "value", "stderr", "n"}, ...]}` in report order, one result per
    /// line so that diffs of stored results read well.
    public func json() -> String {
        var lines: [String] = []
        for r in results {
            let object: JSONValue = .object([
                ("task", .string(r.task)),
                ("metric", .string(r.metric)),
                ("revision", .string(r.revision)),
                ("value", EvalReport.number(r.value)),
                ("stderr", r.stderr.map(EvalReport.number) ?? .null),
                ("n", .int(r.count)),
            ])
            lines.append("  " + object.serialized())
        }
        return "{\"results\": [\n" + lines.joined(separator: ",\n") + (lines.isEmpty ? "" : "\n") + "]}\n"
    }

    /// JSON has no NaN or infinity: those become null.
    private static func number(_ v: Double) -> JSONValue {
        v.isFinite ? .number(v, text: "\(v)") : .null
    }
}
