import FuzzSupport
import TesseraCore

/// The manifest parser (what smudge, diff, merge, fsck and push read from git). When an input parses, rendering it
/// and parsing the rendering must give the same manifest, and rendering that must give the same text.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzManifest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    _ = Manifest.looksLikeManifest(input)
    guard let manifest = try? Manifest.parse(String(decoding: input, as: UTF8.self), file: "fuzz") else { return 0 }
    _ = manifest.objects
    _ = manifest.tensors
    let text = manifest.render()
    let again: Manifest
    do {
        again = try Manifest.parse(text, file: "fuzz")
    } catch {
        finding("a parsed manifest renders to text that does not parse: \(error)\n\(text)")
    }
    if again != manifest { finding("render/parse round trip changed the manifest:\n\(text)") }
    if again.render() != text { finding("rendering is not stable across a round trip:\n\(text)") }
    return 0
}
