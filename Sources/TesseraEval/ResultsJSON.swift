import Foundation
import TesseraCore

extension EvalReport {
    /// `{"results": [{"task", "metric", "revision", "value", "stderr", "n"[, "adapters": [{"path", "sha256"}]]}, ...]}` in report order, one result per
    /// line so that diffs of stored results read well.
    public func json() -> String {
        var lines: [String] = []
        for r in results {
            var fields: [(String, JSONValue)] = [
                ("task", .string(r.task)),
                ("metric", .string(r.metric)),
                ("revision", .string(r.revision)),
                ("value", EvalReport.number(r.value)),
                ("stderr", r.stderr.map(EvalReport.number) ?? .null),
                ("n", .int(r.count)),
            ]
            if !r.adapters.isEmpty {
                fields.append(("adapters", .array(r.adapters.map { .object([("path", .string($0.path)), ("sha256", .string($0.sha256))]) })))
            }
            let object: JSONValue = .object(fields)
            lines.append("  " + object.serialized())
        }
        return "{\"results\": [\n" + lines.joined(separator: ",\n") + (lines.isEmpty ? "" : "\n") + "]}\n"
    }

    /// JSON has no NaN or infinity: those become null.
    private static func number(_ v: Double) -> JSONValue {
        v.isFinite ? .number(v, text: "\(v)") : .null
    }
}
