import TesseraCore
import TesseraIO

/// An in-memory tensor source for tests.
public final class MemorySource: TensorSource {
    public let sourceName: String
    public var tensors: [(String, RawTensor)]
    public init(_ name: String, _ tensors: [(String, RawTensor)]) {
        sourceName = name
        self.tensors = tensors
    }
    public convenience init(_ name: String, floats: [(String, [Int], [Float])], dtype: DType = .f32) throws {
        self.init(name, try floats.map { ($0.0, try RawTensor(floats: $0.2, shape: $0.1, dtype: dtype)) })
    }
    public var tensorNames: [String] { tensors.map(\.0) }
    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        tensors.first { $0.0 == name }.map { ($0.1.dtype, $0.1.shape) }
    }
    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = tensors.first(where: { $0.0 == name }) else {
            throw TesseraError(.notFound, "\(sourceName): no tensor '\(name)'")
        }
        return t.1
    }
    public var metadata: [(String, String)] { [] }
}
