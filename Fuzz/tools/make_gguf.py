#!/usr/bin/env python3
"""Writes small GGUF seed files for the GGUF fuzz target (a hand-rolled writer of the GGUF v2/v3 layout: header,
metadata of every value type, tensor infos, aligned data), so that seeds stay a few KB.

    Fuzz/tools/make_gguf.py OUT_DIR
"""
import os
import struct
import sys


def string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
    if t == 8:
        return string(v)
    if t == 9:
        item_type, items = v
        return struct.pack("<IQ", item_type, len(items)) + b"".join(value(item_type, x) for x in items)
    return struct.pack(fmt[t], v)


def gguf(version, metadata, tensors, alignment=32):
    """metadata: [(key, type, value)]; tensors: [(name, ne (innermost first), ggml type, data)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, t, v in metadata:
        out += string(key) + struct.pack("<I", t) + value(t, v)
    offset = 0
    data = b""
    for name, ne, t, raw in tensors:
        out += string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", t, offset)
        pad = -len(raw) % alignment
        data += raw + b"\0" * pad
        offset += len(raw) + pad
    out += b"\0" * (-len(out) % alignment)
    return out + data


def f16(x):
    return struct.pack("<e", x)


def blocks(kind, n_blocks):
    out = b""
    for b in range(n_blocks):
        if kind == "q8_0":
            out += f16(0.01 * (b + 1)) + bytes((i * 5 + b) % 256 for i in range(32))
        elif kind == "q4_0":
            out += f16(0.02) + bytes((i * 17 + b) % 256 for i in range(16))
        elif kind == "q4_1":
            out += f16(0.02) + f16(-0.1) + bytes((i * 13 + b) % 256 for i in range(16))
        elif kind == "q5_0":
            out += f16(0.03) + bytes([0x5A, 0xA5, 0x0F, 0xF0]) + bytes((i * 11 + b) % 256 for i in range(16))
        elif kind == "q4_k":
            out += f16(0.01) + f16(0.002) + bytes(range(1, 13)) + bytes((i * 3 + b) % 256 for i in range(128))
        elif kind == "q6_k":
            out += bytes((i * 7 + b) % 256 for i in range(128)) + bytes((i * 9) % 256 for i in range(64))
            out += bytes((i - 8) % 256 for i in range(16)) + f16(0.01)
    return out


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "\u0120the", "\u010a"]
    llama_meta = [
        ("general.architecture", 8, "llama"),
        ("general.alignment", 4, 64),
        ("llama.context_length", 4, 128),
        ("llama.embedding_length", 4, 32),
        ("llama.block_count", 4, 1),
        ("llama.attention.head_count", 4, 2),
        ("llama.rope.freq_base", 6, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        ("tokenizer.ggml.model", 8, "gpt2"),
        ("tokenizer.ggml.tokens", 9, (8, tokens)),
        ("tokenizer.ggml.token_type", 9, (5, [1] * len(tokens))),
        ("tokenizer.ggml.merges", 9, (8, ["a b"])),
        ("tokenizer.ggml.bos_token_id", 4, 1),
        ("tokenizer.ggml.eos_token_id", 4, 2),
    ]
    tensors = [
        ("token_embd.weight", [32, 8], 0, struct.pack("<256f", *[(i % 17) / 17.0 for i in range(256)])),
        ("output_norm.weight", [32], 1, b"".join(f16(1.0 - i / 64) for i in range(32))),
        ("blk.0.attn_q.weight", [32, 2], 8, blocks("q8_0", 2)),
        ("blk.0.attn_k.weight", [64], 2, blocks("q4_0", 2)),
        ("blk.0.attn_v.weight", [32], 3, blocks("q4_1", 1)),
        ("blk.0.ffn_up.weight", [32], 6, blocks("q5_0", 1)),
        ("blk.0.ffn_down.weight", [256], 12, blocks("q4_k", 1)),
        ("blk.0.ffn_gate.weight", [256], 14, blocks("q6_k", 1)),
        ("blk.0.attn_norm.weight", [16], 30, b"\x80\x3f" * 16),
        ("unsupported.weight", [32], 7, b"\0" * 24),
    ]
    with open(os.path.join(out, "tiny-llama-v3.gguf"), "wb") as f:
        f.write(gguf(3, llama_meta, tensors, alignment=64))
    every_type = [
        ("u8", 0, 7), ("i8", 1, -7), ("u16", 2, 700), ("i16", 3, -700), ("u32", 4, 70000), ("i32", 5, -70000),
        ("f32", 6, 0.5), ("bool", 7, 1), ("str", 8, "text \u00e9"), ("u64", 10, 1 << 40), ("i64", 11, -(1 << 40)),
        ("f64", 12, 0.25), ("arr", 9, (9, [(4, [1, 2]), (8, ["x"])])),
    ]
    with open(os.path.join(out, "every-value-v2.gguf"), "wb") as f:
        f.write(gguf(2, every_type, tensors[:3]))
    with open(os.path.join(out, "empty-v3.gguf"), "wb") as f:
        f.write(gguf(3, [], []))


if __name__ == "__main__":
    main()
