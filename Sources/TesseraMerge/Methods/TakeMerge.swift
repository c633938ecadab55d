import TesseraCore
import TesseraIO

/// `ours`: the first listed model's tensor, unchanged (a git merge's "ours" side).
public struct TakeOursMerge: MergeMethod {
    public static let name = "ours"
    public static let summary = "take the first model's tensor"
    public static let baseUse = BaseUse.ignored
    public static let globalParameters: [ParameterDefinition] = []
    public static let modelParameters: [ParameterDefinition] = []
    public init() {}
    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        guard !input.models.isEmpty else { throw TesseraError(.usage, "ours: no models (tensor '\(input.name)')", hint: "list the models to take from") }
        return input.models[0]
    }
}

/// `theirs`: the last listed model's tensor, unchanged (a git merge's "theirs" side). Needs at least two models.
public struct TakeTheirsMerge: MergeMethod {
    public static let name = "theirs"
    public static let summary = "take the last model's tensor"
    public static let baseUse = BaseUse.ignored
    public static let globalParameters: [ParameterDefinition] = []
    public static let modelParameters: [ParameterDefinition] = []
    public init() {}
    public func merge(_ input: inout TensorMergeInput) throws -> [Float] {
        guard input.models.count >= 2 else {
            throw TesseraError(.usage, "theirs: needs two models, ours then theirs (tensor '\(input.name)')", hint: "list both sides")
        }
        return input.models[input.models.count - 1]
    }
}

/// `base`: the base model's tensor, unchanged (drop both sides' changes).
public struct TakeBaseMerge: MergeMethod {
    public static let name = "base"
    public static let summary = "take the base model's tensor"
    public static let baseUse = BaseUse.required
    public static let globalParameters: [ParameterDefinition] = []
    public static let modelParameters: [ParameterDefinition] = []
    public init() {}
    public func merge(_ input: inout TensorMergeInput) throws -> [Float] { try input.requireBase(Self.name) }
}
