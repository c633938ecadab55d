import FuzzSupport
import TesseraEval

/// The user task-file reader (`tessera eval --task FILE.jsonl`), which checks the whole file when the task is made.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTaskFile(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = Scratch.write(fuzzInput(data, size), name: "task.jsonl")
    if let task = try? UserTask(path: path) {
        _ = task.exampleCount
        _ = try? UserTask(path: path, limit: 1)
    }
    return 0
}
