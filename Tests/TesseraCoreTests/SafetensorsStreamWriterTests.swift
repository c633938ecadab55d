import Foundation
import Testing
import TesseraCore

/// Tensors of every size, at unaligned offsets and past the reserved header, read back exactly from the stream
/// writer's file, in a directory on disk and on tmpfs (/dev/shm) alike, and the file ends at its last tensor.
@Suite struct SafetensorsStreamWriterTests {
    @Test func tensorsOfEverySizeReadBackExactly() throws {
        let counts = [1, 3, 1023, 2_100_000, 5, 1_048_576, 7]
        var directories = [NSTemporaryDirectory()]
        if FileManager.default.fileExists(atPath: "/dev/shm") { directories.append("/dev/shm/") }
        for directory in directories {
            let path = directory + "tessera-stream-\(UUID().uuidString).safetensors"
            defer { try? FileManager.default.removeItem(atPath: path) }
            let writer = try SafetensorsStreamWriter(path: path, reserveHeader: 1000)
            var expected: [String: [Float]] = [:]
            for (i, n) in counts.enumerated() {
                let values = (0..<n).map { Float($0 &* 7 &+ i) * 0.5 }
                expected["t\(i)"] = values
                try writer.append("t\(i)", float32: values, shape: [n])
            }
            try writer.finish(metadata: [("k", "v")])
            let file = try SafetensorsFile(path: path)
            for (name, values) in expected {
                #expect(try file.floats(name) == values, "\(directory) \(name)")
            }
            let size = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
            let data = counts.reduce(0) { $0 + 4 * $1 }
            #expect(size > data && size < data + 4096, "\(directory): the file ends at its last tensor (\(size) bytes)")
        }
    }
}
