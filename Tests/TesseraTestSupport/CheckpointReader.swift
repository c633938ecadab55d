import Foundation
import Testing

/// A tensor read back from a safetensors file by the tests' own reader (JSONSerialization over the header), not by
/// Tessera's.
public struct ReadTensor: Equatable, Sendable {
    public var dtype: String
    public var shape: [Int]
    public var bytes: Data

    public init(dtype: String, shape: [Int], bytes: Data) {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}

public enum Checkpoints {
    /// Every tensor of a safetensors file, or of every `*.safetensors` file of a folder (shards together).
    public static func tensors(_ path: String) throws -> [String: ReadTensor] {
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
        let files = isDirectory.boolValue
            ? try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".safetensors") }.sorted().map { path + "/" + $0 }
            : [path]
        var out: [String: ReadTensor] = [:]
        for f in files {
            let (header, dataStart, data) = try parse(f)
            for (name, value) in header where name != "__metadata__" {
                let info = try #require(value as? [String: Any])
                let offsets = try #require(info["data_offsets"] as? [Int])
                #expect(out[name] == nil, "\(name) appears in two files of \(path)")
                out[name] = ReadTensor(dtype: info["dtype"] as? String ?? "", shape: info["shape"] as? [Int] ?? [],
                                       bytes: data.subdata(in: (dataStart + offsets[0])..<(dataStart + offsets[1])))
            }
        }
        return out
    }

    /// The `__metadata__` of a safetensors file.
    public static func metadata(_ path: String) throws -> [String: String] {
        (try parse(path).header["__metadata__"] as? [String: String]) ?? [:]
    }

    public static func parse(_ path: String) throws -> (header: [String: Any], dataStart: Int, data: Data) {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
        let header = try #require(try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
        return (header, 8 + n, data)
    }

    /// Writes a model folder: model.safetensors from `checkpoint`, a config.json, a tokenizer.json and a
    /// generation_config.json (so that copies of them can be checked).
    public static func writeFolder(_ folder: String, _ checkpoint: TestCheckpoint, hubID: String = "org/base-model") throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try checkpoint.write(to: folder + "/model.safetensors")
        try "{\n  \"_name_or_path\": \"\(hubID)\",\n  \"model_type\": \"test\",\n  \"torch_dtype\": \"float32\"\n}\n"
            .write(toFile: folder + "/config.json", atomically: true, encoding: .utf8)
        try "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}\n"
            .write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
        try "{\"bos_token_id\": 1}\n".write(toFile: folder + "/generation_config.json", atomically: true, encoding: .utf8)
    }

    /// Splits a folder's model.safetensors into `parts` shards and an index, by hand (as transformers lays them out:
    /// `model-0000k-of-0000n.safetensors` and `model.safetensors.index.json`), and removes the single file.
    public static func shard(_ folder: String, parts: Int) throws {
        let (header, dataStart, data) = try parse(folder + "/model.safetensors")
        let names = header.keys.filter { $0 != "__metadata__" }.sorted {
            ((header[$0] as? [String: Any])?["data_offsets"] as? [Int] ?? [0])[0] < ((header[$1] as? [String: Any])?["data_offsets"] as? [Int] ?? [0])[0]
        }
        var weightMap: [String: String] = [:]
        var total = 0
        let per = (names.count + parts - 1) / parts
        for k in 0..<parts {
            let file = String(format: "model-%05d-of-%05d.safetensors", k + 1, parts)
            var c = TestCheckpoint()
            for name in names.dropFirst(k * per).prefix(per) {
                let info = try #require(header[name] as? [String: Any])
                let offsets = try #require(info["data_offsets"] as? [Int])
                let bytes = [UInt8](data.subdata(in: (dataStart + offsets[0])..<(dataStart + offsets[1])))
                c.entries.append(.init(name: name, dtype: info["dtype"] as? String ?? "F32", shape: info["shape"] as? [Int] ?? [], bytes: bytes))
                weightMap[name] = file
                total += bytes.count
            }
            try c.write(to: folder + "/" + file)
        }
        let index = try JSONSerialization.data(withJSONObject: ["metadata": ["total_size": total], "weight_map": weightMap],
                                               options: [.prettyPrinted, .sortedKeys])
        try index.write(to: URL(fileURLWithPath: folder + "/model.safetensors.index.json"))
        try FileManager.default.removeItem(atPath: folder + "/model.safetensors")
    }

    /// A float16 value as a Float (the tests' own conversion).
    public static func half(_ bits: UInt16) -> Float {
        let sign: Float = bits & 0x8000 != 0 ? -1 : 1
        let exponent = Int((bits >> 10) & 0x1F), fraction = Float(bits & 0x3FF)
        if exponent == 0 { return sign * fraction * powf(2, -24) }
        if exponent == 31 { return fraction == 0 ? sign * .infinity : .nan }
        return sign * (1 + fraction / 1024) * powf(2, Float(exponent - 15))
    }

    /// A tensor's values as Doubles (F32 and F16).
    public static func values(_ t: ReadTensor) -> [Double] {
        switch t.dtype {
        case "F16": return t.bytes.withUnsafeBytes { raw in raw.bindMemory(to: UInt16.self).map { Double(half(UInt16(littleEndian: $0))) } }
        default: return t.bytes.withUnsafeBytes { raw in raw.bindMemory(to: Float.self).map { Double($0) } }
        }
    }

    /// The spacing of float16 numbers at `x` (one unit in the last place).
    public static func halfULP(_ x: Double) -> Double {
        let a = abs(x)
        if a < powf64(2, -14) { return powf64(2, -24) }
        return powf64(2, floor(log2(a)) - 10)
    }

    public static func powf64(_ b: Double, _ e: Double) -> Double { Foundation.pow(b, e) }

    /// Lists a folder's entries (hidden ones too), sorted.
    public static func list(_ folder: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted()
    }
}
