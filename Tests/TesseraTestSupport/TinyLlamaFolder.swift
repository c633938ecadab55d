import Foundation
import TesseraCore

/// The tiny Llama of the engine's fixtures as a trainable model folder: its config and weights, and a byte-level
/// tokenizer written here (the fixture has none), for the `train lora` command and end-to-end tests.
extension Sandbox {
    /// GPT-2's byte-to-character map (bytes_to_unicode): printable bytes stand for themselves, the others are moved
    /// above U+0100.
    public static func byteCharacters() -> [Character] {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var chars = printable.map { Character(Unicode.Scalar(UInt8($0))) }
        var n = 0
        for b in 0..<256 where !printable.contains(b) {
            printable.append(b)
            chars.append(Character(Unicode.Scalar(UInt32(256 + n))!))
            n += 1
        }
        var out = [Character](repeating: " ", count: 256)
        for (b, c) in zip(printable, chars) { out[b] = c }
        return out
    }

    /// A model folder: the tiny Llama (vocabulary 260) and a byte-level BPE tokenizer with no merges (ids 0-255 the
    /// bytes, 256 `<|endoftext|>`, 257 `<|im_start|>`, 258 `<|im_end|>`).
    public func tinyLlamaFolder(_ name: String = "tiny") throws -> String {
        let folder = path(name)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let source = packageRoot + "/Tests/TesseraEngineTests/Fixtures/tiny_llama"
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: source + "/" + file, toPath: folder + "/" + file)
        }
        var vocab: [(String, JSONValue)] = Self.byteCharacters().enumerated().map { (String($0.element), .int($0.offset)) }
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        for (k, s) in specials.enumerated() { vocab.append((s, .int(256 + k))) }
        let added = specials.enumerated().map { k, s in
            JSONValue.object([("id", .int(256 + k)), ("content", .string(s)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                              ("rstrip", .bool(false)), ("normalized", .bool(false)), ("special", .bool(true))])
        }
        let tokenizer = JSONValue.object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", .array(added)), ("normalizer", .null),
            ("pre_tokenizer", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("trim_offsets", .bool(true)),
                                       ("use_regex", .bool(true))])),
            ("post_processor", .null), ("decoder", .object([("type", .string("ByteLevel"))])),
            ("model", .object([("type", .string("BPE")), ("vocab", .object(vocab)), ("merges", .array([]))])),
        ])
        try tokenizer.serialized().write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
        try #"{"eos_token": "<|endoftext|>"}"#.write(toFile: folder + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        return folder
    }

}
