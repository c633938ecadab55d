#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TesseraCore
import Yams
import TesseraIO

/// How `git merge` combines tensors changed on both branches: rules from the committed file `.tessera/merge.yml`,
/// first match wins, overridable for one merge with `git -c tessera.merge.method=... merge` (see docs/merging.md).
///
///     rules:
///       - path: "*.safetensors"     # glob on the file's path (default "*")
///         tensors: "*.attn.*"       # glob on tensor names (default "*")
///         method: ties
///         weights: [1, 1]           # ours, theirs (default 1, 1)
///         parameters: {density: 0.5}
///
/// Read as strictly as mergekit configs: an unknown key, a list where a number belongs, an unknown method or
/// parameter is an error naming the line, because a typo must not silently change how branches merge.
public struct MergeRules: Sendable {
    public struct Rule: Sendable {
        public var path: String = "*"
        public var tensors: String = "*"
        public var method: String
        public var weights: [Double]?
        public var parameters: [String: ParameterSetting] = [:]

        public init(method: String, path: String = "*", tensors: String = "*", weights: [Double]? = nil,
                    parameters: [String: ParameterSetting] = [:]) {
            self.method = method
            self.path = path
            self.tensors = tensors
            self.weights = weights
            self.parameters = parameters
        }

        /// Whether the rule applies to a tensor of a file: both globs match (fnmatch(3), `*` crossing `/` and `.`).
        public func matches(path p: String, tensor: String) -> Bool {
            fnmatch(path, p, 0) == 0 && fnmatch(tensors, tensor, 0) == 0
        }
    }

    public var rules: [Rule]
    public static let file = ".tessera/merge.yml"
    static let ruleKeys = ["path", "tensors", "method", "weights", "parameters"]

    public init(rules: [Rule] = []) { self.rules = rules }

    /// The first rule that applies.
    public func rule(path: String, tensor: String) -> Rule? {
        rules.first { $0.matches(path: path, tensor: tensor) }
    }

    /// The rules of a worktree's `.tessera/merge.yml` (none if there is no such file). The file comes with the
    /// repository, so it is read as hostile: a regular file of at most 1 MiB of UTF-8.
    public static func load(worktree: String) throws -> MergeRules {
        let path = worktree + "/" + file
        var st = stat()
        guard stat(path, &st) == 0 else { return MergeRules() }
        guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= 1 << 20 else {
            throw TesseraError(.invalidParameter, "\(file): not a regular file of at most 1 MiB", hint: "see docs/merging.md for the format")
        }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw TesseraError(.invalidParameter, "\(file): not UTF-8 text", hint: "see docs/merging.md for the format")
        }
        return try parse(yaml: text)
    }

    public static func parse(yaml text: String, file: String = MergeRules.file) throws -> MergeRules {
        func bad(_ node: Node?, _ what: String, hint: String = "see docs/merging.md for the format") -> TesseraError {
            let line = node?.mark.map { " (line \($0.line))" } ?? ""
            return TesseraError(.invalidParameter, "\(file)\(line): \(what)", hint: hint)
        }
        // Nesting and alias expansion are bounded before anything walks the document.
        guard let root = try YAMLDocument.compose(text, file: file) else { return MergeRules() }
        guard let top = root.mapping else { throw bad(root, "expected a mapping with a 'rules:' list") }
        var out = MergeRules()
        for (key, value) in top {
            guard key.string == "rules" else { throw bad(key, "unknown key '\(key.string ?? "?")'", hint: "the file holds one key, rules:") }
            guard let list = value.sequence else { throw bad(value, "'rules' must be a list of rules") }
            for (k, node) in list.enumerated() {
                guard let map = node.mapping else { throw bad(node, "rule \(k + 1) must be a mapping (method:, path:, tensors:, ...)") }
                var method: String?
                var rule = Rule(method: "")
                for (rk, rv) in map {
                    let name = rk.string ?? "?"
                    func text() throws -> String {
                        guard case let .scalar(s) = rv, !s.string.isEmpty else { throw bad(rv, "rule \(k + 1): \(name) must be a string") }
                        return s.string
                    }
                    switch name {
                    case "method":
                        method = try text()
                        do { _ = try MergeRegistry.method(named: method!) } catch let e as TesseraError { throw bad(rv, "rule \(k + 1): \(e.message)", hint: e.hint ?? "") }
                    case "path": rule.path = try text()
                    case "tensors": rule.tensors = try text()
                    case "weights":
                        guard let items = rv.sequence, items.count == 2 else { throw bad(rv, "rule \(k + 1): weights must be a list of two numbers (ours, theirs)") }
                        rule.weights = try items.map { item in
                            guard case let .scalar(s) = item, s.style == .plain, case let .number(d)? = try YAMLScalar.resolve(s.string, what: "\(file): weights"),
                                  d.isFinite else { throw bad(item, "rule \(k + 1): weights must be numbers") }
                            return d
                        }
                    case "parameters":
                        rule.parameters = try MergeConfig.parameterMap(rv, "rule \(k + 1).parameters", file)
                    default:
                        throw bad(rk, "rule \(k + 1): unknown key '\(name)'", hint: "a rule has " + ruleKeys.joined(separator: ", "))
                    }
                }
                guard let method else { throw bad(node, "rule \(k + 1) has no method", hint: "add e.g. `method: linear`") }
                rule.method = method
                try rule.checkParameters(file: file, index: k + 1)
                out.rules.append(rule)
            }
        }
        return out
    }

    /// A rule for one merge from git config (`git -c tessera.merge.method=ties -c tessera.merge.weights=1,1
    /// -c tessera.merge.parameters=density=0.5 merge ...`), as strict as the file.
    public static func override(method: String, weights: String?, parameters: String?) throws -> Rule {
        _ = try MergeRegistry.method(named: method)
        var rule = Rule(method: method)
        if let weights {
            let values = weights.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard values.count == 2, values.allSatisfy({ $0?.isFinite == true }) else {
                throw TesseraError(.invalidParameter, "tessera.merge.weights '\(weights)' is not two numbers", hint: "write e.g. -c tessera.merge.weights=1,1")
            }
            rule.weights = values.map { $0! }
        }
        if let parameters {
            for item in parameters.split(separator: ",") {
                let kv = item.split(separator: "=", maxSplits: 1).map { String($0).trimmingCharacters(in: .whitespaces) }
                guard kv.count == 2, !kv[0].isEmpty else {
                    throw TesseraError(.invalidParameter, "tessera.merge.parameters: '\(item)' is not name=value", hint: "write e.g. -c tessera.merge.parameters=density=0.5")
                }
                rule.parameters[kv[0]] = .value(try YAMLScalar.resolve(kv[1], what: "tessera.merge.parameters") ?? .string(kv[1]))
            }
        }
        try rule.checkParameters(file: "git config tessera.merge", index: 0)
        return rule
    }
}

extension MergeRules.Rule {
    /// Unknown parameters fail when the rules are read, not in the middle of a merge.
    func checkParameters(file: String, index: Int) throws {
        guard method != "ours", method != "theirs", method != "base" else { return }
        let type = try MergeRegistry.method(named: method)
        let known = Set((type.globalParameters + type.modelParameters).flatMap { [$0.name] + $0.aliases })
        if let unknown = parameters.keys.sorted().first(where: { !known.contains($0) }) {
            throw TesseraError(.invalidParameter, "\(file): rule \(index): \(method) has no parameter '\(unknown)'",
                               hint: "its parameters: " + known.sorted().joined(separator: ", "))
        }
    }
}
