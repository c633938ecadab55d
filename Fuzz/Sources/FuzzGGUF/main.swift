#if canImport(Glibc)
import Glibc
#endif
import FuzzSupport
import TesseraCore
import TesseraEngine

/// The GGUF reader (what `tessera import` and the engine open): the input as a file, then every tensor of a supported
/// type dequantised (the count must match its shape) and its encoded bytes visited. A file naming two tensors alike is
/// a finding too: lookups by name would silently see only one of them (llama.cpp refuses such files).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGGUF(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = Scratch.write(fuzzInput(data, size), name: "fuzz.gguf")
    guard let file = try? GGUFFile(path: path) else { return 0 }
    for entry in file.metadataEntries { _ = entry.value.description }
    var seen = Set<String>()
    var duplicate: String? = nil
    for listed in file.tensorInfos {
        if !seen.insert(listed.name).inserted { duplicate = duplicate ?? listed.name; continue }
        guard let info = file.info(listed.name), info.type.isSupported else { continue }
        if let values = try? file.dequantized(info.name), values.count != info.elementCount {
            finding("tensor '\(info.name)' dequantised to \(values.count) values, its shape has \(info.elementCount)")
        }
        _ = try? file.withEncodedBytes(info.name) { $0.count }
        _ = try? file.rawTensor(info.name)
    }
    // TESSERA_FUZZ_GGUF_DUPLICATES=ignore lets a run look past this finding while it is open.
    if let duplicate, !ignoreDuplicates { finding("the file names two tensors '\(duplicate)' and was accepted") }
    return 0
}

let ignoreDuplicates = getenv("TESSERA_FUZZ_GGUF_DUPLICATES").map { String(cString: $0) } == "ignore"
