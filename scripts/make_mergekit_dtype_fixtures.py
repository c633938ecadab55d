#!/usr/bin/env python3
"""Reference outputs for Tessera's dtype emulation and for nuslerp / multislerp / karcher, from mergekit itself.

Runs mergekit 0.1.5's merge methods (through its public method API, `mergekit.merge_methods.get(name)`) on small
random tensors stored in float32, bfloat16 and float16, computing in the tensors' dtype as mergekit does when a
config's `dtype:` is that dtype, and writes:

    Tests/Fixtures/mergekit-dtype/inputs.<dtype>.safetensors    base / m0 / m1 / m2 of every shape, in <dtype>
    Tests/Fixtures/mergekit-dtype/expected.<dtype>.safetensors  "<case>|<shape>" -> mergekit's output, in <dtype>
    Tests/Fixtures/mergekit-dtype/cases.json                     method, models, base, parameters per case
    Tests/Fixtures/mergekit-dtype/sort.safetensors               tied magnitudes and torch's argsort of them (the
                                                                 order mergekit's magnitude trims keep ties in)
    Tests/Fixtures/mergekit-dtype/topk.safetensors               keys with ties and the set torch.topk returns (sce's
                                                                 select_topk), for several k
    Tests/Fixtures/mergekit-dtype/reductions.safetensors         float32 vectors with torch's sum and vector_norm

Run with the mergekit venv: /work/venvs/mergekit/bin/python scripts/make_mergekit_dtype_fixtures.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

import mergekit
from mergekit import merge_methods
from mergekit.merge_methods.base import TensorGroup

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "mergekit-dtype")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHAPES = {"matrix": (48, 40), "vector": (257,), "cube": (6, 5, 4)}

# (case, method, models, base or None, shared parameters, per-non-base (or per-input) parameters)
CASES = [
    ("linear", "linear", ["m0", "m1", "m2"], None, {"normalize": True}, {"weight": [1.0, 0.3, 0.5]}),
    ("linear_sum", "linear", ["m0", "m1"], None, {"normalize": False}, {"weight": [0.6, 0.7]}),
    ("task_arithmetic", "task_arithmetic", ["m0", "m1"], "base", {"lambda": 0.9}, {"weight": [0.7, 0.4]}),
    ("task_arithmetic_norm", "task_arithmetic", ["m0", "m1", "m2"], "base", {"normalize": True}, {"weight": [0.7, 0.4, 0.3]}),
    ("ties", "ties", ["m0", "m1", "m2"], "base", {"normalize": True}, {"weight": [1.0, 0.5, 0.3], "density": [0.5, 0.3, 0.7]}),
    ("ties_lambda", "ties", ["m0", "m1"], "base", {"normalize": False, "lambda": 1.3},
     {"weight": [0.5, 0.5], "density": [0.5, 0.5]}),
    ("ties_rescale", "ties", ["m0", "m1"], "base", {"normalize": True, "rescale": True}, {"weight": [1.0, 0.6], "density": [0.4, 0.6]}),
    ("breadcrumbs", "breadcrumbs", ["m0", "m1"], "base", {}, {"weight": [1.0, 0.5], "density": [0.7, 0.8], "gamma": [0.05, 0.1]}),
    ("breadcrumbs_ties", "breadcrumbs_ties", ["m0", "m1", "m2"], "base", {"normalize": True},
     {"weight": [1.0, 0.5, 0.4], "density": [0.7, 0.8, 0.6], "gamma": [0.05, 0.1, 0.02]}),
    ("slerp", "slerp", ["base", "m0"], "base", {"t": 0.3}, {}),
    ("nuslerp_base", "nuslerp", ["m0", "m1"], "base", {}, {"weight": [0.4, 0.6]}),
    ("nuslerp", "nuslerp", ["m0", "m1"], None, {}, {"weight": [0.3, 0.5]}),
    ("nuslerp_rows", "nuslerp", ["m0", "m1"], "base", {"nuslerp_flatten": False}, {"weight": [0.5, 0.5]}),
    ("nuslerp_row_wise", "nuslerp", ["m0", "m1"], None, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, {"weight": [0.2, 0.6]}),
    ("multislerp", "multislerp", ["m0", "m1", "m2"], None, {}, {"weight": [0.5, 0.3, 0.2]}),
    ("multislerp_base", "multislerp", ["m0", "m1", "m2"], "base", {}, {"weight": [1.0, 1.0, 2.0]}),
    ("multislerp_raw", "multislerp", ["m0", "m1"], "base", {"normalize_weights": False}, {"weight": [0.4, 0.4]}),
    ("karcher", "karcher", ["m0", "m1", "m2"], None, {}, {}),
    ("karcher_base", "karcher", ["m0", "m1", "base"], "base", {"max_iter": 5, "tol": 1e-6}, {}),
]


def inputs(dtype):
    g = torch.Generator().manual_seed(1234)
    out = {}
    for shape_name, shape in SHAPES.items():
        base = torch.randn(shape, generator=g) * 0.02
        out[f"{shape_name}.base"] = base
        for k in range(3):
            out[f"{shape_name}.m{k}"] = base + torch.randn(shape, generator=g) * 0.004 * (k + 1)
    return {k: v.to(dtype) for k, v in out.items()}


def run(case, tensors, shape_name, dtype):
    _, method_name, models, base, shared, per = case
    method = merge_methods.get(method_name)
    ids = list(models)
    if base is not None and base not in ids:
        ids.append(base)  # mergekit adds a base model that is not listed to the inputs, after the listed ones
    group = TensorGroup.from_tensors([tensors[f"{shape_name}.{m}"] for m in ids], ids=ids,
                                     base_index=ids.index(base) if base is not None else None, name=f"{shape_name}.weight")
    params = dict(shared)
    for key, values in per.items():
        params[key] = values
    (result,) = method((group,), parameters=params, dtype=dtype)
    return result.to(dtype).contiguous()


def sort_fixture():
    g = torch.Generator().manual_seed(99)
    out = {}
    for name, n, scale in [("tied", 5000, 4.0), ("few", 17, 2.0), ("mixed", 40000, 64.0), ("distinct", 3000, 0.0)]:
        x = torch.randn(n, generator=g)
        keys = (x * scale).round().abs() / max(scale, 1.0) if scale else x.abs()
        out[f"{name}.keys"] = keys
        # Indices as float32 (exact below 2^24): torch.argsort as mergekit's magnitude() calls it, and torch.sort's
        # ascending order as magnitude_outliers() calls it.
        out[f"{name}.desc"] = torch.argsort(keys, descending=True).to(torch.float32)
        out[f"{name}.asc"] = torch.sort(keys, descending=False).indices.to(torch.float32)
    save_file(out, os.path.join(OUT, "sort.safetensors"))


TOPK_CASES = {"tied": (5000, 4.0, [1, 10, 78, 79, 1000, 2500, 4990]), "few": (40, 1.0, [1, 3, 20, 39]),
              "variance": (3972, None, [31, 32, 1986, 3000]), "distinct": (3000, 0.0, [5, 47, 1500])}


def topk_fixture():
    """Non-negative keys with many ties, and the set torch.topk(keys, k) returns on CPU (as sce's select_topk calls
    it), for k on both sides of its partial_sort / nth_element switch (k * 64 <= n)."""
    g = torch.Generator().manual_seed(11)
    out = {}
    for name, (n, scale, ks) in TOPK_CASES.items():
        x = torch.randn(n, generator=g)
        if scale is None:  # bfloat16 variances of small task vectors: a few hundred distinct values
            keys = (x * 0.01).square().to(torch.bfloat16).to(torch.float32)
        else:
            keys = (x * scale).round().abs() / max(scale, 1.0) if scale else x.abs()
        out[f"{name}.keys"] = keys
        for k in ks:
            out[f"{name}.{k}"] = torch.topk(keys, k=k, largest=True).indices.sort().values.to(torch.float32)
    save_file(out, os.path.join(OUT, "topk.safetensors"))


def reductions_fixture():
    g = torch.Generator().manual_seed(7)
    out = {}
    for n in [3, 7, 8, 13, 100, 1000, 3001, 20000, 32768]:
        for trial in range(4):
            x = torch.randn(n, generator=g) * (trial + 1)
            out[f"{n}.{trial}.x"] = x
            out[f"{n}.{trial}.sum"] = x.sum().reshape(1)
            out[f"{n}.{trial}.norm"] = torch.linalg.vector_norm(x).reshape(1)
    save_file(out, os.path.join(OUT, "reductions.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    sort_fixture()
    topk_fixture()
    reductions_fixture()
    for dtype_name, dtype in DTYPES.items():
        tensors = inputs(dtype)
        save_file(tensors, os.path.join(OUT, f"inputs.{dtype_name}.safetensors"))
        expected = {}
        for case in CASES:
            for shape_name in SHAPES:
                expected[f"{case[0]}|{shape_name}"] = run(case, tensors, shape_name, dtype)
        save_file(expected, os.path.join(OUT, f"expected.{dtype_name}.safetensors"))
    cases = [{"case": c[0], "method": c[1], "models": c[2], "base": c[3], "parameters": c[4], "model_parameters": c[5]} for c in CASES]
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"mergekit": getattr(mergekit, "__version__", "0.1.5"), "torch": torch.__version__, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
