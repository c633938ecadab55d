import Foundation
import Testing
import TesseraTestSupport

/// A contributor's clone has nothing beside it: no source, test or script may reach outside the repository for its
/// data (reference values are vendored in Tests/Fixtures, evaluation data in data/).
@Suite struct SelfContainedTests {
    static let root = packageRoot

    @Test func nothingReadsAFolderBesideTheRepository() throws {
        // Built at run time so that this file does not match itself.
        let needle = ".." + "/shared"
        var offenders: [String] = []
        for top in ["Sources", "Tests", "scripts", "bench", ".ci", "hooks", "Fuzz"] {
            guard let walker = FileManager.default.enumerator(atPath: Self.root + "/" + top) else { continue }
            while let relative = walker.nextObject() as? String {
                let path = Self.root + "/" + top + "/" + relative
                guard let data = FileManager.default.contents(atPath: path), data.count < 8 << 20 else { continue }
                if String(decoding: data, as: UTF8.self).contains(needle) { offenders.append(top + "/" + relative) }
            }
        }
        #expect(offenders.isEmpty, "these files read outside the repository: \(offenders)")
    }
}
