import Foundation
import TesseraCore
import TesseraTestSupport

/// Paths to the shared reference data (Tests/Fixtures/reference/merge, vendored: see Tests/Fixtures/SOURCES.md).
enum ReferenceData {
    static let mergeDir = URL(fileURLWithPath: PackagePaths.fixtures + "/reference/merge")

    static func path(_ relative: String) -> String { mergeDir.appendingPathComponent(relative).path }
    static func file(_ relative: String) throws -> SafetensorsFile { try SafetensorsFile(path: path(relative)) }
}
