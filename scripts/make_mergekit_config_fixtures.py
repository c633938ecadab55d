#!/usr/bin/env python3
"""Fixtures for the mergekit config syntax `tessera merge --config` runs (Tests/Fixtures/mergekit-configs).

Tiny Llama-shaped models (4 layers, hidden size 8, vocabulary 32, float32, with a real tokenizer and chat template),
two PEFT LoRA adapters made with peft (one with rsLoRA scaling), and configs exercising slices (layer stacking with
passthrough; frankenmerges with per-slice base models and parameters), gradients (over whole models and over slices,
a one-layer slice, filters matched as substrings), MODEL+LORA references, tokenizer_source and chat_template, and a
multi-document config. Each config is run by mergekit 0.1.5 (mergekit-yaml, or mergekit-multi for configs/multi.yml)
and mergekit's output tensors are written to expected/NAME.safetensors; outcomes.json records what each tool did
(tessera too when TESSERA_BIN points to a build), the largest difference, and mergekit's config.json layer count.

Usage: scripts/make_mergekit_config_fixtures.py [--venv /work/venvs/mergekit] [--out DIR]
"""
import argparse, glob, json, os, shutil, struct, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "debug", "tessera"))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "mergekit-configs")

SHAPE = dict(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2)
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
NEW_TEMPLATE = "{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n{% endfor %}"

CONFIGS = {
    # A base_model not listed among the models: mergekit appends it to the inputs with the top-level parameters, so
    # linear averages it too.
    "linear-base.yml": """models:
  - model: models/ft_a
    parameters:
      weight: 0.5
  - model: models/ft_b
    parameters:
      weight: 0.3
base_model: models/base
merge_method: linear
parameters:
  weight: 0.2
dtype: float32
""",
    # Layer stacking: overlapping ranges of one model, copied.
    "stack.yml": """slices:
  - sources:
      - model: models/ft_a
        layer_range: [0, 3]
  - sources:
      - model: models/ft_a
        layer_range: [1, 4]
merge_method: passthrough
dtype: float32
""",
    # A frankenmerge: each slice merges its own sources with its own parameters (per source, per slice, global).
    "franken.yml": """slices:
  - sources:
      - model: models/ft_a
        layer_range: [0, 2]
        parameters:
          weight: 0.7
      - model: models/ft_b
        layer_range: [2, 4]
        parameters:
          weight: 0.3
  - sources:
      - model: models/base
        layer_range: [1, 3]
      - model: models/ft_b
        layer_range: [0, 2]
    parameters:
      weight: [0.2, 0.9]
  - sources:
      - model: models/ft_b
        layer_range: [3, 4]
merge_method: linear
parameters:
  weight: 1.0
dtype: float32
""",
    # SLERP over slices with per-slice base models; a one-layer slice (t = 1 there) and gradients with filters.
    "slerp-slices.yml": """slices:
  - sources:
      - model: models/base
        layer_range: [0, 1]
      - model: models/ft_a
        layer_range: [0, 1]
  - sources:
      - model: models/ft_a
        layer_range: [1, 4]
      - model: models/ft_b
        layer_range: [1, 4]
    base_model: models/ft_b
    parameters:
      t:
        - filter: self_attn
          value: [0.1, 0.9]
        - value: [0.8, 0.3, 0.5]
merge_method: slerp
base_model: models/base
parameters:
  t: [0.2, 0.7]
dtype: float32
""",
    # Gradients over a whole model: layers at i/(n-1), embeddings, final norm and lm_head at t = 0; filters are
    # substrings (the glob-looking "*proj" matches nothing, "layers.2." only layer 2).
    "gradients.yml": """models:
  - model: models/ft_a
    parameters:
      weight: [0.1, 1.0, 0.4]
      density:
        - filter: "*proj"
          value: 0.1
        - filter: layers.2.
          value: 0.3
        - value: [0.9, 0.6]
  - model: models/ft_b
    parameters:
      weight:
        - filter: mlp
          value: [1.0, 0.0]
        - value: 0.5
      density: 0.7
merge_method: ties
base_model: models/base
parameters:
  normalize: true
dtype: float32
""",
    # Scopes: a filter list that matches nothing for a tensor falls through to the slice's, then the config's value.
    "fallthrough.yml": """slices:
  - sources:
      - model: models/ft_a
        layer_range: [0, 4]
        parameters:
          weight:
            - filter: self_attn
              value: 0.9
      - model: models/ft_b
        layer_range: [0, 4]
    parameters:
      weight:
        - filter: mlp
          value: [0.1, 0.6]
merge_method: linear
parameters:
  weight: 0.3
  normalize: false
dtype: float32
""",
    # GPT-2: layers under transformer.h, the count in n_layer, ln_f after the layers (from the last slice).
    "gpt2-franken.yml": """slices:
  - sources:
      - model: models/gpt2_a
        layer_range: [0, 2]
      - model: models/gpt2_b
        layer_range: [0, 2]
  - sources:
      - model: models/gpt2_b
        layer_range: [1, 4]
      - model: models/gpt2_a
        layer_range: [1, 4]
merge_method: slerp
base_model: models/gpt2_b
parameters:
  t: [0.2, 0.8]
dtype: float32
""",
    # GPT-Neo: mergekit has no architecture file for it; stacking one model's layers is the same either way.
    "neo-stack.yml": """slices:
  - sources:
      - model: models/neo_a
        layer_range: [0, 2]
  - sources:
      - model: models/neo_a
        layer_range: [1, 3]
merge_method: passthrough
dtype: float32
""",
    # The last slice has more sources than the first: mergekit merges the final norm and lm_head from the last
    # slice's first source only (it pairs them with the first slice's entries).
    "uneven.yml": """slices:
  - sources:
      - model: models/ft_a
        layer_range: [0, 2]
  - sources:
      - model: models/ft_b
        layer_range: [2, 4]
        parameters:
          weight: 0.3
      - model: models/base
        layer_range: [2, 4]
        parameters:
          weight: 0.7
merge_method: linear
parameters:
  weight: 1.0
dtype: float32
""",
    # A list of booleans steps through its entries over the layers (entry int(t * (n - 1))), without interpolating.
    "steps.yml": """models:
  - model: models/ft_a
    parameters:
      weight: 0.7
  - model: models/ft_b
    parameters:
      weight: 0.6
merge_method: linear
parameters:
  normalize: [true, false, false]
dtype: float32
""",
    # MODEL+LORA: the adapter applied to its model (W + alpha/r B A), then merged.
    "lora.yml": """models:
  - model: models/base+adapters/lora
    parameters:
      weight: 0.6
  - model: models/ft_a
    parameters:
      weight: 0.4
merge_method: linear
dtype: float32
""",
    # rsLoRA scaling (alpha/sqrt(r)) and a task vector against the base.
    "lora-rslora.yml": """models:
  - model: models/base+adapters/rslora
    parameters:
      weight: 1.0
  - model: models/ft_b
    parameters:
      weight: 0.5
merge_method: task_arithmetic
base_model: models/base
dtype: float32
""",
    # The tokenizer of a named model and a chat template given in the config.
    "tokenizer.yml": """models:
  - model: models/ft_a
    parameters:
      weight: 0.5
  - model: models/ft_b
    parameters:
      weight: 0.5
merge_method: linear
tokenizer_source: models/ft_b
chat_template: "%s"
dtype: float32
""" % NEW_TEMPLATE.replace("\n", "\\n"),
    # A named chat template (ChatML).
    "chatml.yml": """models:
  - model: models/ft_a
  - model: models/ft_b
merge_method: linear
parameters:
  weight: 1.0
tokenizer_source: base
base_model: models/ft_a
chat_template: chatml
dtype: float32
""",
    # tokenizer_source: base, chat_template: auto (the inputs' most common template).
    "tokenizer-base.yml": """models:
  - model: models/ft_a
  - model: models/base
merge_method: slerp
base_model: models/base
parameters:
  t: 0.25
tokenizer_source: base
chat_template: auto
dtype: float32
""",
    # mergekit-multi: a named intermediate merge used by the final one.
    "multi.yml": """name: middle
models:
  - model: models/ft_a
    parameters:
      weight: 0.5
  - model: models/ft_b
    parameters:
      weight: 0.5
merge_method: linear
dtype: float32
---
slices:
  - sources:
      - model: models/base
        layer_range: [0, 4]
      - model: middle
        layer_range: [0, 4]
merge_method: slerp
base_model: models/base
parameters:
  t: [0.1, 0.6]
dtype: float32
""",
}


def write_safetensors(path, tensors, metadata=None):
    header, data, at = {}, b"", 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        raw = t.tobytes()
        header[name] = {"dtype": {"float32": "F32", "float16": "F16"}[str(t.dtype)], "shape": list(t.shape),
                        "data_offsets": [at, at + len(raw)]}
        data += raw
        at += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def read_folder(folder):
    import numpy as np
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        b = open(path, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        h.pop("__metadata__", None)
        for k, v in h.items():
            o = v["data_offsets"]
            dt = {"F32": np.float32, "F16": np.float16}[v["dtype"]]
            out[k] = np.frombuffer(b[8 + n + o[0]:8 + n + o[1]], dtype=dt).reshape(v["shape"])
    return out


MAKE_MODELS = r"""
import json, os, sys
import numpy as np, torch
from tokenizers import Tokenizer, models as tm, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from peft import LoraConfig, get_peft_model

out, shape, template = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

def tokenizer(folder, words):
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(tm.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = template
    fast.save_pretrained(folder)

words = ["<unk>", "<s>", "</s>"] + ["w%d" % i for i in range(3, shape["vocab_size"])]
config = LlamaConfig(hidden_act="silu", max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, **shape)
def model(name, seed, base=None):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        if base is not None:
            for p, q in zip(m.parameters(), base.parameters()):
                p.copy_(q + 0.02 * torch.randn_like(q))
        else:
            for n, p in m.named_parameters():
                p.copy_(1 + 0.1 * torch.randn_like(p) if n.endswith("norm.weight") else 0.1 * torch.randn_like(p))
    folder = os.path.join(out, "models", name)
    m.save_pretrained(folder, safe_serialization=True)
    tokenizer(folder, words)
    return m
base = model("base", 1)
model("ft_a", 2, base)
model("ft_b", 3, base)
# A model whose tokenizer orders the vocabulary differently (for the refusal of differing tokenizers).
other = model("other_vocab", 4, base)
tokenizer(os.path.join(out, "models", "other_vocab"), list(reversed(words)))

def adapter(name, seed, **kw):
    torch.manual_seed(seed)
    m = LlamaForCausalLM.from_pretrained(os.path.join(out, "models", "base"), dtype=torch.float32)
    peft_model = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0, **kw))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or "lora_A" in n:
                p.copy_(0.1 * torch.randn_like(p))  # PEFT starts B at zero: make the update visible
    peft_model.save_pretrained(os.path.join(out, "adapters", name))
    os.remove(os.path.join(out, "adapters", name, "README.md"))  # peft's empty model card template
    # peft writes target_modules from a set: sorted, the file is the same from run to run.
    path = os.path.join(out, "adapters", name, "adapter_config.json")
    cfg = json.load(open(path))
    cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
adapter("lora", 5)
adapter("rslora", 6, use_rslora=True)

# GPT-2 (layers under transformer.h, n_layer) and GPT-Neo (num_layers, per-layer attention_types), no tokenizer.
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM
def other(name, cls, cfg, seed, base=None):
    torch.manual_seed(seed)
    m = cls(cfg).to(torch.float32)
    with torch.no_grad():
        if base is not None:
            for p, q in zip(m.parameters(), base.parameters()):
                p.copy_(q + 0.02 * torch.randn_like(q))
        else:
            for p in m.parameters():
                p.copy_(0.1 * torch.randn_like(p) + (1 if p.dim() == 1 else 0))
    m.save_pretrained(os.path.join(out, "models", name), safe_serialization=True)
    return m
g = GPT2Config(vocab_size=32, n_positions=16, n_embd=8, n_layer=4, n_head=2)
g2 = other("gpt2_a", GPT2LMHeadModel, g, 7)
other("gpt2_b", GPT2LMHeadModel, g, 8, g2)
n = GPTNeoConfig(vocab_size=32, max_position_embeddings=16, hidden_size=8, num_layers=3, num_heads=2,
                 attention_types=[[["global", "local"], 1], [["global"], 1]], window_size=4)
other("neo_a", GPTNeoForCausalLM, n, 9)
"""

LOGITS = r"""
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

RENDER = r"""
import sys
from transformers import AutoTokenizer
conversations = [[{"role": "user", "content": "hi"}],
                 [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb "}, {"role": "assistant", "content": " ok"}]]
a, b = (AutoTokenizer.from_pretrained(f) for f in sys.argv[1:3])
same = all(a.apply_chat_template(c, tokenize=False, add_generation_prompt=g) == b.apply_chat_template(c, tokenize=False, add_generation_prompt=g)
           for c in conversations for g in (False, True))
print("same" if same else "different")
"""

SOURCES = """# Sources

Made by `scripts/make_mergekit_config_fixtures.py` (run it again to remake everything here).

- `models/`: tiny Llama-shaped models written with transformers (4 layers, hidden size 8, vocabulary 32, float32,
  random, seeded): `base`, its fine-tunes `ft_a` and `ft_b` (base plus noise), and `other_vocab` (a fine-tune whose
  tokenizer orders the vocabulary differently). Each has a word-level tokenizer (tokenizers) with a chat template.
- `models/gpt2_a`, `gpt2_b` (GPT-2, 4 layers) and `models/neo_a` (GPT-Neo, 3 layers, global/local/global attention):
  tiny random models written with transformers, no tokenizer.
- `adapters/lora`, `adapters/rslora`: PEFT LoRA adapters of `base` (r 4, alpha 8, q/v/down projections, random A and
  B; the second with use_rslora), written by peft's save_pretrained.
- `configs/*.yml`: configs in mergekit's syntax (slices, gradients, MODEL+LORA, tokenizer_source, chat_template,
  multi-document).
- `expected/NAME.safetensors`: mergekit 0.1.5's output tensors for `configs/NAME.yml` (mergekit-yaml, or
  mergekit-multi for multi.yml), float32; `expected/NAME.config.json`: mergekit's output config.json.
- `expected/NAME.chat_template.jinja`: the chat template of mergekit's output tokenizer, when it has one.
- `outcomes.json`: each config's outcome in mergekit and tessera and the largest difference of tensors and logits.
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default="/work/venvs/mergekit")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    import numpy as np
    py = os.path.join(a.venv, "bin", "python")
    out = os.path.abspath(a.out)
    shutil.rmtree(out, ignore_errors=True)
    for d in ("configs", "expected"):
        os.makedirs(os.path.join(out, d))
    subprocess.run([py, "-c", MAKE_MODELS, out, json.dumps(SHAPE), CHAT_TEMPLATE], check=True)
    for name, text in CONFIGS.items():
        with open(os.path.join(out, "configs", name), "w") as f:
            f.write(text)
    outcomes = {}
    work = tempfile.mkdtemp(prefix="mergekit-configs-")
    try:
        for name in CONFIGS:
            stem = name[:-4]
            rel = os.path.join("configs", name)
            mk_out, ts_out = os.path.join(work, "mergekit-" + stem), os.path.join(work, "tessera-" + stem)
            if name == "multi.yml":
                cmd = [os.path.join(a.venv, "bin", "mergekit-multi"), rel, "--out-path", mk_out, "-I", os.path.join(work, "inter")]
            else:
                cmd = [os.path.join(a.venv, "bin", "mergekit-yaml"), rel, mk_out]
            cmd += ["--no-write-model-card", "--lora-merge-cache", os.path.join(work, "lora-cache")]
            mk = subprocess.run(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            row = {"mergekit": "merged" if mk.returncode == 0 else "failed: " + (mk.stdout.strip().splitlines() or ["?"])[-1][:300]}
            if mk.returncode == 0:
                expected = read_folder(mk_out)
                write_safetensors(os.path.join(out, "expected", stem + ".safetensors"), dict(sorted(expected.items())))
                shutil.copy(os.path.join(mk_out, "config.json"), os.path.join(out, "expected", stem + ".config.json"))
                # The chat template mergekit's output tokenizer carries (its own file, or tokenizer_config.json's key).
                template = None
                if os.path.exists(os.path.join(mk_out, "chat_template.jinja")):
                    template = open(os.path.join(mk_out, "chat_template.jinja")).read()
                elif os.path.exists(os.path.join(mk_out, "tokenizer_config.json")):
                    template = json.load(open(os.path.join(mk_out, "tokenizer_config.json"))).get("chat_template")
                if template is not None:
                    with open(os.path.join(out, "expected", stem + ".chat_template.jinja"), "w") as f:
                        f.write(template)
                row["tensors"] = len(expected)
                row["mergekit_files"] = sorted(os.listdir(mk_out))
                cfg = json.load(open(os.path.join(mk_out, "config.json")))
                row["num_hidden_layers"] = cfg.get("num_hidden_layers", cfg.get("n_layer", cfg.get("num_layers")))
                if os.path.exists(TESSERA):
                    ts = subprocess.run([TESSERA, "merge", "--config", rel, "-o", ts_out], cwd=out,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    row["tessera"] = "merged" if ts.returncode == 0 else "refused: " + ts.stderr.strip()
                    if ts.returncode == 0:
                        got = read_folder(ts_out)
                        diffs = [float(np.max(np.abs(got[k].astype(np.float64) - v.astype(np.float64)))) if k in got and got[k].shape == v.shape
                                 else float("inf") for k, v in expected.items()]
                        row["max_abs_diff"] = max(diffs)
                        row["same_names"] = sorted(got) == sorted(expected)
                        if os.path.exists(os.path.join(mk_out, "chat_template.jinja")) or os.path.exists(os.path.join(ts_out, "chat_template.jinja")):
                            rendered = subprocess.run([py, "-c", RENDER, mk_out, ts_out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                            row["chat_template_renders_same"] = rendered.stdout.strip() == "same"
                        logits = subprocess.run([py, "-c", LOGITS, mk_out, ts_out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                        if logits.returncode == 0:
                            l = json.loads(logits.stdout)
                            row["transformers_max_logit_diff"] = float(np.max(np.abs(np.array(l[mk_out]) - np.array(l[ts_out]))))
                        else:
                            row["transformers_error"] = logits.stderr.strip().splitlines()[-1][:300]
            outcomes[name] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(out, "outcomes.json"), "w") as f:
        json.dump({"mergekit": "0.1.5", "configs": outcomes}, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "SOURCES.md"), "w") as f:
        f.write(SOURCES)
    for name, r in outcomes.items():
        print(f"{name:<22} mergekit {r['mergekit'][:60]:<60} tessera {r.get('tessera', '-')[:80]} diff {r.get('max_abs_diff', '-')} logits {r.get('transformers_max_logit_diff', '-')}")


if __name__ == "__main__":
    main()
