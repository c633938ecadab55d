import Foundation
import TesseraCore

/// Paths to the shared reference data, located from this file (package root/Tests/Fixtures/reference/merge, vendored: see Tests/Fixtures/SOURCES.md).
enum ReferenceData {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let mergeDir: URL = packageRoot.appendingPathComponent("Tests/Fixtures/reference/merge")

    static func path(_ relative: String) -> String { mergeDir.appendingPathComponent(relative).path }
    static func file(_ relative: String) throws -> SafetensorsFile { try SafetensorsFile(path: path(relative)) }
}
