import Foundation
import TesseraCore
import TesseraEngine
import TesseraEval
import TesseraIO
import TesseraMerge
import TesseraRepository
import TesseraStore

/// A PEFT LoRA adapter as `tessera eval --adapter` names it (a folder, or `REV:folder` read from the store), parsed
/// and hashed, ready to be attached unmerged to each evaluated model.
struct EvalAdapter {
    var input: LoRAAdapterInput
    var record: EvalAdapterRecord

    static func resolve(_ spec: String, resolver: CheckpointResolver) throws -> EvalAdapter {
        let checkpoint = try resolver.checkpoint(spec)
        guard checkpoint.layout == .adapter, let folder = checkpoint.sideFiles else {
            throw TesseraError(.usage, "--adapter \(spec) is not a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)",
                               hint: "name the adapter's folder, or REV:folder for one tracked in git")
        }
        let config = try folder.read(CheckpointFolderLayout.adapterConfigName, limit: 16 << 20)
        let adapter = try LoRAAdapter(configBytes: config, tensors: checkpoint.source, name: spec)
        let hash = try contentHash(config: config, tensors: checkpoint.source)
        return EvalAdapter(input: LoRAAdapterInput(adapter: adapter, tensors: checkpoint.source, name: spec),
                           record: EvalAdapterRecord(path: spec, sha256: hash))
    }

    /// SHA-256 over adapter_config.json's bytes and each tensor's name, dtype, shape and bytes, in name order: the
    /// same for a folder on disk and the same folder read at a revision (whose weights are a manifest, not a file).
    static func contentHash(config: [UInt8], tensors: TensorSource) throws -> String {
        let hasher = SHA256Hasher()
        func field(_ text: String) { hasher.update(Array(text.utf8) + [0]) }
        field("tessera-lora-adapter-v1")
        field(SHA256Hasher.hex(config))
        for name in tensors.tensorNames.sorted() {
            let t = try tensors.rawTensor(name)
            field(name)
            field(t.dtype.rawValue)
            field(t.shape.map(String.init).joined(separator: ","))
            field(SHA256Hasher.hex(t.bytes))
        }
        return hasher.finalizeHex()
    }
}
