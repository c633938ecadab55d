import Foundation
import Testing
import TesseraCore
import TesseraStore
import TesseraIO
import TesseraTestSupport

/// `StoredCheckpoint.readFloat32` (objects decoded straight into float storage) against `rawTensor`, from several
/// threads at once as a merge of stored revisions reads them, and on a damaged object.
@Suite struct StoredCheckpointReadTests {
    /// A checkpoint with an F32 tensor large enough to span many compressed chunks and a BF16 one, cleaned into
    /// `store`.
    static func storedCheckpoint(_ store: ObjectStore) throws -> (StoredCheckpoint, [Float]) {
        let count = (3 << 18) + 5
        let values: [Float] = (0..<count).map { (k: Int) -> Float in
            let wave = Float(sin(Double(k) * 0.001))
            return wave * Float(k % 97)
        }
        let path = NSTemporaryDirectory() + "tessera-stored-\(UUID().uuidString.prefix(8)).safetensors"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try SafetensorsWriter.write(tensors: [("w", try RawTensor(floats: values, shape: [values.count], dtype: .f32)),
                                              ("h", try RawTensor(floats: [1, 2, 3], shape: [3], dtype: .bf16))], to: path)
        let cleaner = CheckpointCleaner(store: store, fileName: "m.safetensors")
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        try bytes.withUnsafeBytes { try cleaner.consume($0) }
        let manifest = try Manifest.parse(String(decoding: try cleaner.finish(), as: UTF8.self))
        return (try StoredCheckpoint(manifest: manifest, store: store, name: "HEAD:m.safetensors"), values)
    }

    @Test func readFloat32EqualsTheStoredBytesFromManyThreads() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (checkpoint, values) = try Self.storedCheckpoint(store)
        #expect(checkpoint.allowsConcurrentReads)
        #expect(try checkpoint.readFloat32("h") == nil)  // BF16 goes through rawTensor
        #expect(try checkpoint.rawTensor("w").floats() == values)
        let results = UnsafeMutableBufferPointer<[Float]?>.allocate(capacity: 4)
        defer { results.deallocate() }
        results.initialize(repeating: nil)
        let source = UncheckedBox(checkpoint), out = UncheckedBox(results)
        DispatchQueue.concurrentPerform(iterations: 4) { k in out.value[k] = try? source.value.readFloat32("w") }
        for k in 0..<4 { #expect(results[k] == values, "thread \(k)") }
    }

    @Test func damagedObjectIsAnErrorNotGarbage() throws {
        let (store, dir) = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (checkpoint, _) = try Self.storedCheckpoint(store)
        let id = try #require(checkpoint.stored("w")).objectID
        let path = store.objectPath(id)
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: 100)
        try handle.write(contentsOf: Data(repeating: 0xA5, count: 64))
        try handle.close()
        #expect(throws: TesseraError.self) { try checkpoint.readFloat32("w") }
    }
}

/// Lets a test hand a value to `concurrentPerform`; each iteration touches its own slot.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
