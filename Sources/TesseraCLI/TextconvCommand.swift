import ArgumentParser
import Foundation
import TesseraCore
import TesseraGit
import TesseraStore
import TesseraIO

/// git's textconv for tracked files (diff.tessera.textconv): what `git log -p`, `git show` (merges too) and
/// `git diff --no-ext-diff` compare instead of manifest lines, one readable line per tensor that changes only when
/// the tensor does.
struct TextconvCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "textconv",
        abstract: "Print a tracked file as one line per tensor (run by git log -p and git show).",
        discussion: "Also usable directly:\n  tessera textconv model.safetensors",
        shouldDisplay: false
    )

    @Argument(help: "A manifest (what git stores) or a checkpoint file.") var file: String

    func run() throws {
        let head = (try? FileHandle(forReadingFrom: URL(fileURLWithPath: file)).readData(ofLength: 17)).map { Array($0) } ?? []
        let store = (try? GitRepository(discovering: ".")).flatMap { try? $0.objectStore() }
        if Manifest.looksLikeManifest(head), let text = try? String(contentsOfFile: file, encoding: .utf8),
           let m = try? Manifest.parse(text, file: file) {
            print(Self.summary(of: m, store: store), terminator: "")
            return
        }
        if SafetensorsLayout.looksLikeSafetensors(prefix: head), let checkpoint = try? SafetensorsFile(path: file) {
            var lines = ["safetensors \(FileSystem.fileStat(file)?.size ?? 0) bytes, \(checkpoint.tensorNames.count) tensors"]
            for (k, v) in checkpoint.layout.metadata { lines.append(Self.metadataLine(k, v)) }
            for t in checkpoint.layout.tensors {
                let sha = SHA256Hasher.hex(try checkpoint.tensor(t.name).bytes)
                lines.append(Self.tensorLine(t.name, t.dtype, t.shape, sha))
            }
            print(lines.joined(separator: "\n"))
            return
        }
        // A PEFT adapter's config (tessera's diff pairs it with the weights; git log -p shows it as the text it is).
        if (file as NSString).lastPathComponent == "adapter_config.json" || head.first == UInt8(ascii: "{"),
           let bytes = try? FileSystem.readFile(file, limit: 1 << 20), (try? JSONParser.parse(bytes)) != nil {
            print(String(decoding: bytes, as: UTF8.self), terminator: bytes.last == 0x0A ? "" : "\n")
            return
        }
        // Anything else: its size and hash (a file stored whole).
        print("file \(FileSystem.fileStat(file)?.size ?? 0) bytes sha256:\(try FileSystem.sha256(ofFile: file))")
    }

    static func tensorLine(_ name: String, _ dtype: DType, _ shape: [Int], _ rawSHA256: String) -> String {
        "tensor \(Manifest.escapeName(name)) \(dtype.rawValue) [\(shape.map(String.init).joined(separator: ","))] sha256:\(rawSHA256.prefix(16))"
    }

    static func metadataLine(_ key: String, _ value: String) -> String {
        let flat = value.replacingOccurrences(of: "\n", with: "\\n")
        return "metadata \(key) = " + (flat.count <= 200 ? flat : "\(flat.prefix(120))… (\(value.utf8.count) bytes, sha256:\(SHA256Hasher.hex(Array(value.utf8)).prefix(16)))")
    }

    static func summary(of m: Manifest, store: ObjectStore?) -> String {
        var lines: [String] = []
        switch m.format {
        case .opaque:
            let raw = m.segments.first?.stored?.rawSHA256 ?? ""
            lines.append("file \(m.size) bytes sha256:\(raw.prefix(16))")
        case .safetensors:
            lines.append("safetensors \(m.size) bytes, \(m.tensors.count) tensors")
            // Metadata lives in the header object; shown when the store has it (a fresh clone may not yet).
            if let store, case let .header(b, e, st)? = m.segments.first,
               let bytes = try? store.readAll(st.objectID, expectedLength: e - b, expectedRawSHA256: st.rawSHA256),
               let layout = try? SafetensorsLayout.parse(headerBytes: bytes, fileSize: nil, file: "header") {
                for (k, v) in layout.metadata { lines.append(metadataLine(k, v)) }
            }
            for t in m.tensors { lines.append(tensorLine(t.name, t.dtype, t.shape, t.stored.rawSHA256)) }
        case .gguf, .pytorch, .npz:
            // Headers (metadata runs, zip records, the pickle) by content hash, then the tensors.
            let typed = m.typedTensors
            lines.append("\(m.format.rawValue) \(m.size) bytes, \(typed.count) tensors")
            for s in m.segments {
                if case let .header(b, e, st) = s { lines.append("header \(e - b) bytes sha256:\(st.rawSHA256.prefix(16))") }
                if case let .blob(b, e, st) = s { lines.append("stored whole \(e - b) bytes sha256:\(st.rawSHA256.prefix(16))") }
            }
            for t in typed {
                lines.append("tensor \(Manifest.escapeName(t.name)) \(t.type) [\(t.shape.map(String.init).joined(separator: ","))] sha256:\(t.stored.rawSHA256.prefix(16))")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
