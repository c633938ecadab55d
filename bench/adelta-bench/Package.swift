// swift-tools-version:6.0
// A micro benchmark of the arithmetic delta codec (adelta4) on a base checkpoint and its fine-tune: encode CPU time
// (the codec alone), decode CPU time (a verified object read, as a checkout does it) and the objects' sizes. Its own
// package, like Fuzz/, so the main package's products stay as they are. See main.swift.
import PackageDescription

let package = Package(
    name: "AdeltaBench",
    dependencies: [.package(name: "tessera", path: "../..")],
    targets: [
        .executableTarget(name: "AdeltaBench", dependencies: [
            .product(name: "TesseraIO", package: "tessera"), .product(name: "TesseraCore", package: "tessera"),
            .product(name: "TesseraStore", package: "tessera"),
        ]),
    ]
)
