import FuzzSupport
import TesseraCore
import TesseraStore

/// The safetensors header parser, then the streaming cleaner (what `git add` runs) on the same bytes, fed in pieces of
/// input-derived sizes. Errors are expected; a crash, a hang or a runaway allocation is a finding, and so is a file
/// that cleans without error but does not rebuild byte for byte from its manifest and objects.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    _ = try? SafetensorsLayout.parse(headerBytes: input, fileSize: input.count, file: "fuzz.safetensors")

    let store = Scratch.freshStore()
    defer { Scratch.removeStore(store) }
    let cleaner = CheckpointCleaner(store: store, fileName: "fuzz.safetensors")
    var sizes = PieceSizes(seed: input)
    let manifestBytes: [UInt8]
    do {
        try input.withUnsafeBytes { all in
            var at = 0
            while at < all.count {
                let n = min(sizes.next()!, all.count - at)
                try cleaner.consume(UnsafeRawBufferPointer(rebasing: all[at..<(at + n)]))
                at += n
            }
        }
        manifestBytes = try cleaner.finish()
    } catch {
        cleaner.abandon()
        return 0
    }
    // A manifest given to the cleaner comes back unchanged (cleaning is idempotent); its objects are not here.
    if manifestBytes == input && Manifest.looksLikeManifest(input) { return 0 }
    let manifest: Manifest
    do {
        manifest = try Manifest.parse(String(decoding: manifestBytes, as: UTF8.self), file: "fuzz.safetensors")
    } catch {
        finding("the cleaner accepted the input but wrote a manifest that does not parse: \(error)")
    }
    var rebuilt: [UInt8] = []
    do {
        try store.reconstruct(manifest, file: "fuzz.safetensors") { rebuilt += $0 }
    } catch {
        finding("the cleaner accepted the input but its manifest does not rebuild: \(error)")
    }
    if rebuilt != input {
        finding("the cleaner accepted the input but the rebuilt file differs (\(rebuilt.count) bytes rebuilt, \(input.count) given)")
    }
    return 0
}
