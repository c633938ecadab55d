import TesseraCore

/// The README.md tessera writes into an output folder: a Hugging Face model card whose front matter tags the model
/// (`merge`, `tessera`), names its base models and library, and whose text states the method, the inputs, the
/// parameters and the configuration as YAML (what mergekit's card states), plus the list of files tessera wrote
/// there. That list is what lets a later run replace the folder: tessera replaces only files its card lists.
public struct ModelCard: Sendable {
    /// The title (the output folder's name).
    public var title: String
    /// Hugging Face Hub ids of the inputs, when known (front matter `base_model`).
    public var baseModels: [String]
    /// `transformers`, or `peft` for an adapter.
    public var libraryName: String
    /// What was done, one sentence, Markdown (e.g. "merged with the TIES method, with `base/` as the base").
    public var summary: String
    /// The inputs as given (paths or REV:path) with their role ("base", "model", "task vector"...).
    public var inputs: [(role: String, name: String)]
    /// The parameters in force, as JSON (rendered as YAML).
    public var parameters: JSONValue?
    /// The configuration as YAML: the mergekit config as given, or one equivalent to the command line.
    public var configYAML: String
    /// The heading above the configuration.
    public var configHeading: String

    public init(title: String, baseModels: [String], libraryName: String, summary: String, inputs: [(role: String, name: String)],
                parameters: JSONValue?, configYAML: String, configHeading: String = "Configuration") {
        self.title = title
        self.baseModels = baseModels
        self.libraryName = libraryName
        self.summary = summary
        self.inputs = inputs
        self.parameters = parameters
        self.configYAML = configYAML
        self.configHeading = configHeading
    }

    /// A card larger than this is not one tessera wrote.
    public static let maxBytes = 16 << 20
    static let filesMarker = "<!-- tessera-files: "

    public func render(files: [String]) -> String {
        var out = "---\n"
        out += "base_model:" + (baseModels.isEmpty ? " []\n" : "\n" + baseModels.map { "- " + YAMLText.scalar($0) + "\n" }.joined())
        out += "library_name: \(YAMLText.scalar(libraryName))\n"
        out += "tags:\n- merge\n- tessera\n"
        out += "---\n"
        out += "# \(title)\n\n"
        out += "This model was \(summary), by Tessera (version control for model weights, inside git).\n\n"
        out += "## Merge details\n\n### Inputs\n\n"
        for i in inputs { out += "* \(i.role): `\(i.name)`\n" }
        if let parameters, parameters != .object([]) {
            out += "\n### Parameters\n\nIn force for this \(libraryName == "peft" ? "adapter" : "model"), defaults included:\n\n```yaml\n"
            out += YAMLText.block(parameters)
            out += "```\n"
        }
        out += "\n### \(configHeading)\n\n```yaml\n"
        out += configYAML.hasSuffix("\n") ? configYAML : configYAML + "\n"
        out += "```\n\n"
        out += "### Provenance\n\nEvery weight file records how it was made in its safetensors metadata (`tessera.*` keys: method, parameters, "
        out += "inputs and the SHA-256 of every input tensor); `tessera ls` shows it.\n\n"
        out += "### Files\n\n"
        for f in files { out += "* `\(f)`\n" }
        out += "\n" + Self.filesMarker + JSONValue.array(files.map { .string($0) }).serialized() + " -->\n"
        return out
    }

    /// The files a tessera card says tessera wrote, or nil if the text is not a tessera card.
    public static func filesWritten(byCard text: String) -> [String]? {
        guard text.hasPrefix("---\n"), text.contains("\n- tessera\n") else { return nil }
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix(filesMarker) && $0.hasSuffix(" -->") }) else { return nil }
        let json = line.dropFirst(filesMarker.count).dropLast(4)
        guard let list = (try? JSONParser.parse(Array(json.utf8)))?.arrayValue else { return nil }
        let names = list.compactMap(\.stringValue)
        guard names.count == list.count, names.contains("README.md"),
              names.allSatisfy({ (try? ShardIndex.validateShardName($0, file: "card")) != nil }) else { return nil }
        return names
    }

    /// A Hugging Face Hub id (`org/name`) as config.json's `_name_or_path` records it, or nil for a local path.
    public static func hubID(_ nameOrPath: String) -> String? {
        let parts = nameOrPath.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && !$0.hasPrefix(".") && !$0.hasPrefix("-") }) else { return nil }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard nameOrPath.count <= 96, nameOrPath.allSatisfy({ $0 == "/" || allowed.contains($0) }) else { return nil }
        return nameOrPath
    }
}

/// YAML text for cards and configurations: JSON values as block YAML, strings quoted whenever a plain scalar could
/// be read as something else (a number, a boolean, null, or YAML syntax). Quoted strings use JSON's escapes, which
/// YAML's double-quoted style reads the same way.
public enum YAMLText {
    public static func scalar(_ s: String) -> String {
        let plainSafe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+")
        let reserved: Set<String> = ["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"]
        if !s.isEmpty, s.allSatisfy({ plainSafe.contains($0) || $0 == "-" }), !s.hasPrefix("-"), !s.hasPrefix("."),
           Double(s) == nil, Int(s) == nil, !reserved.contains(s.lowercased()) {
            return s
        }
        var out = ""
        JSONValue.writeString(s, to: &out)
        return out
    }

    static func inline(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .number(_, text): return text
        case let .string(s): return scalar(s)
        case let .array(a): return "[" + a.map(inline).joined(separator: ", ") + "]"
        case let .object(o): return "{" + o.map { scalar($0.0) + ": " + inline($0.1) }.joined(separator: ", ") + "}"
        }
    }

    /// Block YAML for a value (objects as `key: value` lines, lists of objects as `- ` items, other lists inline).
    public static func block(_ v: JSONValue, indent: Int = 0) -> String {
        let pad = String(repeating: " ", count: indent)
        switch v {
        case let .object(pairs):
            var out = ""
            for (k, value) in pairs {
                switch value {
                case let .object(inner) where !inner.isEmpty:
                    out += pad + scalar(k) + ":\n" + block(value, indent: indent + 2)
                case let .array(items) where !items.isEmpty && items.allSatisfy({ $0.objectValue?.isEmpty == false }):
                    out += pad + scalar(k) + ":\n" + block(value, indent: indent + 2)
                default:
                    out += pad + scalar(k) + ": " + inline(value) + "\n"
                }
            }
            return out
        case let .array(items) where !items.isEmpty && items.allSatisfy({ $0.objectValue?.isEmpty == false }):
            var out = ""
            for item in items {
                // The first key on the dash's line, the rest aligned under it.
                let body = block(item, indent: indent + 2)
                out += pad + "- " + body.dropFirst(indent + 2)
            }
            return out
        default:
            return pad + inline(v) + "\n"
        }
    }
}
