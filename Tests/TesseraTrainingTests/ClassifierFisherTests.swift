import Foundation
import Testing
import TesseraCore
import TesseraTestSupport
import TesseraTraining

/// The diagonal Fisher of a softmax classifier against the merge reference's (`fisher_estimation.*`, computed by
/// enumerating labels and differentiating log p(y|x) with autograd: F = mean_n Σ_y p(y|x_n) (∇ log p(y|x_n))²).
@Suite struct ClassifierFisherTests {
    static let reference = PackagePaths.fixtures + "/reference/merge/fisher/fisher_reference.safetensors"

    @Test func softmaxClassifierFisherEqualsTheReference() throws {
        let file = try SafetensorsFile(path: Self.reference)
        func floats(_ name: String) throws -> [Float] { try file.tensor("fisher_estimation." + name).floats() }
        // The reference's layout is logits = X·W + b with W [D, C]; the head's is W [C, D].
        let w = try floats("W"), x = try floats("X"), b = try floats("b")
        let (d, c) = (4, 3)
        let head = (0..<c).flatMap { k in (0..<d).map { j in w[j * c + k] } }
        let inputs = (0..<6).map { Array(x[($0 * d)..<($0 * d + d)]) }
        let fisher = try ClassifierFisher.diagonal(weight: head, bias: b, outputs: c, inputs: inputs)
        let expectedW = try floats("fisher_W"), expectedB = try floats("fisher_b")
        for k in 0..<c {
            for j in 0..<d {
                let e = expectedW[j * c + k], a = fisher.weight[k * d + j]
                #expect(abs(a - e) <= 1e-6 * max(1, abs(e)), "F_W[\(k),\(j)] = \(a), reference \(e)")
            }
            #expect(abs(fisher.bias[k] - expectedB[k]) <= 1e-6 * max(1, abs(expectedB[k])), "F_b[\(k)]")
        }
        #expect(expectedW.contains { $0 > 1e-3 }, "the reference must not be trivially zero")
    }

    /// A one-output logistic head is the two-class softmax with logits (0, z): its Fisher for w equals the softmax
    /// head's for the difference of the two rows, p(1 − p) x².
    @Test func logisticHeadFisherIsTheTwoClassCase() throws {
        let inputs: [[Float]] = [[0.5, -1, 2], [1, 0.25, -0.5], [-2, 1, 0]]
        let w: [Float] = [0.3, -0.7, 0.2], b: Float = 0.1
        let logistic = try ClassifierFisher.diagonal(weight: w, bias: [b], outputs: 1, inputs: inputs)
        let softmax = try ClassifierFisher.diagonal(weight: [0, 0, 0] + w, bias: [0, b], outputs: 2, inputs: inputs)
        for j in 0..<3 { #expect(abs(logistic.weight[j] - softmax.weight[3 + j]) < 1e-7) }
        #expect(abs(logistic.bias[0] - softmax.bias[1]) < 1e-7)
    }

    @Test func badShapesAreRefusedWithOneLine() {
        #expect(throws: (any Error).self) { try ClassifierFisher.diagonal(weight: [1, 2, 3], bias: [0, 0], outputs: 2, inputs: [[1]]) }
        #expect(throws: (any Error).self) { try ClassifierFisher.diagonal(weight: [1, 2], bias: [0], outputs: 1, inputs: [[1, 2, 3]]) }
        #expect(throws: (any Error).self) { try ClassifierFisher.diagonal(weight: [1, 2], bias: [0], outputs: 1, inputs: []) }
    }
}
