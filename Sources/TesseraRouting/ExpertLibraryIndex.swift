import Foundation
import TesseraCore
import TesseraIO

/// An expert library's index, `library.json` in the library's folder: which model its experts are for, and for each
/// expert its folder (a PEFT LoRA adapter beside library.json), the tasks it was trained on, the content hash of its
/// adapter and where it came from. The experts' own files stay as PEFT writes them (plus `training.json` when Tessera
/// trained them), so any PEFT tool reads a library folder by folder; the index is what `tessera experts` edits.
///
/// ```json
/// {"format": "tessera-expert-library", "version": 1, "base": "smollm2",
///  "experts": [{"name": "sst2", "tasks": ["sst2"], "sha256": "…", "source": "experts/sst2 (trained by tessera)"}]}
/// ```
public struct ExpertLibraryIndex: Sendable, Equatable {
    public static let fileName = "library.json"
    public static let format = "tessera-expert-library"

    public struct Entry: Sendable, Equatable {
        /// The expert's name, also its folder's name inside the library.
        public var name: String
        public var tasks: [String]
        /// `EvalAdapter`'s content hash of adapter_config.json and the factors.
        public var sha256: String
        /// Where the expert came from, as the user named it when adding it.
        public var source: String?

        public init(name: String, tasks: [String], sha256: String, source: String?) {
            self.name = name
            self.tasks = tasks
            self.sha256 = sha256
            self.source = source
        }
    }

    /// The base model the experts are for: its path in the repository (or as the user named it).
    public var base: String?
    public var experts: [Entry]

    public init(base: String?, experts: [Entry] = []) {
        self.base = base
        self.experts = experts
    }

    /// A name is one path component of letters, digits, '-', '_' and '.', not starting with '.'.
    public static func checkName(_ name: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        guard !name.isEmpty, name.count <= 100, !name.hasPrefix("."), name.allSatisfy({ allowed.contains($0) }) else {
            throw TesseraError(.usage, "'\(name)' is not a valid expert name (letters, digits, '-', '_', '.'; not starting with '.')",
                               hint: "pass --name NAME")
        }
    }

    public init(bytes: [UInt8], name: String) throws {
        guard let json = try? JSONParser.parse(bytes), json.objectValue != nil else {
            throw TesseraError(.invalidParameter, "\(name) is not a JSON object", hint: "restore it from git (`git checkout -- \(name)`)")
        }
        guard json["format"]?.stringValue == Self.format else {
            throw TesseraError(.invalidParameter, "\(name) is not a Tessera expert library index (no \"format\": \"\(Self.format)\")",
                               hint: "create a library with `tessera experts add LIBRARY ADAPTER --base MODEL`")
        }
        guard let version = json["version"]?.intValue, version == 1 else {
            throw TesseraError(.unsupported, "\(name): library version \(json["version"]?.intValue.map(String.init) ?? "?") is not one this tessera reads (1)",
                               hint: "upgrade tessera")
        }
        base = json["base"]?.stringValue
        var entries: [Entry] = [], seen = Set<String>()
        for (i, e) in (json["experts"]?.arrayValue ?? []).enumerated() {
            guard let n = e["name"]?.stringValue, let sha = e["sha256"]?.stringValue else {
                throw TesseraError(.invalidParameter, "\(name): expert \(i + 1) has no name or sha256", hint: "restore the file from git")
            }
            try Self.checkName(n)
            guard seen.insert(n).inserted else {
                throw TesseraError(.invalidParameter, "\(name): expert '\(n)' is listed twice", hint: "remove one with `tessera experts remove`")
            }
            entries.append(Entry(name: n, tasks: (e["tasks"]?.arrayValue ?? []).compactMap(\.stringValue), sha256: sha,
                                 source: e["source"]?.stringValue))
        }
        experts = entries
    }

    /// The index as written: pretty JSON with a final newline, stable key order (diffs stay small).
    public func encoded() -> [UInt8] {
        var out = "{\n  \"format\": \"\(Self.format)\",\n  \"version\": 1,\n  \"base\": "
        if let base { JSONValue.writeString(base, to: &out) } else { out += "null" }
        out += ",\n  \"experts\": ["
        for (i, e) in experts.enumerated() {
            out += i == 0 ? "\n" : ",\n"
            out += "    {\"name\": "
            JSONValue.writeString(e.name, to: &out)
            out += ", \"tasks\": ["
            for (k, t) in e.tasks.enumerated() {
                if k > 0 { out += ", " }
                JSONValue.writeString(t, to: &out)
            }
            out += "], \"sha256\": "
            JSONValue.writeString(e.sha256, to: &out)
            if let s = e.source {
                out += ", \"source\": "
                JSONValue.writeString(s, to: &out)
            }
            out += "}"
        }
        out += experts.isEmpty ? "]\n}\n" : "\n  ]\n}\n"
        return Array(out.utf8)
    }
}
