#!/usr/bin/env python3
"""Checks tessera's model_stock, della, della_linear, sce, nearswap, arcee_fusion, ram, ramplus_tl, passthrough and
breadcrumbs against mergekit 0.1.5 itself: tiny float32 Llama-shaped models are written to a scratch folder, each
config is run by mergekit-yaml and by `tessera merge --config`, and the outputs are compared tensor by tensor.

Deterministic methods must agree bit for bit or within 1e-6 relative (max |diff| / max |expected| per tensor);
della and della_linear draw their masks with torch's generator in mergekit and with tessera's seeded generator, so
they are compared at density 1 (no drop: exact) and structurally (the kept fraction, the L1 norm kept by rescale).
Configs mergekit refuses must be refused by tessera too. This is a development check (the committed fixtures are
scripts/make_mergekit_method_fixtures.py's); it prints one line per config and exits non-zero on a mismatch.

Usage: scripts/check_methods_a.py [--venv /work/venvs/mergekit] [--tessera .build/debug/tessera] [--keep DIR]
"""
import argparse, json, os, shutil, struct, subprocess, sys, tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2)


def tensors(seed, base=None, noise=0.0, fraction=1.0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    h, i, v, n = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"], shape["num_hidden_layers"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for l in range(n):
        p = f"model.layers.{l}."
        for k in ("q", "k", "v", "o"):
            shapes[p + f"self_attn.{k}_proj.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    out = {}
    for name, shape in shapes.items():
        if base is None:
            t = np.ones(shape) + rng.normal(0, 0.02, shape) if name.endswith("norm.weight") else rng.normal(0, 0.05, shape)
        else:
            mask = rng.random(shape) < fraction
            t = base[name].astype(np.float64) + mask * rng.normal(0, noise, shape)
        out[name] = t.astype(np.float32)
    return out


def write_safetensors(path, ts):
    header, data, at = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, t in ts.items():
        raw = t.tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
        data += raw
        at += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def read_folder(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".safetensors"):
            continue
        b = open(os.path.join(folder, f), "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        h.pop("__metadata__", None)
        for k, v in h.items():
            o = v["data_offsets"]
            assert v["dtype"] == "F32", v["dtype"]
            out[k] = np.frombuffer(b[8 + n + o[0]:8 + n + o[1]], dtype=np.float32).reshape(v["shape"])
    return out


def make_model(root, name, ts, shape=SHAPE):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "model.safetensors"), ts)
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="float32", bos_token_id=1, eos_token_id=2, **shape)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def models_yaml(models, params=None):
    lines = ["models:"]
    for m in models:
        lines.append(f"  - model: {m}")
        if params and m in params:
            lines.append("    parameters:")
            for k, v in params[m].items():
                lines.append(f"      {k}: {json.dumps(v)}")
    return "\n".join(lines)


def config(method, models, base="base", params=None, model_params=None):
    text = f"merge_method: {method}\n"
    if base:
        text += f"base_model: {base}\n"
    text += models_yaml(models, model_params) + "\n"
    if params:
        text += "parameters:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in params.items())
    text += "dtype: float32\n"
    return text


W = {"weight": 1.0}
CASES = [
    # (name, config, kind): kind "exact" (bit for bit or 1e-6 relative), "refuse" (both refuse), "della" (structural)
    ("model_stock-2", config("model_stock", ["ft1", "ft2"]), "exact"),
    ("model_stock-3-base-listed", config("model_stock", ["base", "ft1", "ft2", "ft3"]), "exact"),
    ("model_stock-filter_wise", config("model_stock", ["ft1", "ft2", "ft3"], params={"filter_wise": True}), "exact"),
    ("model_stock-1", config("model_stock", ["ft1"]), "refuse"),
    ("nearswap-t0.01", config("nearswap", ["ft1"], params={"t": 0.01}), "exact"),
    ("nearswap-t0.0001", config("nearswap", ["ft1"], params={"t": 0.0001}), "exact"),
    ("nearswap-gradient", config("nearswap", ["base", "ft1"], params={"t": [0.001, 0.02]}), "exact"),
    ("nearswap-two", config("nearswap", ["ft1", "ft2"], params={"t": 0.01}), "refuse"),
    ("sce-topk1", config("sce", ["ft1", "ft2", "ft3"]), "exact"),
    ("sce-topk0.5", config("sce", ["ft1", "ft2", "ft3"], params={"select_topk": 0.5}), "exact"),
    ("sce-topk0.1", config("sce", ["ft1", "sp1", "ft3"], params={"select_topk": 0.1}), "exact"),
    ("sce-small-deltas", config("sce", ["tiny1", "tiny2"], params={"select_topk": 0.3}), "exact"),
    ("sce-one-model", config("sce", ["ft1"], params={"select_topk": 0.5}), "exact"),
    ("ram", config("ram", ["sp1", "sp2", "ft1"]), "exact"),
    ("ram-epsilon", config("ram", ["sp1", "sp2", "ft1"], params={"epsilon": 0.01}), "exact"),
    ("ramplus_tl", config("ramplus_tl", ["sp1", "sp2", "ft1"]), "exact"),
    ("ramplus_tl-params", config("ramplus_tl", ["sp1", "sp2"], params={"r": 0.5, "alpha": 0.9, "epsilon": 0.001}), "exact"),
    ("arcee_fusion", config("arcee_fusion", ["ft1"]), "exact"),
    ("arcee_fusion-sparse", config("arcee_fusion", ["sp1"]), "exact"),
    # Rows of 4,096 (down_proj): torch's cascade sum uses its multi-level accumulators there.
    ("arcee_fusion-wide", config("arcee_fusion", ["wide_ft"], base="wide_base"), "exact"),
    ("arcee_fusion-two", config("arcee_fusion", ["ft1", "ft2"]), "refuse"),
    ("passthrough", config("passthrough", ["ft1"], base=None), "exact"),
    ("passthrough-scale", config("passthrough", ["ft1"], base=None,
                                 model_params={"ft1": {"scale": [{"filter": "o_proj", "value": 0.5}, {"filter": "down_proj", "value": 2.0}]}}), "exact"),
    ("passthrough-two", config("passthrough", ["ft1", "ft2"], base=None), "refuse"),
    ("della-density1", config("della", ["ft1", "ft2", "ft3"], model_params={m: W for m in ["ft1", "ft2", "ft3"]}), "exact"),
    ("della_linear-density1", config("della_linear", ["ft1", "ft2"], model_params={"ft1": {"weight": 0.7}, "ft2": {"weight": 0.4}}), "exact"),
    ("della-eps-too-big", config("della", ["ft1", "ft2"], params={"density": 0.9}, model_params={m: W for m in ["ft1", "ft2"]}), "refuse"),
    ("della-0.5", config("della", ["ft1", "ft2", "ft3"], params={"density": 0.5, "epsilon": 0.1},
                         model_params={m: W for m in ["ft1", "ft2", "ft3"]}), "della"),
    ("della_linear-0.6", config("della_linear", ["ft1", "ft2"], params={"density": 0.6},
                                model_params={"ft1": {"weight": 0.5}, "ft2": {"weight": 0.5}}), "della"),
    ("breadcrumbs", config("breadcrumbs", ["ft1", "ft2"], params={"density": 0.8, "gamma": 0.05},
                           model_params={"ft1": {"weight": 0.6}, "ft2": {"weight": 0.4}}), "exact"),
    ("breadcrumbs_ties", config("breadcrumbs_ties", ["ft1", "ft2", "ft3"], params={"density": 0.7},
                                model_params={m: W for m in ["ft1", "ft2", "ft3"]}), "exact"),
    ("breadcrumbs-rescale", config("breadcrumbs", ["ft1", "ft2"], params={"density": 0.5, "rescale": True, "normalize": True},
                                   model_params={"ft1": W, "ft2": W}), "exact"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default="/work/venvs/mergekit")
    ap.add_argument("--tessera", default=os.path.join(ROOT, ".build", "debug", "tessera"))
    ap.add_argument("--keep", help="work in this folder and keep it")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    a = ap.parse_args()
    mergekit = os.path.join(a.venv, "bin", "mergekit-yaml")
    work = a.keep or tempfile.mkdtemp(prefix="check-methods-a-")
    os.makedirs(work, exist_ok=True)
    base = tensors(1)
    make_model(work, "base", base)
    for k, (seed, noise, fraction) in {"ft1": (11, 0.01, 1.0), "ft2": (12, 0.01, 1.0), "ft3": (13, 0.02, 1.0),
                                       "sp1": (21, 0.01, 0.3), "sp2": (22, 0.01, 0.3),
                                       "tiny1": (31, 1e-4, 1.0), "tiny2": (32, 1e-4, 1.0)}.items():
        make_model(work, k, tensors(seed, base, noise, fraction))
    wide = dict(SHAPE, intermediate_size=4096, num_hidden_layers=1)
    wide_base = tensors(2, shape=wide)
    make_model(work, "wide_base", wide_base, wide)
    make_model(work, "wide_ft", tensors(41, wide_base, 0.01, 1.0, wide), wide)
    failures = 0
    for name, text, kind in CASES:
        if a.only and a.only not in name:
            continue
        cfg = os.path.join(work, name + ".yml")
        with open(cfg, "w") as f:
            f.write(text)
        mk_out, ts_out = os.path.join(work, "mk-" + name), os.path.join(work, "ts-" + name)
        shutil.rmtree(mk_out, ignore_errors=True)
        shutil.rmtree(ts_out, ignore_errors=True)
        mk = subprocess.run([mergekit, cfg, mk_out, "--no-write-model-card", "--no-copy-tokenizer"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ts = subprocess.run([a.tessera, "merge", "--config", cfg, "-o", ts_out], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        mk_msg = (mk.stdout.strip().splitlines() or ["?"])[-1][:150]
        ts_msg = ts.stderr.strip().replace("\n", " | ")[:200]
        if kind == "refuse":
            ok = mk.returncode != 0 and ts.returncode != 0
            print(f"{'ok ' if ok else 'BAD'} {name:<28} refused: mergekit={mk.returncode != 0} tessera={ts.returncode != 0}  [{ts_msg}] [{mk_msg}]")
            failures += not ok
            continue
        if mk.returncode != 0 or ts.returncode != 0:
            print(f"BAD {name:<28} mergekit rc={mk.returncode} [{mk_msg}]  tessera rc={ts.returncode} [{ts_msg}]")
            failures += 1
            continue
        e, g = read_folder(mk_out), read_folder(ts_out)
        if set(e) != set(g):
            print(f"BAD {name:<28} tensor names differ: {sorted(set(e) ^ set(g))[:4]}")
            failures += 1
            continue
        if kind == "exact":
            worst, exact, differing = 0.0, 0, 0
            for k in e:
                x, y = e[k].astype(np.float64), g[k].astype(np.float64)
                scale = max(np.max(np.abs(x)), 1e-30)
                rel = float(np.max(np.abs(x - y)) / scale) if x.size else 0.0
                worst = max(worst, rel)
                exact += int(np.array_equal(e[k].view(np.uint32), g[k].view(np.uint32)))
                differing += int(np.sum(x != y))
            ok = worst <= 1e-6
            print(f"{'ok ' if ok else 'BAD'} {name:<28} {exact}/{len(e)} tensors bit-exact, {differing} values differ, max rel {worst:.2e}")
            failures += not ok
        else:
            # Structural: kept fraction of each task vector near density, nothing outside the models' support.
            b = base
            kept_m, kept_t, n = 0, 0, 0
            for k in e:
                dm, dt = e[k] - b[k], g[k] - b[k]
                kept_m += int(np.sum(dm != 0))
                kept_t += int(np.sum(dt != 0))
                n += dm.size
            ok = abs(kept_m - kept_t) / n < 0.05
            print(f"{'ok ' if ok else 'BAD'} {name:<28} changed entries: mergekit {kept_m / n:.3f}, tessera {kept_t / n:.3f}")
            failures += not ok
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
