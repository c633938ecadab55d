#!/usr/bin/env python3
"""Fixtures for every merge method of mergekit 0.1.5 (Tests/Fixtures/mergekit-methods): one small config per case,
mergekit's own output for it, and what a test needs to judge another implementation against it.

- models/DTYPE/{base,ft1,ft2,ft3}: tiny local Hugging Face folders (Llama-shaped, 3 layers, hidden 12, intermediate
  20, vocabulary 24, 3 query heads and 1 key/value head, so that seven tensor shapes occur), one set per stored dtype
  (float32, bfloat16, float16). Fine-tunes are the base plus noise: ft1 and ft2 independent, ft3 correlated with ft1
  and exactly unchanged on about a third of its entries (so RAM's and TIES's masks see zeros).
- configs/NAME.yml: every method in mergekit's registry (merge_methods/registry.py), with non-default parameters where
  it has them, in float32, bfloat16 and float16 (`dtype:`), plus cases with another `out_dtype:`, gradient lists and
  `filter:` entries, and error-* configs that mergekit refuses. Model paths are relative to configs/ (mergekit is run from there; tessera falls back to the
  config's folder).
- expected/NAME.safetensors: mergekit's output tensors exactly as it wrote them (dtype included).
- cases.json: per case the method, dtypes, mergekit's outcome (merged, or failed and its last line), whether its result
  is deterministic (DARE and DELLA draw masks from torch's RNG: a test can only check their structure, so the
  densities, epsilons, rescale flags and model count are recorded), and the versions.

mergekit is run in process (the click command behind `mergekit-yaml`, with `--no-write-model-card
--no-copy-tokenizer --random-seed 0`, CPU): one interpreter for all cases instead of one per case, since importing
torch and transformers is most of a small merge's time.

Usage: scripts/make_mergekit_method_fixtures.py [--venv DIR] [--out DIR] [--only SUBSTRING]
"""
import argparse, glob, json, os, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "mergekit-methods")

SHAPE = dict(vocab_size=24, hidden_size=12, intermediate_size=20, num_hidden_layers=3, num_attention_heads=3,
             num_key_value_heads=1)
DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
SEED = 0  # --random-seed given to mergekit (its DARE/DELLA masks are then reproducible by mergekit, not by others)


def ensure_venv(venv):
    """mergekit 0.1.5 with the CPU torch wheel (as bench/bench_merge.py installs it)."""
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(os.path.join(venv, "bin", "mergekit-yaml")):
        return py
    wheel = sorted(glob.glob("/opt/wheels/torch-*+cpu-*.whl"))
    if not wheel:
        sys.exit("no CPU torch wheel in /opt/wheels")
    subprocess.run(f"python3 -m venv {venv} && {venv}/bin/pip install -q '{wheel[-1]}' numpy && {venv}/bin/pip install -q mergekit==0.1.5",
                   shell=True, check=True)
    return py


# ---------------------------------------------------------------------------------------------------------- models

def shapes():
    h, i, v, n = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"], SHAPE["num_hidden_layers"]
    kv = h // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for l in range(n):
        p = f"model.layers.{l}."
        out[p + "self_attn.q_proj.weight"] = (h, h)
        out[p + "self_attn.k_proj.weight"] = (kv, h)
        out[p + "self_attn.v_proj.weight"] = (kv, h)
        out[p + "self_attn.o_proj.weight"] = (h, h)
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
    return out


def model_values():
    """base, ft1, ft2, ft3 in float64 (the same values for every stored dtype, rounded once)."""
    import numpy as np
    rng = np.random.default_rng(20261206)
    base = {k: (1 + rng.normal(0, 0.05, s)) if k.endswith("norm.weight") else rng.normal(0, 0.05, s) for k, s in shapes().items()}
    d1 = {k: rng.normal(0, 0.01, t.shape) for k, t in base.items()}
    d2 = {k: rng.normal(0, 0.015, t.shape) for k, t in base.items()}
    d3 = {k: (0.6 * d1[k] + rng.normal(0, 0.008, t.shape)) * (rng.random(t.shape) > 0.35) for k, t in base.items()}
    return {"base": base, "ft1": {k: base[k] + d1[k] for k in base}, "ft2": {k: base[k] + d2[k] for k in base},
            "ft3": {k: base[k] + d3[k] for k in base}}


def to_dtype(t, dtype):
    """A float64 array in DTYPE: numpy's for float32/float16; bfloat16 as its raw uint16 bits (round to nearest even)."""
    import numpy as np
    if dtype == "float32":
        return t.astype(np.float32)
    if dtype == "float16":
        return t.astype(np.float16)
    bits = t.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (safetensors dtype, shape, raw bytes)."""
    header, data, at = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [at, at + len(raw)]}
        data.append(raw)
        at += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(data))


def read_folder(folder):
    """Every tensor of a Hugging Face folder's safetensors files, as raw (dtype, shape, bytes)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        b = open(path, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        h.pop("__metadata__", None)
        for k, v in h.items():
            o = v["data_offsets"]
            out[k] = (v["dtype"], v["shape"], b[8 + n + o[0]:8 + n + o[1]])
    return out


def make_models(out):
    values = model_values()
    code = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
    for dtype in DTYPES.values():
        for name, tensors in values.items():
            folder = os.path.join(out, "models", dtype, name)
            os.makedirs(folder, exist_ok=True)
            write_safetensors(os.path.join(folder, "model.safetensors"),
                              {k: (code[dtype], t.shape, to_dtype(t, dtype).tobytes()) for k, t in tensors.items()}, {"format": "pt"})
            config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", max_position_embeddings=64,
                          rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype=dtype, bos_token_id=1, eos_token_id=2, **SHAPE)
            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.write("\n")


# ----------------------------------------------------------------------------------------------------------- cases

def case_list():
    """(name, method, config without dtype keys, stored dtype or None for 'the case's dtype', dtype, out_dtype, random info).

    Every method of mergekit 0.1.5's registry, each with non-default parameters where it has them, in the three dtypes.
    Parameters are written as mergekit's docs write them: per-model ones under the model, shared ones at the top."""
    B, F1, F2, F3 = "base", "ft1", "ft2", "ft3"

    def m(name, **params):
        return {"model": name, **({"parameters": params} if params else {})}

    cases = []

    def add(name, method, models, base=None, params=None, random=None, variants=("f32", "bf16", "f16")):
        for v in variants:
            cfg = {"merge_method": method}
            if base:
                cfg["base_model"] = base
            cfg["models"] = models
            if params:
                cfg["parameters"] = params
            cases.append(dict(name=f"{name}-{v}", method=method, body=cfg, models=DTYPES[v], dtype=DTYPES[v], out_dtype=None, random=random))

    # linear: weight per input (the base too when listed), normalize (default true)
    add("linear", "linear", [m(F1, weight=0.5), m(F2, weight=0.3), m(F3, weight=0.2)])
    add("linear-unnormalized", "linear", [m(F1, weight=0.7), m(F2, weight=0.6)], params={"normalize": False})
    # task arithmetic: weight, lambda, normalize (default false), rescale/density/int8_mask are accepted but unused
    add("task_arithmetic", "task_arithmetic", [m(B), m(F1, weight=0.6), m(F2, weight=0.4), m(F3, weight=-0.3)], base=B,
        params={"lambda": 0.8})
    add("task_arithmetic-normalized", "task_arithmetic", [m(F1, weight=0.6), m(F2, weight=0.9)], base=B,
        params={"normalize": True})
    # TIES: density, weight, normalize (default true), int8_mask, lambda
    add("ties", "ties", [m(F1, weight=0.6, density=0.5), m(F2, weight=0.5, density=0.7), m(F3, weight=0.4, density=0.3)], base=B)
    add("ties-options", "ties", [m(F1, weight=0.6, density=0.4), m(F2, weight=0.5, density=0.8)], base=B,
        params={"normalize": False, "int8_mask": True, "lambda": 1.3})
    add("ties-rescale", "ties", [m(F1, weight=0.6, density=0.5), m(F2, weight=0.5, density=0.7)], base=B, params={"rescale": True})
    add("breadcrumbs-rescale", "breadcrumbs", [m(F1, weight=0.6, density=0.6, gamma=0.05), m(F3, weight=0.5, density=0.5)], base=B,
        params={"rescale": True, "lambda": 0.7})
    # DARE: random masks (Bernoulli(density)), l1 rescale by default
    add("dare_ties", "dare_ties", [m(F1, weight=0.6, density=0.5), m(F2, weight=0.5, density=0.7), m(F3, weight=0.4, density=0.6)], base=B,
        random={"sparsification": "random"})
    add("dare_linear", "dare_linear", [m(F1, weight=0.6, density=0.5), m(F2, weight=0.5, density=0.7)], base=B,
        random={"sparsification": "random"})
    add("dare_linear-single", "dare_linear", [m(F1, weight=0.8, density=0.4)], base=B, random={"sparsification": "random"})
    add("dare_linear-norescale", "dare_linear", [m(F1, weight=0.8, density=0.4)], base=B, params={"rescale": False},
        random={"sparsification": "random"})
    # breadcrumbs: density and gamma (default 0.01) per model
    add("breadcrumbs", "breadcrumbs", [m(F1, weight=0.6, density=0.6, gamma=0.05), m(F2, weight=0.5, density=0.8, gamma=0.1)], base=B)
    add("breadcrumbs_ties", "breadcrumbs_ties",
        [m(F1, weight=0.6, density=0.6, gamma=0.05), m(F2, weight=0.5, density=0.8, gamma=0.02), m(F3, weight=0.4, density=0.5)],
        base=B, params={"normalize": True})
    # DELLA: magnitude-ranked Bernoulli masks (density +/- epsilon), l1 rescale by default
    add("della", "della", [m(F1, weight=0.6, density=0.5, epsilon=0.1), m(F2, weight=0.5, density=0.6, epsilon=0.2)], base=B,
        params={"lambda": 0.9}, random={"sparsification": "della_magprune"})
    add("della_linear", "della_linear", [m(F1, weight=0.6, density=0.5, epsilon=0.1), m(F2, weight=0.5, density=0.6, epsilon=0.2)], base=B,
        random={"sparsification": "della_magprune"})
    add("della_linear-single", "della_linear", [m(F1, weight=0.8, density=0.4, epsilon=0.3)], base=B, random={"sparsification": "della_magprune"})
    # SCE: select_topk (default 1.0), int8_mask
    add("sce", "sce", [m(F1), m(F2), m(F3)], base=B, params={"select_topk": 0.5})
    add("sce-all", "sce", [m(F1), m(F2)], base=B, params={"int8_mask": True})
    # model stock: filter_wise (default false)
    add("model_stock", "model_stock", [m(F1), m(F2), m(F3)], base=B)
    add("model_stock-filterwise", "model_stock", [m(F1), m(F2), m(F3)], base=B, params={"filter_wise": True})
    # NuSLERP: two non-base models with weights; nuslerp_flatten (default true), nuslerp_row_wise (default false)
    add("nuslerp", "nuslerp", [m(F1, weight=0.3), m(F2, weight=0.7)], base=B)
    add("nuslerp-rows-nobase", "nuslerp", [m(F1, weight=0.4), m(F2, weight=0.6)],
        params={"nuslerp_flatten": False, "nuslerp_row_wise": True})
    add("nuslerp-columns", "nuslerp", [m(F1, weight=1.0), m(F2, weight=3.0)], base=B, params={"nuslerp_flatten": False})
    # Multi-SLERP: weight, normalize_weights (default true), eps
    add("multislerp", "multislerp", [m(F1, weight=0.5), m(F2, weight=0.3), m(F3, weight=0.2)], base=B)
    add("multislerp-nobase", "multislerp", [m(F1, weight=1.0), m(F2, weight=2.0), m(F3, weight=1.0)],
        params={"normalize_weights": True, "eps": 1e-6})
    # Karcher mean: max_iter (default 10), tol (default 1e-5); no base
    add("karcher", "karcher", [m(F1), m(F2), m(F3)], params={"max_iter": 20, "tol": 1e-7})
    # NearSwap: t (required)
    add("nearswap", "nearswap", [m(B), m(F1)], base=B, params={"t": 0.004})
    # Arcee Fusion: no parameters
    add("arcee_fusion", "arcee_fusion", [m(B), m(F1)], base=B)
    # RAM and RAM+ (tensor-local): epsilon (default 1e-5); r (0.1), alpha (0.2)
    add("ram", "ram", [m(F1), m(F2), m(F3)], base=B, params={"epsilon": 0.004})
    add("ramplus_tl", "ramplus_tl", [m(F1), m(F3)], base=B, params={"r": 0.5, "alpha": 0.6, "epsilon": 0.002})
    # passthrough: one model, optional scale
    add("passthrough", "passthrough", [m(F1, scale=0.5)])
    # SLERP: t (required, shared); a gradient over layers and a filter list
    add("slerp", "slerp", [m(B), m(F1)], base=B, params={"t": 0.3})
    add("slerp-gradient", "slerp", [m(B), m(F2)], base=B,
        params={"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                      {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]})
    # gradient and filter lists on other methods
    add("linear-gradient", "linear", [m(F1, weight=[1.0, 0.2]), m(F2, weight=[0.2, 1.0])])
    add("ties-filter", "ties", [m(F1, weight=0.6, density=[{"filter": "mlp", "value": 0.3}, {"value": 0.8}]),
                                m(F2, weight=[{"filter": "self_attn", "value": 0.2}, {"value": 0.7}], density=0.5)], base=B)
    add("task_arithmetic-gradient", "task_arithmetic", [m(F1, weight=[0.0, 1.0]), m(F2, weight=[1.0, 0.5, 0.0])], base=B)

    # dtype vs out_dtype: compute in one dtype, write another; and no dtype at all (mergekit promotes the inputs').
    def variant(name, method, models, stored, dtype, out_dtype, base=None, params=None, random=None):
        cfg = {"merge_method": method}
        if base:
            cfg["base_model"] = base
        cfg["models"] = models
        if params:
            cfg["parameters"] = params
        cases.append(dict(name=name, method=method, body=cfg, models=stored, dtype=dtype, out_dtype=out_dtype, random=random))

    lin = [m(F1, weight=0.5), m(F2, weight=0.3), m(F3, weight=0.2)]
    ties = [m(F1, weight=0.6, density=0.5), m(F2, weight=0.5, density=0.7), m(F3, weight=0.4, density=0.3)]
    slerp = [m(B), m(F1)]
    variant("linear-bf16-compute-f32-out-bf16", "linear", lin, "bfloat16", "float32", "bfloat16")
    variant("linear-f32-compute-bf16-out-f32", "linear", lin, "float32", "bfloat16", "float32")
    variant("linear-f16-out-bf16", "linear", lin, "float16", "float16", "bfloat16")
    variant("linear-bf16-nodtype", "linear", lin, "bfloat16", None, None)
    variant("ties-bf16-compute-f32-out-bf16", "ties", ties, "bfloat16", "float32", "bfloat16", base=B)
    variant("ties-f16-compute-f32-out-f16", "ties", ties, "float16", "float32", "float16", base=B)
    variant("slerp-f16-compute-f32-out-f16", "slerp", slerp, "float16", "float32", "float16", base=B, params={"t": 0.3})
    variant("task_arithmetic-f32-out-f16", "task_arithmetic", [m(F1, weight=0.6), m(F2, weight=0.4)], "float32", "float32", "float16",
            base=B, params={"lambda": 0.8})
    # arcee_fusion and ramplus_tl promote a 16-bit merge to float32 (a float32 mask; λ): out_dtype converts it back.
    variant("arcee_fusion-bf16-out-bf16", "arcee_fusion", [m(B), m(F1)], "bfloat16", "bfloat16", "bfloat16", base=B)
    variant("ramplus_tl-f16-out-f16", "ramplus_tl", [m(F1), m(F3)], "float16", "float16", "float16", base=B,
            params={"r": 0.5, "alpha": 0.6, "epsilon": 0.002})
    variant("ramplus_tl-bf16-nodtype", "ramplus_tl", [m(F1), m(F2), m(F3)], "bfloat16", None, None, base=B)
    # modules: (mergekit's per-module merges). A Llama has one module, "default": as models: (the module's parameters
    # between the config's and each model's own; a module filter that matches nothing falls through) and as slices:.
    def module_case(name, method, modules, base=None, params=None):
        cfg = {"merge_method": method}
        if base:
            cfg["base_model"] = base
        cfg["modules"] = modules
        if params:
            cfg["parameters"] = params
        cases.append(dict(name=name, method=method, body=cfg, models="float32", dtype="float32", out_dtype=None, random=None))

    module_case("modules-models-f32", "task_arithmetic",
                {"default": {"models": [m(F1, weight=0.6), m(F2)],
                             "parameters": {"weight": 0.3, "lambda": [{"filter": "mlp", "value": 0.9}]}}}, base=B, params={"lambda": 0.5})
    module_case("modules-slices-f32", "linear",
                {"default": {"slices": [{"sources": [{"model": F1, "layer_range": [0, 2], "parameters": {"weight": 0.7}},
                                                     {"model": F2, "layer_range": [1, 3]}]},
                                        {"sources": [{"model": F3, "layer_range": [2, 3]}, {"model": F1, "layer_range": [0, 1]}]}],
                             "parameters": {"weight": 0.4}}}, params={"normalize": True})
    # A module a Llama does not have (a vision-language model's vision tower): mergekit fails, tessera refuses it.
    module_case("error-modules-vision_tower", "linear",
                {"default": {"models": [m(F1, weight=1.0)]}, "vision_tower": {"models": [m(F2, weight=1.0)]}})
    # Configs mergekit refuses (its contracts and parameter checks): tessera must refuse them too.
    variant("error-ties-no-base", "ties", [m(F1, weight=0.6, density=0.5), m(F2, weight=0.5, density=0.5)], "float32", "float32", None)
    variant("error-slerp-three-models", "slerp", [m(B), m(F1), m(F2)], "float32", "float32", None, base=B, params={"t": 0.5})
    variant("error-nearswap-no-t", "nearswap", [m(B), m(F1)], "float32", "float32", None, base=B)
    variant("error-nuslerp-three-models", "nuslerp", [m(F1, weight=1.0), m(F2, weight=1.0), m(F3, weight=1.0)], "float32", "float32", None,
            base=B)
    variant("error-passthrough-two-models", "passthrough", [m(F1), m(F2)], "float32", "float32", None)
    variant("error-model_stock-one-model", "model_stock", [m(F1)], "float32", "float32", None, base=B)
    variant("error-della-epsilon", "della", [m(F1, weight=0.6, density=0.9, epsilon=0.2)], "float32", "float32", None, base=B,
            random={"sparsification": "della_magprune"})
    return cases


def config_text(case):
    """The YAML for a case: model names become paths relative to configs/."""
    import yaml

    def path(name):
        return f"../models/{case['models']}/{name}"

    body = json.loads(json.dumps(case["body"]))
    if "base_model" in body:
        body["base_model"] = path(body["base_model"])
    for entry in body.get("models", []):
        entry["model"] = path(entry["model"])
    for module in body.get("modules", {}).values():
        for entry in module.get("models", []):
            entry["model"] = path(entry["model"])
        for s in module.get("slices", []):
            for src in s["sources"]:
                src["model"] = path(src["model"])
    if case["dtype"]:
        body["dtype"] = case["dtype"]
    if case["out_dtype"]:
        body["out_dtype"] = case["out_dtype"]
    return f"# {case['name']}: made by scripts/make_mergekit_method_fixtures.py\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def random_info(case):
    """What a structural check of a random (DARE/DELLA) case needs: per model its density and epsilon, weights, rescale."""
    if not case["random"]:
        return None
    method = case["method"]
    shared = case["body"].get("parameters") or {}
    rescale_default = True  # dare_*, della_*: default_rescale=True in mergekit's registry
    normalize_default = method in ("della",)
    models = []
    for entry in case["body"]["models"]:
        p = entry.get("parameters") or {}
        models.append({"model": entry["model"], "weight": p.get("weight"), "density": p.get("density", 1.0),
                       "epsilon": p.get("epsilon", 0.15 if case["random"]["sparsification"] == "della_magprune" else None)})
    return {"sparsification": case["random"]["sparsification"], "models": models,
            "rescale": shared.get("rescale", rescale_default), "rescale_norm": "l1",
            "normalize": shared.get("normalize", normalize_default), "lambda": shared.get("lambda", 1.0),
            "consensus": "sum" if method in ("dare_ties", "della") else None, "seed": SEED}


def sparsification_info(case):
    """For the deterministic magnitude-sparsified methods: what a test needs to find the entries whose result depends
    on how torch orders equal magnitudes at the density cut (its argsort is not stable): the sparsification, the
    compute dtype (the magnitudes are |θ_i − θ_base| in it), each model's density and gamma settings as written
    (scalars or filter lists), and whether the kept entries are rescaled to the task vector's L1 norm (a sum over the
    tensor, whose float32 rounding depends on the order of the additions)."""
    kind = {"ties": "magnitude", "breadcrumbs": "magnitude_outliers", "breadcrumbs_ties": "magnitude_outliers"}.get(case["method"])
    if kind is None:
        return None
    models = []
    for entry in case["body"]["models"]:
        p = entry.get("parameters") or {}
        models.append({"model": entry["model"], "density": p.get("density", 1.0), "gamma": p.get("gamma", 0.01)})
    rescale = (case["body"].get("parameters") or {}).get("rescale", False)  # default_rescale is False for these three
    return {"method": kind, "compute_dtype": case["dtype"] or case["models"], "models": models, "rescale": rescale}


# ----------------------------------------------------------------------------------------------- running mergekit

DRIVER = r"""
import json, os, sys, traceback
from mergekit.scripts.run_yaml import main
jobs = json.loads(sys.stdin.read())
results = {}
for name, config, out in jobs:
    os.chdir(os.path.dirname(config))
    try:
        main.main(args=[config, out, "--no-write-model-card", "--no-copy-tokenizer", "--random-seed", str(SEED)] ,
                  standalone_mode=False)
        results[name] = {"ok": True}
    except BaseException as e:  # noqa: BLE001 (a failed case is recorded, and the next one runs)
        lines = [l for l in (f"{type(e).__name__}: {e}").strip().splitlines() if l.strip()]
        results[name] = {"ok": False, "last_line": lines[-1][:300] if lines else type(e).__name__,
                         "traceback": traceback.format_exc()[-3000:]}
    print(name, "merged" if results[name]["ok"] else "failed", file=sys.stderr, flush=True)
print(json.dumps(results))
"""


SOURCES = """# Sources

Made by `scripts/make_mergekit_method_fixtures.py --venv /work/venvs/mergekit` (run it again to remake everything here;
the models are seeded, and mergekit ran with `--random-seed 0`).

- `models/DTYPE/{base,ft1,ft2,ft3}`: tiny random Llama-shaped Hugging Face folders written by the script (numpy,
  seeded): 3 layers, hidden size 12, intermediate size 20, vocabulary 24, 3 query heads and 1 key/value head;
  fine-tunes are the base plus noise (ft3 is correlated with ft1 and unchanged on about a third of its entries). The
  same values are stored in float32, bfloat16 (rounded to nearest even) and float16.
- `configs/NAME.yml`: one mergekit config per case, written by the script: every merge method in mergekit 0.1.5's
  registry, with non-default parameters, in the three dtypes, plus `out_dtype`, gradient-list and `filter` cases;
  `modules:` cases (the one module, `default`, of a Llama, as models: and as slices:);
  `configs/error-*.yml` are configs mergekit refuses (its input contracts and parameter checks).
- `expected/NAME.safetensors`: mergekit 0.1.5's output for `configs/NAME.yml` (its `mergekit-yaml` command run in
  process, CPU torch, `--no-write-model-card --no-copy-tokenizer --random-seed 0`), tensors exactly as written.
- `cases.json`: per case the method, dtypes, mergekit's outcome (merged, or failed with its last line), whether the
  result is deterministic (DARE and DELLA draw their masks from torch's RNG; what a structural check needs is
  recorded), and the versions of mergekit, torch and transformers.

Licence: mergekit is LGPL-3.0-only (github.com/arcee-ai/mergekit). No mergekit code is copied here; the expected
outputs are mergekit's results on our own random models.
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default=os.path.join(ROOT, ".cache", "mergekit-venv"))
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--only", help="remake only the cases whose name contains this (the others are kept)")
    a = ap.parse_args()
    import numpy as np  # noqa: F401
    py = ensure_venv(os.path.abspath(a.venv))
    out = os.path.abspath(a.out)
    cases = case_list()
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    previous = {}
    if a.only:
        if os.path.exists(os.path.join(out, "cases.json")):
            previous = json.load(open(os.path.join(out, "cases.json")))["cases"]
        cases = [c for c in cases if a.only in c["name"]]
    else:
        shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    os.makedirs(os.path.join(out, "expected"), exist_ok=True)
    make_models(out)
    jobs = []
    work = tempfile.mkdtemp(prefix="mergekit-methods-")
    try:
        for c in cases:
            path = os.path.join(out, "configs", c["name"] + ".yml")
            with open(path, "w") as f:
                f.write(config_text(c))
            expected = os.path.join(out, "expected", c["name"] + ".safetensors")
            if os.path.exists(expected):
                os.remove(expected)
            jobs.append((c["name"], path, os.path.join(work, c["name"])))
        run = subprocess.run([py, "-c", DRIVER.replace("str(SEED)", repr(str(SEED)))], input=json.dumps(jobs),
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1"})
        if run.returncode != 0:
            sys.exit("the mergekit driver failed")
        results = json.loads(run.stdout.strip().splitlines()[-1])
        rows = dict(previous)
        for c in cases:
            r = results[c["name"]]
            row = {"method": c["method"], "models_dtype": c["models"], "dtype": c["dtype"], "out_dtype": c["out_dtype"],
                   "deterministic": c["random"] is None}
            if c["random"]:
                row["random"] = random_info(c)
            if sparsification_info(c):
                row["sparsification"] = sparsification_info(c)
            if r["ok"]:
                tensors = read_folder(os.path.join(work, c["name"]))
                write_safetensors(os.path.join(out, "expected", c["name"] + ".safetensors"), dict(sorted(tensors.items())))
                dts = sorted({t[0] for t in tensors.values()})
                row.update(mergekit="merged", written_dtypes=dts, tensors=len(tensors))
            else:
                row.update(mergekit="failed", mergekit_last_line=r["last_line"])
            rows[c["name"]] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    versions = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'), m.version('transformers'))"],
                              stdout=subprocess.PIPE, text=True).stdout.split()
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"mergekit": versions[0], "torch": versions[1], "transformers": versions[2], "random_seed": SEED,
                   "shape": SHAPE, "cases": dict(sorted(rows.items()))}, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "SOURCES.md"), "w") as f:
        f.write(SOURCES)
    print(f"{'case':<40} {'method':<17} {'models':<9} {'dtype':<9} {'out':<9} {'mergekit':<9} {'det':<4} written / note")
    for name, r in sorted(rows.items()):
        note = ",".join(r.get("written_dtypes", [])) if r["mergekit"] == "merged" else r["mergekit_last_line"][:80]
        print(f"{name:<40} {r['method']:<17} {r['models_dtype']:<9} {str(r['dtype']):<9} {str(r['out_dtype']):<9} {r['mergekit']:<9} "
              f"{'yes' if r['deterministic'] else 'no':<4} {note}")
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "**", "*"), recursive=True) if os.path.isfile(p))
    print(f"{len(rows)} cases, {sum(r['mergekit'] == 'merged' for r in rows.values())} merged by mergekit; fixtures {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
