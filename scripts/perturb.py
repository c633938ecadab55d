#!/usr/bin/env python3
"""Makes a "fine-tuned" variant of a float32 safetensors checkpoint for the demo: every tensor whose name matches
PATTERN moves by SCALE of its own magnitude, w + SCALE*|w|*N(0,1) (seeded). numpy only.
Usage: perturb.py IN OUT PATTERN [SCALE] [SEED]"""
import json, re, struct, sys
import numpy as np

src, out, pattern = sys.argv[1:4]
scale = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-2
rng = np.random.default_rng(int(sys.argv[5]) if len(sys.argv) > 5 else 0)
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header_bytes = f.read(n)
    data = bytearray(f.read())
header = json.loads(header_bytes)
changed = 0
for name, info in header.items():
    if name == "__metadata__" or info["dtype"] != "F32" or not re.search(pattern, name):
        continue
    b, e = info["data_offsets"]
    w = np.frombuffer(bytes(data[b:e]), dtype=np.float32)
    w = (w + scale * np.abs(w) * rng.standard_normal(w.shape, dtype=np.float32)).astype(np.float32)
    data[b:e] = w.tobytes()
    changed += 1
with open(out, "wb") as f:
    f.write(struct.pack("<Q", n)); f.write(header_bytes); f.write(data)
print(f"{changed} tensors changed", file=sys.stderr)
