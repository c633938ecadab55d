#!/usr/bin/env python3
"""Writes GPT-2-small-shaped safetensors checkpoints (124M parameters, 148 tensors) for the benchmarks.

Usage:
  make_checkpoint.py base OUT [--dtype f32|bf16] [--seed N]
  make_checkpoint.py two-tensors IN OUT          # changes 2 tensors (h.0.attn.c_attn.weight, h.11.mlp.c_fc.weight)
  make_checkpoint.py finetune IN OUT [--scale S]  # every tensor changed slightly: w + S*|w|*N(0,1) (a fine-tune)
Written with numpy only (no torch), in the layout the safetensors library writes (sorted names, 8-byte padding).
"""
import json, struct, sys
import numpy as np

def gpt2_shapes(vocab=50257, ctx=1024, d=768, layers=12):
    shapes = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(layers):
        p = f"h.{i}."
        shapes.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "attn.c_attn.weight": (d, 3 * d),
                       p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                       p + "ln_2.weight": (d,), p + "ln_2.bias": (d,), p + "mlp.c_fc.weight": (d, 4 * d),
                       p + "mlp.c_fc.bias": (4 * d,), p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,)})
    return shapes

DT = {"F32": np.float32}

def to_bf16_bytes(a):
    u = a.astype(np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r.tobytes()

def save(path, tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    names = sorted(tensors)
    blobs = []
    for n in names:
        dtype, shape, raw = tensors[n]
        header[n] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)

def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        out[k] = (v["dtype"], tuple(v["shape"]), data[b:e])
    return out, meta

def array(entry):
    dtype, shape, raw = entry
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.float32).reshape(shape)
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    raise SystemExit(f"unsupported dtype {dtype}")

def encode(a, dtype):
    return to_bf16_bytes(a) if dtype == "BF16" else a.astype(np.float32).tobytes()

def main(argv):
    cmd = argv[1]
    opts = dict(zip(argv[2::2], argv[3::2])) if False else {}
    args = [a for a in argv[2:]]
    def opt(name, default):
        if name in args:
            i = args.index(name); v = args[i + 1]; del args[i:i + 2]; return v
        return default
    dtype = {"f32": "F32", "bf16": "BF16"}[opt("--dtype", "f32")]
    seed = int(opt("--seed", "0"))
    scale = float(opt("--scale", "1e-3"))
    rng = np.random.default_rng(seed)
    if cmd == "base":
        out = args[0]
        tensors = {}
        for name, shape in gpt2_shapes().items():
            if name.endswith(".bias"):
                a = (rng.standard_normal(shape, dtype=np.float32) * 0.01)
            elif "ln_" in name:
                a = 1.0 + rng.standard_normal(shape, dtype=np.float32) * 0.05
            else:
                a = rng.standard_normal(shape, dtype=np.float32) * 0.02
            tensors[name] = (dtype, shape, encode(a, dtype))
        save(out, tensors, {"format": "pt"})
    elif cmd == "two-tensors":
        src, out = args
        tensors, meta = load(src)
        for n in ["h.0.attn.c_attn.weight", "h.11.mlp.c_fc.weight"]:
            a = array(tensors[n]) + rng.standard_normal(tensors[n][1], dtype=np.float32) * 0.02
            tensors[n] = (tensors[n][0], tensors[n][1], encode(a, tensors[n][0]))
        save(out, tensors, meta)
    elif cmd == "finetune":
        src, out = args
        tensors, meta = load(src)
        for n, t in tensors.items():
            a = array(t)
            a = a + scale * np.abs(a) * rng.standard_normal(t[1], dtype=np.float32)
            tensors[n] = (t[0], t[1], encode(a, t[0]))
        save(out, tensors, meta)
    else:
        raise SystemExit(__doc__)

if __name__ == "__main__":
    main(sys.argv)
