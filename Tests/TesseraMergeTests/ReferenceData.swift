import Foundation
import TesseraCore

/// Paths to the shared reference data, located from this file (package root/../shared/reference/merge).
enum ReferenceData {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let mergeDir: URL = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/reference/merge")

    static func path(_ relative: String) -> String { mergeDir.appendingPathComponent(relative).path }
    static func file(_ relative: String) throws -> SafetensorsFile { try SafetensorsFile(path: path(relative)) }
}
