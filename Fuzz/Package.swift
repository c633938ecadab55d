// swift-tools-version:5.3
// Tessera's fuzzing targets: one libFuzzer executable per reader of untrusted bytes, plus the bit-flip sweep.
// Built with the fuzzer runtime (scripts/fuzz.sh does this; scripts/test.sh too, for the smoke test):
//   swift build -c release --package-path Fuzz --scratch-path .build-fuzz \
//       -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library
// See Fuzz/README.md.
import PackageDescription

let tessera: (String) -> Target.Dependency = { .product(name: $0, package: "tessera") }
// MemberImportVisibility, as in the main package: a file sees only the members of modules it imports itself. Tools
// version 5.3 has no enableUpcomingFeature, hence the compiler flag (allowed: this is the root package).
let swiftSettings: [SwiftSetting] = [.unsafeFlags(["-enable-upcoming-feature", "MemberImportVisibility"])]

// Tools version 5.3 on purpose: each fuzz target is a plain target with a main.swift that defines no entry point
// (libFuzzer's runtime supplies main); newer tools versions rename an executable's entry point, which the fuzzer
// runtime does not provide.
let package = Package(
    name: "TesseraFuzz",
    dependencies: [
        .package(name: "tessera", path: ".."),
    ],
    targets: [
        .target(name: "FuzzSupport", dependencies: [tessera("TesseraIO"), tessera("TesseraCore"), tessera("TesseraStore")], swiftSettings: swiftSettings),
        .target(name: "FuzzSafetensors", dependencies: ["FuzzSupport", tessera("TesseraCore"), tessera("TesseraStore")], swiftSettings: swiftSettings),
        .target(name: "FuzzManifest", dependencies: ["FuzzSupport", tessera("TesseraCore")], swiftSettings: swiftSettings),
        .target(name: "FuzzObject", dependencies: ["FuzzSupport", tessera("TesseraIO"), tessera("TesseraCore"), tessera("TesseraStore")], swiftSettings: swiftSettings),
        .target(name: "FuzzGGUF", dependencies: ["FuzzSupport", tessera("TesseraCore"), tessera("TesseraEngine")], swiftSettings: swiftSettings),
        .target(name: "FuzzTaskFile", dependencies: ["FuzzSupport", tessera("TesseraEval")], swiftSettings: swiftSettings),
        .target(name: "FuzzMergeConfig", dependencies: ["FuzzSupport", tessera("TesseraMerge")], swiftSettings: swiftSettings),
        // Not a fuzzer: decodes every bit-flipped variant of a set of objects (scripts/bitflip-sweep.sh drives it).
        .target(name: "BitflipSweep", dependencies: ["FuzzSupport", tessera("TesseraIO"), tessera("TesseraCore"), tessera("TesseraStore")], swiftSettings: swiftSettings),
    ]
)
