// swift-tools-version:6.0
// Tessera: version control for machine-learning model weights, tensor by tensor, inside git.
//
// Module shape (see docs/architecture.md):
//   C* system-library targets     thin wrappers over the Debian C libraries (installed by scripts/setup.sh)
//   TesseraCore                   tensors, dtypes, formats, manifest, pure encodings: imports no C library
//   TesseraStore                  the content-addressed object store (zstd, SHA-256)
//   TesseraGit                    libgit2 reads, git's filter protocol, hooks, Git LFS transport
//   TesseraMath                   what the numeric code shares: BLAS/LAPACK, parallel loops, float codecs, vector kernels
//   TesseraMerge                  merge methods and task vectors behind a registry
//   TesseraEngine                 CPU inference engine (OpenBLAS)
//   TesseraEval                   evaluation tasks and metrics
//   TesseraTraining               backward passes through the engine's models, LoRA training, Fisher information
//   TesseraRouting                expert libraries and routers (Arrow, PhatGOOSE, Glider, uniform, oracle) in the forward pass
//   TesseraRepository             the repository layer: addresses (REV:path) and checkpoint names, reachability and
//                                 gc, push and fetch plans, history, the merge driver's and the hooks' work
//   TesseraCLI                    every command (parse, call, print), as a library so tests can drive it
//   tessera                       the thin executable
import PackageDescription

// Every target keeps Swift's bounds, overflow and precondition checks: parsers of untrusted bytes (checkpoints,
// manifests, objects, GGUF, configs) live in them. Only measured numeric kernels may opt out, target by target.
// MemberImportVisibility: a file sees only the members of modules it imports itself, so an undeclared module
// dependency (one reached only transitively) fails the build.
let swiftSettings: [SwiftSetting] = [.enableUpcomingFeature("MemberImportVisibility")]
// TesseraMath: loops over buffers whose sizes the checked callers validated; no parser, no input bytes decided here.
let numericKernelSettings: [SwiftSetting] = [
    .enableUpcomingFeature("MemberImportVisibility"), .unsafeFlags(["-Ounchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "tessera",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tessera", targets: ["tessera"]),
        // For the fuzzing package in Fuzz/ (it depends on this package by path).
        .library(name: "TesseraIO", targets: ["TesseraIO"]),
        .library(name: "TesseraCore", targets: ["TesseraCore"]),
        .library(name: "TesseraStore", targets: ["TesseraStore"]),
        .library(name: "TesseraMerge", targets: ["TesseraMerge"]),
        .library(name: "TesseraEngine", targets: ["TesseraEngine"]),
        .library(name: "TesseraEval", targets: ["TesseraEval"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        .systemLibrary(name: "CZstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CGit2", providers: [.apt(["libgit2-dev"])]),
        .systemLibrary(name: "CCrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "COpenBLAS", providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),

        // Hand-vectorised kernels (AVX2, chosen at run time, with portable fallbacks) for GGUF block formats.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        // SHA-256 of two messages at once with the SHA extensions (provenance hashing of merge inputs).
        .target(name: "CSHA256", cSettings: [.unsafeFlags(["-O3"])]),

        // The bottom: the error every module throws, and the operating system's edge (file descriptors, atomic
        // writes, mappings, large buffers, byte budgets for pipelines, progress on the terminal).
        .target(name: "TesseraIO", swiftSettings: swiftSettings),
        .target(name: "TesseraCore", dependencies: ["TesseraIO"], swiftSettings: swiftSettings),
        .target(name: "TesseraStore", dependencies: ["TesseraIO", "TesseraCore", "CZstd", "CCrypto", "CSHA256", "CKernels"], swiftSettings: swiftSettings),
        .target(name: "TesseraGit", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "CGit2"], swiftSettings: swiftSettings),
        .target(name: "TesseraMath", dependencies: ["TesseraIO", "TesseraCore", "COpenBLAS", "CKernels"], swiftSettings: numericKernelSettings),
        .target(name: "TesseraMerge", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "TesseraMath", "Yams"], swiftSettings: swiftSettings),
        .target(name: "TesseraEngine", dependencies: ["TesseraIO", "TesseraCore", "TesseraMath", "CKernels"], swiftSettings: swiftSettings),
        .target(name: "TesseraEval", dependencies: ["TesseraIO", "TesseraCore", "TesseraEngine"], swiftSettings: swiftSettings),
        .target(name: "TesseraTraining", dependencies: ["TesseraIO", "TesseraCore", "TesseraMath", "TesseraEngine", "TesseraEval"], swiftSettings: swiftSettings),
        .target(name: "TesseraRouting", dependencies: ["TesseraIO", "TesseraCore", "TesseraMath", "TesseraEngine"], swiftSettings: swiftSettings),
        .target(name: "TesseraRepository", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "TesseraGit", "TesseraMerge"], swiftSettings: swiftSettings),
        .target(
            name: "TesseraCLI",
            dependencies: [
                "TesseraIO", "TesseraCore", "TesseraStore", "TesseraGit", "TesseraMath", "TesseraMerge", "TesseraEngine", "TesseraEval",
                "TesseraTraining", "TesseraRouting", "TesseraRepository", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "tessera", dependencies: ["TesseraCLI"], swiftSettings: swiftSettings),

        // What the test targets share: the sandbox (isolated HOME, shell commands), independent checkpoint builders
        // and reader, package paths, the Git LFS test server, temporary stores. Used by test targets only.
        .target(name: "TesseraTestSupport", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore"], path: "Tests/TesseraTestSupport",
                swiftSettings: swiftSettings),
        .testTarget(name: "TesseraCoreTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraStoreTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "TesseraTestSupport", "CKernels"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraMathTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraMath", "TesseraTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraMergeTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "TesseraMerge", "TesseraTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraRepositoryTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "TesseraGit", "TesseraMerge",
                                                                  "TesseraRepository", "TesseraTestSupport"], swiftSettings: swiftSettings),
        // Commands run in process (`TesseraCommand.parseAsRoot([...]).run()`) on temporary repositories.
        .testTarget(name: "TesseraCommandTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "TesseraMerge", "TesseraRepository", "TesseraCLI",
                                                               "TesseraTestSupport", .product(name: "ArgumentParser", package: "swift-argument-parser")], swiftSettings: swiftSettings),
        // The tessera binary driven by real git and git-lfs, in sandboxes.
        .testTarget(name: "TesseraEndToEndTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraStore", "TesseraGit", "TesseraTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraEngineTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraEngine", "TesseraMath", "TesseraTestSupport"], exclude: ["Fixtures"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraTrainingTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraEngine", "TesseraMath", "TesseraEval", "TesseraTraining", "TesseraTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraRoutingTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraEngine", "TesseraMath", "TesseraRouting", "TesseraTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "TesseraEvalTests", dependencies: ["TesseraIO", "TesseraCore", "TesseraEngine", "TesseraEval", "TesseraTestSupport"], exclude: ["Fixtures"], swiftSettings: swiftSettings),
    ]
)
