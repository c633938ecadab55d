import TesseraCore
import TesseraIO

/// How a checkpoint's tensors divide into the weights before the layers (embeddings), the numbered layers, and the
/// weights after them (final norm, output head, pooler), as mergekit's architecture files divide them. Slices
/// (`layer_range`) take whole layers and renumber them; the weights before the layers come from the first slice's
/// models and the weights after from the last slice's, as mergekit plans them.
///
/// The layers are found from the names: the layer container is the dotted prefix before the first purely numeric
/// component (`model.layers.` for Llama, Mistral and Qwen; `transformer.h.` for GPT-2 and GPT-Neo;
/// `bert.encoder.layer.` or `encoder.layer.` for BERT; `gpt_neox.layers.`), the one most tensors sit under. Reading
/// the layout from the names rather than from a table of architectures keeps every architecture whose layers are
/// numbered this way working, which is also what mergekit falls back to for architectures it has no file for.
public struct LayerLayout: Sendable, Equatable {
    /// The layer container with its trailing dot, e.g. `model.layers.`; empty when the model has no numbered layers.
    public let prefix: String
    /// Weights before the layers, in the source's order.
    public let pre: [String]
    /// Weights after the layers, in the source's order.
    public let post: [String]
    /// Each layer's tensor names (full names), in the source's order.
    public let layers: [[String]]

    public var layerCount: Int { layers.count }

    /// Weights after the layers: the final norm, the output head and classification heads, as mergekit's
    /// architecture files list them (llama/mistral `model.norm`, `lm_head`; gpt2 `transformer.ln_f`; gpt-neox
    /// `gpt_neox.final_layer_norm`, `embed_out`; bert `pooler`). Everything else outside the layers comes before them.
    static let postMarkers: [(prefix: Bool, text: String)] = [
        (true, "lm_head."), (true, "embed_out."), (true, "score."), (true, "classifier."), (true, "cls."), (true, "qa_outputs."),
        (false, "pooler."), (false, "ln_f."), (false, "final_layer_norm."), (false, "final_layernorm."), (false, "norm_f."),
    ]

    static func isPost(_ name: String, layerPrefix: String) -> Bool {
        for m in postMarkers {
            if m.prefix ? name.hasPrefix(m.text) : (name.hasPrefix(m.text) || name.contains("." + m.text)) { return true }
        }
        // `model.norm.weight`: a norm beside the layer container (its parent's own norm) follows the layers.
        let parent = layerPrefix.split(separator: ".").dropLast().joined(separator: ".")
        let stem = parent.isEmpty ? "" : parent + "."
        return name.hasPrefix(stem + "norm.") || (stem.isEmpty && name.hasPrefix("norm."))
    }

    /// The layer container prefix and index of a name, if it has a purely numeric component.
    public static func split(_ name: String) -> (prefix: String, index: Int, rest: String)? {
        var start = name.startIndex
        while start < name.endIndex {
            let end = name[start...].firstIndex(of: ".") ?? name.endIndex
            let part = name[start..<end]
            if !part.isEmpty, part.allSatisfy({ $0.isASCII && $0.isNumber }), let i = Int(part) {
                return (String(name[..<start]), i, String(name[end...]))
            }
            start = end < name.endIndex ? name.index(after: end) : end
        }
        return nil
    }

    public init(tensorNames: [String]) {
        var counts: [String: Int] = [:]
        for n in tensorNames { if let s = LayerLayout.split(n) { counts[s.prefix, default: 0] += 1 } }
        let prefix = counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key ?? ""
        var layers: [[String]] = []
        var pre: [String] = [], post: [String] = []
        for n in tensorNames {
            if !prefix.isEmpty, let s = LayerLayout.split(n), s.prefix == prefix {
                while layers.count <= s.index { layers.append([]) }
                layers[s.index].append(n)
            } else if LayerLayout.isPost(n, layerPrefix: prefix) {
                post.append(n)
            } else {
                pre.append(n)
            }
        }
        self.prefix = prefix
        self.pre = pre
        self.post = post
        self.layers = layers
    }

    /// A layer tensor's name with its layer index replaced.
    public func renumbered(_ name: String, to index: Int) -> String {
        guard let s = LayerLayout.split(name), s.prefix == prefix else { return name }
        return prefix + String(index) + s.rest
    }

    /// config.json keys that hold the number of layers, by architecture: `num_hidden_layers` (Llama, Mistral, BERT,
    /// GPT-NeoX), `n_layer` (GPT-2), `num_layers` (GPT-Neo), `n_layers`. The output's config gets every one it has.
    public static let layerCountKeys = ["num_hidden_layers", "n_layer", "num_layers", "n_layers"]
}

/// A view of a checkpoint's layers `from..<from+count`, renumbered to start at `to`, plus (optionally) its weights
/// before and after the layers: the input of one slice of a frankenmerge. Nothing is copied; reads go to the source
/// under the original names.
public final class LayerSliceSource: TensorSource, Float32Reading, Float32Mapping {
    public let inner: TensorSource
    public let tensorNames: [String]
    /// Output name → name in `inner`.
    let original: [String: String]
    /// Output layer tensors → their layer's offset in the slice (0 for the slice's first layer): gradients are
    /// interpolated over the slice by it.
    public let layerOffset: [String: Int]
    public let sourceName: String

    /// - `layout`: the inner source's layout; `range`: its layers taken; `to`: the first output layer index;
    ///   `pre`/`post`: whether the weights before and after the layers are part of this view.
    public init(_ inner: TensorSource, layout: LayerLayout, range: Range<Int>, to: Int, pre: Bool, post: Bool) {
        self.inner = inner
        var names: [String] = [], original: [String: String] = [:], offsets: [String: Int] = [:]
        func add(_ out: String, _ from: String) { names.append(out); original[out] = from }
        if pre { for n in layout.pre { add(n, n) } }
        for (k, layer) in range.enumerated() where layer < layout.layers.count {
            for n in layout.layers[layer] {
                let out = layout.renumbered(n, to: to + k)
                add(out, n)
                offsets[out] = k
            }
        }
        if post { for n in layout.post { add(n, n) } }
        tensorNames = names
        self.original = original
        layerOffset = offsets
        sourceName = "\(inner.sourceName) layers [\(range.lowerBound), \(range.upperBound))"
    }

    /// The name of an output tensor in the inner source.
    public func originalName(_ name: String) -> String? { original[name] }

    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        original[name].flatMap { inner.tensorInfo($0) }
    }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let n = original[name] else {
            throw TesseraError(.notFound, "tensor '\(name)' is not in \(sourceName)")
        }
        return try inner.rawTensor(n)
    }

    public var metadata: [(String, String)] { inner.metadata }
    public var allowsConcurrentReads: Bool { inner.allowsConcurrentReads }

    public func readFloat32(_ name: String) throws -> [Float]? {
        guard let n = original[name], let direct = inner as? Float32Reading else { return nil }
        return try direct.readFloat32(n)
    }

    public func mapFloat32(_ name: String) throws -> MappedFloat32? {
        guard let n = original[name], let mapping = inner as? Float32Mapping else { return nil }
        return try mapping.mapFloat32(n)
    }
}
