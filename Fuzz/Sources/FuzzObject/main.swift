import FuzzSupport
import TesseraCore
import TesseraStore
import TesseraIO

/// The object decoder, as a hostile remote reaches it: the input is written into a store under its own SHA-256 (so the
/// object id check passes and the trailer and payload are what the decoder must judge), then read every way the
/// store reads. An input may carry a delta base first: "BASE", a 4-byte little-endian length L, L bytes of a base
/// object (stored under its own SHA-256 too), then the object.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzObject(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    var object = input[...]
    var base: ArraySlice<UInt8>? = nil
    if input.count >= 8, Array(input[0..<4]) == Array("BASE".utf8) {
        let n = Int(input[4]) | Int(input[5]) << 8 | Int(input[6]) << 16 | Int(input[7]) << 24
        if n <= input.count - 8 {
            base = input[8..<(8 + n)]
            object = input[(8 + n)...]
        }
    }
    let store = objectStore
    let baseID = base.map { place(Array($0), in: store) }
    let id = place(Array(object), in: store)
    defer {
        store.remove(id)
        if let baseID { store.remove(baseID) }
    }
    let decoder = ObjectDecoder()

    _ = try? store.trailer(of: id)
    var streamed: [UInt8] = []
    let readOK = (try? store.read(id, decoder: decoder) { streamed += $0 }) != nil
    let verifyOK = (try? store.verify(id, decoder: decoder)) != nil
    let all = try? store.readAll(id, decoder: decoder)
    if readOK != verifyOK || readOK != (all != nil) {
        finding("read, verify and readAll disagree (read \(readOK), verify \(verifyOK), readAll \(all != nil))")
    }
    if let all, all != streamed { finding("read and readAll decoded different bytes") }
    if readOK {
        // A buffer of the decoded length is filled exactly; one byte longer or shorter is an error, not a wrong answer.
        let exact = UnsafeMutableRawBufferPointer.allocate(byteCount: streamed.count + 1, alignment: 16)
        defer { exact.deallocate() }
        let fits = UnsafeMutableRawBufferPointer(rebasing: exact[0..<streamed.count])
        do { try store.readAll(id, into: fits, decoder: decoder) } catch { finding("readAll(into:) of the decoded length failed: \(error)") }
        if Array(UnsafeRawBufferPointer(fits)) != streamed { finding("readAll(into:) decoded different bytes") }
        if (try? store.readAll(id, into: exact, decoder: decoder)) != nil { finding("readAll(into:) accepted a buffer one byte too long") }
        if streamed.count > 0, (try? store.readAll(id, into: UnsafeMutableRawBufferPointer(rebasing: exact[0..<(streamed.count - 1)]), decoder: decoder)) != nil {
            finding("readAll(into:) accepted a buffer one byte too short")
        }
        // What a manifest-driven read expects: the right length and raw hash pass, a wrong one is refused.
        let rawSHA = SHA256Hasher.hex(streamed)
        do { _ = try store.readAll(id, expectedLength: streamed.count, expectedRawSHA256: rawSHA, decoder: decoder) } catch {
            finding("readAll with the decoded length and raw SHA-256 expected failed: \(error)")
        }
        if (try? store.verify(id, expectedLength: streamed.count + 1, decoder: decoder)) != nil { finding("verify accepted a wrong expected length") }
        let wrongSHA = String(repeating: rawSHA == String(repeating: "0", count: 64) ? "1" : "0", count: 64)
        if (try? store.verify(id, expectedRawSHA256: wrongSHA, decoder: decoder)) != nil { finding("verify accepted a wrong expected raw SHA-256") }
    }
    return 0
}

/// One store for the process; each input's objects are removed after it (so no input sees another's).
let objectStore = Scratch.freshStore()

/// Writes bytes as an object file under their SHA-256 (what adopting a downloaded LFS object amounts to).
@discardableResult
func place(_ bytes: [UInt8], in store: ObjectStore) -> String {
    let id = bytes.withUnsafeBytes { SHA256Hasher.hex($0) }
    let path = store.objectPath(id)
    do { try FileSystem.makeDirectories(String(path.dropLast(63))) } catch { fatalError("\(error)") }
    let scratch = Scratch.write(bytes, name: "object")
    do { try FileSystem.rename(scratch, path) } catch { fatalError("\(error)") }
    return id
}
