#!/usr/bin/env python3
"""Generates the checkpoint-format fixtures (Tests/Fixtures/formats/): small files written by the ecosystem's own
writers, never by Tessera, for the per-tensor tracking of GGUF, PyTorch zip checkpoints and NumPy .npz.

  * torch.save (PyTorch 2.x, zip format): float32 / float16 / bfloat16 state dicts, storages shared by several
    tensors (tied weights, a slice, a transposed view), a nested {"state_dict": ...}, a dictionary holding a
    non-tensor value, and a legacy (pre-1.6, non-zip) file;
  * numpy.savez / numpy.savez_compressed: float32, float16, int64, bool, a Fortran-order and a big-endian array;
  * gguf-py's GGUFWriter: a tiny llama-like model in F32 + F16, Q8_0, Q4_0, Q4_1, Q5_0 (blocks from gguf-py's
    quantizers) and Q4_K, Q6_K (random blocks of the right size), all sharing their F32 norms and a vocabulary array.

`expected.json` lists, for every fixture, its tensors (name, dtype, shape) and the SHA-256 of each tensor's
row-major bytes as the writer's library computes them (what a reader of the file must serve).

Run with an interpreter that has torch (the CPU wheel) and numpy, with gguf-py beside it, e.g.
    python3 -m venv t && t/bin/pip install "$TORCH_WHEEL" numpy
    t/bin/python -m pip install --target .build-py gguf   # once (.build-py is git-ignored)
    PYTHONPATH=.build-py t/bin/python scripts/make_format_fixtures.py
"""
import collections
import hashlib
import json
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "formats")
expected = {}


def torch_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


TORCH_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
                torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64", torch.int8: "I8", torch.int16: "I16"}


def flatten(d, prefix=""):
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flatten(v, name + ".")
        else:
            yield name, v


def save_torch(name, obj, **kw):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **kw)
    if isinstance(obj, dict) and all(isinstance(v, (torch.Tensor, dict)) for _, v in obj.items()):
        try:
            expected[name] = [{"name": n, "dtype": TORCH_DTYPES[t.dtype], "shape": list(t.shape),
                               "sha256": hashlib.sha256(torch_bytes(t)).hexdigest()} for n, t in flatten(obj)]
        except AttributeError:
            pass


def torch_fixtures():
    g = torch.Generator().manual_seed(12)
    r = lambda *s: torch.randn(*s, generator=g)
    save_torch("torch_f32.pt", collections.OrderedDict([("embed.weight", r(16, 8)), ("layers.0.weight", r(8, 8)),
                                                        ("layers.0.bias", r(8)), ("norm.weight", torch.ones(8))]))
    save_torch("torch_f16_bf16.pt", {"a.weight": r(8, 4).half(), "b.weight": r(4, 8).bfloat16(), "c.steps": torch.arange(5),
                                     "d.mask": torch.tensor([True, False, True])})
    tied = r(16, 8)
    base = r(6, 4)
    params = torch.nn.Parameter(r(3, 3))
    save_torch("torch_shared.pt", {"embed.weight": tied, "lm_head.weight": tied, "rows": base[2:5], "transposed": base.t(),
                                   "param": params, "alone": r(4)})
    save_torch("torch_nested.pt", {"state_dict": {"encoder": {"w": r(4, 4), "b": r(4)}, "head.w": r(2, 4)}})
    torch.save({"epoch": 3, "weights": r(2, 2)}, os.path.join(OUT, "torch_not_tensors.pt"))
    torch.save({"w": r(4, 4)}, os.path.join(OUT, "torch_legacy.pt"), _use_new_zipfile_serialization=False)


def npz_fixtures():
    rng = np.random.default_rng(7)
    arrays = {"w": rng.standard_normal((6, 5)).astype(np.float32), "h": rng.standard_normal(7).astype(np.float16),
              "steps": np.arange(9, dtype=np.int64), "mask": np.array([True, False, True]),
              "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
              "bigendian": rng.standard_normal(4).astype(">f4")}
    np.savez(os.path.join(OUT, "arrays.npz"), **arrays)
    np.savez_compressed(os.path.join(OUT, "arrays_compressed.npz"), **arrays)
    expected["arrays.npz"] = [{"name": k, "dtype": {"float32": "F32", "float16": "F16", "int64": "I64", "bool": "BOOL"}[str(v.dtype)],
                               "shape": list(v.shape), "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()}
                              for k, v in arrays.items() if k in ("w", "h", "steps", "mask")]


def gguf_fixtures():
    import gguf
    from gguf import GGMLQuantizationType as Q
    rng = np.random.default_rng(3)
    # Rows of 256 (the K-quant block); few rows, but a vocabulary array of a few KiB (its own header segment).
    n_embd, n_vocab = 256, 300
    tokens = [f"tok{i}" for i in range(n_vocab)]
    weights = {"token_embd.weight": rng.standard_normal((12, n_embd)).astype(np.float32),
               "blk.0.attn_q.weight": rng.standard_normal((8, n_embd)).astype(np.float32),
               "blk.0.ffn_up.weight": rng.standard_normal((16, n_embd)).astype(np.float32)}
    norms = {"blk.0.attn_norm.weight": rng.standard_normal(n_embd).astype(np.float32),
             "output_norm.weight": rng.standard_normal(n_embd).astype(np.float32)}
    block = {Q.Q4_K: (256, 144), Q.Q6_K: (256, 210)}
    for qtype in [Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q6_K]:
        name = f"tiny_{qtype.name.lower()}.gguf"
        w = gguf.GGUFWriter(os.path.join(OUT, name), "llama")
        w.add_name("tiny")
        w.add_context_length(128)
        w.add_embedding_length(n_embd)
        w.add_file_type(int(qtype))
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([1] * n_vocab)
        for k, v in norms.items():
            w.add_tensor(k, v)
        for k, v in weights.items():
            if qtype in block:
                elements, size = block[qtype]
                rows = v.shape[0]
                data = rng.integers(0, 256, (rows, v.shape[1] // elements * size), dtype=np.uint8)
                w.add_tensor(k, data, raw_dtype=qtype)
            elif qtype == Q.F16:
                w.add_tensor(k, v.astype(np.float16))
            else:
                w.add_tensor(k, gguf.quants.quantize(v, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch_fixtures()
    npz_fixtures()
    gguf_fixtures()
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
