/// Parameter definitions shared by several methods (mergekit's names and defaults).
enum CommonParameters {
    static let weight = ParameterDefinition.number("weight", 1, help: "the model's weight (mergekit requires it; Tessera defaults to 1)")
    static let density = ParameterDefinition.number("density", 1, help: "fraction of the task vector kept, in (0, 1]")
    static let gamma = ParameterDefinition.number("gamma", 0.01, help: "fraction of largest-magnitude outliers dropped (breadcrumbs)")
    static func normalize(_ d: Bool) -> ParameterDefinition {
        .bool("normalize", d, help: "divide by the (agreeing) weights' sum")
    }
    static func rescale(_ d: Bool) -> ParameterDefinition {
        .bool("rescale", d, help: "DARE: divide survivors by density; magnitude methods: restore the L1 norm")
    }
    static let rescaleMode = ParameterDefinition.string("rescale_mode", "l1", help: "DARE rescale: l1 (restore ‖τ‖₁, mergekit) or density (divide by density, DARE paper)")
    static let lambda = ParameterDefinition.number("lambda", 1, help: "scale of the merged task vector")
    static let int8Mask = ParameterDefinition.bool("int8_mask", false, help: "mergekit memory option; accepted and ignored")
    static let consensus = ParameterDefinition.string("consensus", "sum", help: "sign election: sum (TIES) or count")
    static let seed = ParameterDefinition.number("seed", 0, aliases: ["random_seed"], help: "DARE drop-mask seed")
}
