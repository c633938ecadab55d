import Foundation

/// The package root, from this file's path (Tests/TesseraTestSupport/PackagePaths.swift).
public let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// The tessera executable under test: $TESSERA_BIN, else the newest of .build/{release,debug}/tessera.
public let tesseraBinary: String = {
    if let p = ProcessInfo.processInfo.environment["TESSERA_BIN"], FileManager.default.isExecutableFile(atPath: p) { return p }
    let candidates = ["release", "debug"].map { "\(packageRoot)/.build/\($0)/tessera" }
        .filter { FileManager.default.isExecutableFile(atPath: $0) }
    let newest = candidates.max { a, b in
        let da = (try? FileManager.default.attributesOfItem(atPath: a)[.modificationDate] as? Date) ?? .distantPast
        let db = (try? FileManager.default.attributesOfItem(atPath: b)[.modificationDate] as? Date) ?? .distantPast
        return da < db
    }
    return newest ?? "tessera"
}()

/// Where the tests' data is, under the package root.
public enum PackagePaths {
    /// Vendored reference values and test-only data (sources and licences in its SOURCES.md).
    public static var fixtures: String { packageRoot + "/Tests/Fixtures" }
    /// The evaluation data the built-in tasks read.
    public static var data: String { packageRoot + "/data" }
    /// The real models (scripts/setup.sh installs them), or $TESSERA_MODELS_DIR.
    public static var models: String { ProcessInfo.processInfo.environment["TESSERA_MODELS_DIR"] ?? packageRoot + "/.cache/models" }
}
