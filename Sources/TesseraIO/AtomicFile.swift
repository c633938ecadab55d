import Foundation

/// Whole-file writes that no reader sees half done: a temporary file beside the target, then rename.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        do {
            try data.write(to: url, options: .atomic)
        } catch {
            throw TesseraError(.io, "\(path): cannot write the file", hint: "check free disk space and permissions", underlying: error)
        }
    }
}
