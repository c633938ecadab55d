#!/usr/bin/env python3
"""Fixtures for `tessera merge --config` on mergekit's own example configs (Tests/Fixtures/mergekit-examples).

Every model name the examples use is made a small local Hugging Face folder of the same name (a tiny Llama- or
Mistral-shaped model: config.json and a float16 model.safetensors; fine-tunes are their base plus noise), so that the
configs run unchanged, from the fixture folder, as mergekit users run them. Each config then goes through mergekit
(mergekit==0.1.5 on the CPU torch wheel, in a venv built as bench/bench_merge.py builds it) and through tessera:
- both merge: mergekit's output tensors are the expected output (expected/NAME.safetensors), and transformers loads
  tessera's output folder (written sharded, to exercise the index) and mergekit's, giving the same logits;
  the config is also run by both with its dtype set to float32 (expected/NAME.float32.safetensors): mergekit computes in
  the config's dtype (float16 here) while tessera computes in float32 and rounds once, so the float32 run separates
  arithmetic precision from semantics;
- tessera refuses: its one-line error is recorded.
outcomes.json records every config's outcome for both tools; the table is printed.

The examples are mergekit's `examples/*.yml`. The mergekit sdist on PyPI does not ship them (0.1.5 has no examples/
folder), so they are read from a mergekit source tree: --examples PATH (e.g. a clone of github.com/arcee-ai/mergekit;
they have not changed since v0.1.4).

Usage: scripts/make_mergekit_example_fixtures.py --examples MERGEKIT/examples [--venv DIR] [--out DIR]
"""
import argparse, glob, hashlib, json, os, re, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "mergekit-examples")

# Tiny shapes. The Mistral family has 4 layers, so that gradients (parameter lists over layers) interpolate; the
# Llama 2 13B family has the real model's 40 layers, which the slices examples take ranges of (layer_range [0, 40],
# [20, 40]), with a smaller hidden size to keep the folder small.
SHAPES = {
    "mistral": dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                    num_key_value_heads=2),
    "llama": dict(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=40, num_attention_heads=2,
                  num_key_value_heads=2),
}


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


def model_names(cfg):
    names = []
    def add(ref):
        if isinstance(ref, str) and ref not in names:
            names.append(ref)
    add(cfg.get("base_model"))
    for m in cfg.get("models") or []:
        add(m.get("model"))
    for s in cfg.get("slices") or []:
        for src in s.get("sources") or []:
            add(src.get("model"))
    return names


def family(name):
    """Which base a model is a fine-tune of: the examples' names tell (Mistral ones, else Llama 2)."""
    return "mistral" if "istral" in name else "llama"


BASES = {"llama": "TheBloke/Llama-2-13B-fp16", "mistral": "mistralai/Mistral-7B-v0.1"}


def tensors_for(shape, arch_seed, noise_seed=None):
    import numpy as np
    rng = np.random.default_rng(arch_seed)
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
        base = np.ones(shape) if name.endswith("norm.weight") else rng.normal(0, 0.05, shape)
        out[name] = base
    if noise_seed is not None:
        noise = np.random.default_rng(noise_seed)
        out = {k: t + noise.normal(0, 0.01, t.shape) for k, t in out.items()}
    return {k: t.astype(np.float16) for k, t in out.items()}


def write_safetensors(path, tensors, metadata=None):
    header, data, at = {}, b"", 0
    if metadata:
        header["__metadata__"] = metadata
    dtypes = {"float16": "F16", "float32": "F32", "bfloat16": "BF16"}
    for name, t in tensors.items():
        raw = t.tobytes()
        header[name] = {"dtype": dtypes[str(t.dtype)], "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
        data += raw
        at += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def values(dtype, raw):
    import numpy as np
    if dtype == "F16":
        return np.frombuffer(raw, dtype=np.float16).astype(np.float64)
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(raw, dtype=np.float32).astype(np.float64)


def seed(name):
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def make_model(root, name):
    fam = family(name)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    base_name = BASES[fam]
    tensors = tensors_for(SHAPES[fam], seed(base_name), None if name == base_name else seed(name))
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
    arch = {"llama": ("LlamaForCausalLM", "llama"), "mistral": ("MistralForCausalLM", "mistral")}[fam]
    config = dict(architectures=[arch[0]], model_type=arch[1], hidden_act="silu", max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="float16", bos_token_id=1, eos_token_id=2, **SHAPES[fam])
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


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


LOGITS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
ids = torch.tensor([[1, 5, 9, 3, 17, 30, 2, 11]])
out = {}
for folder in sys.argv[1:]:
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        out[folder] = m(ids).logits[0].flatten().tolist()
print(json.dumps(out))
"""


SOURCES = """# Sources

Made by `scripts/make_mergekit_example_fixtures.py` (run it again to remake everything here).

- `examples/`: mergekit's example configs, `examples/*.yml` of github.com/arcee-ai/mergekit (LGPL-3.0-only), unchanged
  (identical from v0.1.4 to the 0.1.5 era; the 0.1.5 sdist on PyPI does not ship them).
- The model folders (`TheBloke/Llama-2-13B-fp16`, `psmathur/orca_mini_v3_13b`, ...): tiny stand-ins written by the
  script under the names the configs use, so that the configs run unchanged: Mistral-shaped models of 4 layers
  (hidden size 16) and Llama-2-13B-shaped ones of 40 layers (hidden size 8), vocabulary 32, float16, random (numpy,
  seeded by the name); fine-tunes are their family's base plus noise.
- `expected/NAME.safetensors`: mergekit 0.1.5's output for `examples/NAME.yml` (mergekit-yaml, CPU torch);
  `expected/NAME.float32.safetensors`: the same config with `dtype: float32`.
- `outcomes.json`: each config's outcome in mergekit and in tessera, the largest differences, and the largest
  difference of logits when transformers loads tessera's (sharded) output folder and mergekit's.
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", required=True, help="mergekit's examples/ folder (from a mergekit source tree)")
    ap.add_argument("--venv", default=os.path.join(ROOT, ".cache", "mergekit-venv"))
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    import yaml, numpy as np  # noqa: F401  (numpy for the models)
    py = ensure_venv(os.path.abspath(a.venv))
    mergekit = os.path.join(os.path.dirname(py), "mergekit-yaml")
    out = os.path.abspath(a.out)
    sources = sorted(glob.glob(os.path.join(a.examples, "*.yml")))
    if not sources:
        sys.exit(f"no *.yml in {a.examples}")
    # Read before the output folder is remade: --examples may be the fixtures' own examples/ folder.
    texts = {os.path.basename(c): open(c).read() for c in sources}
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "examples"))
    os.makedirs(os.path.join(out, "expected"))
    configs = []
    for base, text in texts.items():
        configs.append(os.path.join(out, "examples", base))
        with open(configs[-1], "w") as f:
            f.write(text)
    names = []
    for c in configs:
        for n in model_names(yaml.safe_load(open(c))):
            if n not in names:
                names.append(n)
    for n in names:
        make_model(out, n)
    outcomes = {}
    work = tempfile.mkdtemp(prefix="mergekit-examples-")
    try:
        for c in configs:
            name = os.path.basename(c)
            stem = name[:-4]
            rel = os.path.join("examples", name)
            mk_out, ts_out = os.path.join(work, "mergekit-" + stem), os.path.join(work, "tessera-" + stem)
            mk = subprocess.run([mergekit, rel, mk_out, "--no-write-model-card", "--no-copy-tokenizer"], cwd=out,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            # Sharded on purpose (about a third of a model per shard): transformers must read tessera's index.
            ts = subprocess.run([TESSERA, "merge", "--config", rel, "-o", ts_out, "--max-shard-size", "16KB"], cwd=out,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            row = {"mergekit": "merged" if mk.returncode == 0 else "failed: " + (mk.stdout.strip().splitlines() or ["?"])[-1][:200],
                   "tessera": "merged" if ts.returncode == 0 else "refused",
                   "tessera_message": ts.stderr.strip() if ts.returncode else ""}
            if mk.returncode == 0 and ts.returncode == 0:
                expected = read_folder(mk_out)
                got = read_folder(ts_out)
                write_safetensors(os.path.join(out, "expected", stem + ".safetensors"),
                                  {k: np.frombuffer(v[2], dtype={"F16": np.float16, "BF16": np.uint16, "F32": np.float32}[v[0]]).reshape(v[1])
                                   for k, v in sorted(expected.items())})
                diffs, dtypes = [], {}
                for k, (dt, shape, raw) in expected.items():
                    g = got.get(k)
                    if g is None or g[1] != shape:
                        sys.exit(f"{name}: tessera's tensor {k} is missing or has another shape")
                    if g[0] != dt:
                        # e.g. arcee_fusion: mergekit's float32 mask promotes its result, which it writes as float32.
                        dtypes[f"{dt} (mergekit), {g[0]} (tessera)"] = dtypes.get(f"{dt} (mergekit), {g[0]} (tessera)", 0) + 1
                    x, y = values(dt, raw), values(g[0], g[2])
                    diffs.append(float(np.max(np.abs(x - y))) if x.size else 0.0)
                row["max_abs_diff"] = max(diffs)
                if dtypes:
                    row["dtype_differs"] = dtypes
                row["tensors"] = len(expected)
                row["tessera_files"] = sorted(os.listdir(ts_out))
                logits = subprocess.run([py, "-c", LOGITS, mk_out, ts_out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if logits.returncode != 0:
                    sys.exit(f"transformers could not load the outputs of {name}:\n{logits.stderr[-2000:]}")
                l = json.loads(logits.stdout)
                row["transformers_max_logit_diff"] = float(np.max(np.abs(np.array(l[mk_out]) - np.array(l[ts_out]))))
                # The same config computing in float32 (mergekit computes in the config's dtype; tessera always in
                # float32 and rounds once): separates arithmetic precision from semantics in the tests.
                text = open(c).read()
                if re.search(r"(?m)^dtype: *float32 *$", text) is None:
                    variant = os.path.join(work, stem + ".float32.yml")
                    with open(variant, "w") as f:
                        f.write(re.sub(r"(?m)^dtype: .*$", "dtype: float32", text))
                    mk32, ts32 = mk_out + "-f32", ts_out + "-f32"
                    subprocess.run([mergekit, variant, mk32, "--no-write-model-card", "--no-copy-tokenizer"], cwd=out, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    subprocess.run([TESSERA, "merge", "--config", variant, "-o", ts32], cwd=out, check=True, stdout=subprocess.DEVNULL)
                    e32, g32 = read_folder(mk32), read_folder(ts32)
                    write_safetensors(os.path.join(out, "expected", stem + ".float32.safetensors"),
                                      {k: np.frombuffer(v[2], dtype=np.float32).reshape(v[1]) for k, v in sorted(e32.items())})
                    differing = {}
                    for k, (dt, shape, raw) in e32.items():
                        x, y = np.frombuffer(raw, dtype=np.float32).astype(np.float64), np.frombuffer(g32[k][2], dtype=np.float32).astype(np.float64)
                        n = int(np.sum(np.abs(x - y) > 1e-6 * max(np.max(np.abs(x)), 1e-12)))
                        if n:
                            differing[k] = n
                    row["float32_differing_elements"] = differing
            outcomes[name] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    versions = subprocess.run([py, "-c", "import mergekit, transformers, torch; print(transformers.__version__, torch.__version__)"],
                              stdout=subprocess.PIPE, text=True).stdout.split()
    with open(os.path.join(out, "outcomes.json"), "w") as f:
        json.dump({"mergekit": "0.1.5", "transformers": versions[0] if versions else "?", "torch": versions[1] if len(versions) > 1 else "?",
                   "models": names, "configs": outcomes}, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "SOURCES.md"), "w") as f:
        f.write(SOURCES)
    print(f"{'config':<28} {'mergekit':<10} {'tessera':<9} max|diff|   logits   note")
    for name, r in outcomes.items():
        note = r["tessera_message"] if r["tessera"] != "merged" else ""
        diff = f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "-"
        lg = f"{r['transformers_max_logit_diff']:.1e}" if "transformers_max_logit_diff" in r else "-"
        print(f"{name:<28} {r['mergekit'][:10]:<10} {r['tessera']:<9} {diff:<11} {lg:<8} {note}")


if __name__ == "__main__":
    main()
