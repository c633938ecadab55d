import Foundation
import TesseraIO

/// A PEFT LoRA adapter as PEFT writes it: `adapter_config.json` parsed, and the tensors of
/// `adapter_model.safetensors` paired per adapted module. Everything that reads an adapter (applying it to its base,
/// merging adapters on ΔW, listing and diffing them, running one unmerged in the engine) starts here, so they agree
/// on scalings, layouts and what is refused.
///
/// Layout (PEFT's): A is [r, d_in] and B is [d_out, r]; ΔW = scaling · B · A, [d_out, d_in] for a linear layer. A
/// layer stored transposed (GPT-2's Conv1D with `fan_in_fan_out`) or an embedding (`lora_embedding_A`/`_B`) gets
/// (B · A)ᵀ. scaling = lora_alpha / r, or lora_alpha / √r with `use_rslora`, with `alpha_pattern` and `rank_pattern`
/// per module. Modules saved whole (`modules_to_save`) are replacements. DoRA, LoRA biases and other PEFT methods are
/// refused: reading them as plain LoRA would give other weights.
public struct LoRAAdapter: Sendable {
    /// The prefix PEFT puts before module names in the adapter file.
    public static let peftPrefix = "base_model.model."
    public static let configName = "adapter_config.json"
    public static let weightsName = "adapter_model.safetensors"

    public struct Config: Sendable {
        /// The config as read (kept whole: `diff` and writers show and keep keys Tessera does not interpret).
        public var json: JSONValue
        public var rank: Int
        public var alpha: Double
        public var useRSLoRA: Bool
        public var fanInFanOut: Bool
        /// `target_modules` as written: a list of names, or one string (a regex, or "all-linear").
        public var targetModules: [String]
        public var baseModel: String?
        public var alphaPattern: [(String, Double)]
        public var rankPattern: [(String, Double)]

        public init(_ bytes: [UInt8], name: String) throws {
            guard let json = try? JSONParser.parse(bytes), json.objectValue != nil else {
                throw TesseraError(.invalidParameter, "\(name): adapter_config.json is not a JSON object", hint: "name a PEFT LoRA adapter folder")
            }
            let peftType = json["peft_type"]?.stringValue ?? "LORA"
            guard peftType == "LORA" else {
                throw TesseraError(.unsupported, "\(name): the adapter is \(peftType), not LoRA", hint: "Tessera reads LoRA adapters only")
            }
            if json["use_dora"]?.boolValue == true {
                throw TesseraError(.unsupported, "\(name): DoRA adapters (use_dora) are not supported", hint: "merge the adapter with PEFT's merge_and_unload and name the result")
            }
            guard let alpha = json["lora_alpha"]?.doubleValue, let r = json["r"]?.intValue, r > 0, alpha.isFinite else {
                throw TesseraError(.invalidParameter, "\(name): adapter_config.json has no valid lora_alpha or r", hint: "name a PEFT LoRA adapter folder")
            }
            self.json = json
            rank = r
            self.alpha = alpha
            useRSLoRA = json["use_rslora"]?.boolValue == true
            fanInFanOut = json["fan_in_fan_out"]?.boolValue == true
            if let list = json["target_modules"]?.arrayValue {
                targetModules = list.compactMap(\.stringValue)
            } else if let one = json["target_modules"]?.stringValue {
                targetModules = [one]
            } else {
                targetModules = []
            }
            baseModel = json["base_model_name_or_path"]?.stringValue
            func numbers(_ key: String) -> [(String, Double)] {
                (json[key]?.objectValue ?? []).compactMap { k, v in v.doubleValue.map { (k, $0) } }
            }
            alphaPattern = numbers("alpha_pattern")
            rankPattern = numbers("rank_pattern")
        }

        /// PEFT matches a pattern key to a module name as the regex `(.*\.)?KEY$`; keys here are taken literally.
        static func lookup(_ pairs: [(String, Double)], _ module: String) -> Double? {
            pairs.first { module == $0.0 || module.hasSuffix("." + $0.0) }?.1
        }

        /// The scaling of a module whose A factor has `rank` rows.
        public func scaling(module: String, rank: Int) -> Double {
            let a = Self.lookup(alphaPattern, module) ?? alpha
            let r = Self.lookup(rankPattern, module) ?? Double(rank)
            return useRSLoRA ? a / r.squareRoot() : a / r
        }
    }

    /// One adapted module.
    public struct Module: Sendable, Equatable {
        /// The module's name in the base model ("model.layers.0.self_attn.q_proj").
        public var name: String
        /// The base tensor it changes (`name + ".weight"`).
        public var target: String { name + ".weight" }
        /// The factors' names in the adapter file.
        public var aName: String
        public var bName: String
        public var rank: Int
        /// d_in of A (for an embedding: the vocabulary) and d_out of B.
        public var inFeatures: Int
        public var outFeatures: Int
        public var scaling: Double
        /// ΔW is (B·A)ᵀ: Conv1D layers with `fan_in_fan_out`, and embeddings.
        public var transpose: Bool
        public var isEmbedding: Bool
        /// The shape of ΔW as the base tensor stores it.
        public var deltaShape: [Int] { transpose ? [inFeatures, outFeatures] : [outFeatures, inFeatures] }
    }

    public var config: Config
    /// Adapted modules, in the adapter file's order of their A factors.
    public var modules: [Module]
    /// Tensors saved whole (`modules_to_save`): the base tensor they replace → their name in the adapter file.
    public var replacements: [(target: String, tensor: String)]

    /// Reads and checks an adapter: `configBytes` is adapter_config.json, `tensors` its weights file.
    public init(configBytes: [UInt8], tensors: TensorSource, name: String) throws {
        config = try Config(configBytes, name: name)
        var modules: [Module] = [], handled = Set<String>()
        for n in tensors.tensorNames {
            let stripped = Self.stripPrefix(n)
            for (aSuffix, bSuffix, embedding) in [(".lora_A.weight", ".lora_B.weight", false), (".lora_embedding_A", ".lora_embedding_B", true)]
            where stripped.hasSuffix(aSuffix) {
                let module = String(stripped.dropLast(aSuffix.count))
                let bName = String(n.dropLast(aSuffix.count)) + bSuffix
                guard let b = tensors.tensorInfo(bName), let a = tensors.tensorInfo(n) else {
                    throw TesseraError(.invalidParameter, "\(name): '\(n)' has no matching '\(bName)'", hint: "the adapter file is incomplete")
                }
                guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == b.shape[1], a.shape[0] > 0 else {
                    throw TesseraError(.shapeMismatch, "\(name): the LoRA factors of '\(module)' have shapes \(a.shape) and \(b.shape)",
                                       hint: "A is [r, d_in] and B is [d_out, r] (PEFT's layout); the adapter file is malformed")
                }
                guard a.dtype.isFloatingPoint, b.dtype.isFloatingPoint else {
                    throw TesseraError(.unsupported, "\(name): the LoRA factors of '\(module)' are \(a.dtype.rawValue)/\(b.dtype.rawValue), not floating point",
                                       hint: "Tessera reads float32, float16 and bfloat16 adapters")
                }
                let rank = a.shape[0]
                let scaling = config.scaling(module: module, rank: rank)
                guard scaling.isFinite else {
                    throw TesseraError(.invalidParameter, "\(name): the scaling of '\(module)' is not finite", hint: "check r, lora_alpha and rank_pattern")
                }
                modules.append(Module(name: module, aName: n, bName: bName, rank: rank, inFeatures: a.shape[1], outFeatures: b.shape[0],
                                      scaling: scaling, transpose: embedding || config.fanInFanOut, isEmbedding: embedding))
                handled.insert(n)
                handled.insert(bName)
            }
        }
        var replacements: [(String, String)] = []
        for n in tensors.tensorNames where !handled.contains(n) {
            let stripped = Self.stripPrefix(n)
            if stripped.contains("lora_magnitude_vector") {
                throw TesseraError(.unsupported, "\(name): DoRA adapters (lora_magnitude_vector) are not supported", hint: "merge the adapter with PEFT's merge_and_unload and name the result")
            }
            if stripped.contains(".lora_") {
                throw TesseraError(.unsupported, "\(name): adapter tensor '\(n)' is not a LoRA A/B factor (LoRA biases and other variants are not supported)",
                                   hint: "merge the adapter with PEFT's merge_and_unload and name the result")
            }
            // A module saved whole (modules_to_save): PEFT stores it under the module's own name.
            replacements.append((stripped.replacingOccurrences(of: ".modules_to_save.default.", with: "."), n))
        }
        self.modules = modules
        self.replacements = replacements
    }

    static func stripPrefix(_ n: String) -> String { n.hasPrefix(peftPrefix) ? String(n.dropFirst(peftPrefix.count)) : n }

    /// The module adapting base tensor `target`, if any.
    public func module(target: String) -> Module? { modules.first { $0.target == target } }
}
