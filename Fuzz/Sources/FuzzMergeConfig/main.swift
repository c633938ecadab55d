import FuzzSupport
import TesseraMerge

/// The mergekit-style merge config reader (`tessera merge --config FILE`), YAML through Yams.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMergeConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = String(decoding: fuzzInput(data, size), as: UTF8.self)
    _ = try? MergeConfig.parse(yaml: text, file: "fuzz.yml")
    return 0
}
