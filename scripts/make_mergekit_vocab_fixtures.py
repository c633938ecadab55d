#!/usr/bin/env python3
"""Fixtures for merges across different vocabularies (Tests/Fixtures/mergekit-vocab).

Tiny Llama models (2 layers, hidden size 8, float32, untied lm_head) whose BPE tokenizers differ, each built here with
the `tokenizers` library from a vocabulary and merges written below:
- `base`: 24 tokens (3 specials, 14 letters, 7 merged pairs); config vocab_size 24.
- `ft_added`: base plus noise, its tokenizer base's plus two added tokens (`<tool>`, `<think>`); 26 embedding rows.
- `ft_other`: base's weights permuted to another vocabulary (the letters in another order, other merges, `<tool>` at
  another id, some of base's merges missing) plus noise; 27 rows.
- `stripped`: base's tokenizer plus two added tokens, but config vocab_size 24: mergekit strips the tokens past it.
Each config is run by mergekit 0.1.5 (mergekit-yaml); its output tensors go to expected/NAME.safetensors, its output
tokenizer's vocabulary (AutoTokenizer's get_vocab) to expected/NAME.vocab.json and its config.json to
expected/NAME.config.json. When TESSERA_BIN points to a build, tessera runs each config too and outcomes.json records
whether its tensors equal mergekit's (per token for `union`, whose ids for tokens new to the base follow the iteration
order of a Rust HashMap in mergekit, different from run to run) and whether AutoTokenizer gives tessera's tokenizer the
same ids.

The configs list the base among the models: mergekit 0.1.5 also merges a base_model that is not listed (linear
included), which tessera's linear does not (a difference outside the vocabulary).

Usage: scripts/make_mergekit_vocab_fixtures.py [--venv VENV] [--out DIR]
"""
import argparse, glob, json, os, shutil, struct, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "mergekit-vocab")

CONFIGS = {
    # The base's vocabulary: ft_other's rows permuted to it; base tokens ft_other lacks come from the base.
    "base.yml": """models:
  - model: models/base
    parameters:
      weight: 0.5
  - model: models/ft_added
    parameters:
      weight: 0.3
  - model: models/ft_other
    parameters:
      weight: 0.2
merge_method: linear
base_model: models/base
tokenizer_source: base
dtype: float32
""",
    # Another model's vocabulary (ft_other): tokens only it has are its rows in every model (the donor), tokens the
    # base lacks but ft_added has come from ft_added; a task-arithmetic merge over the permuted rows.
    "model.yml": """models:
  - model: models/ft_added
    parameters:
      weight: 0.7
  - model: models/ft_other
    parameters:
      weight: 0.4
merge_method: task_arithmetic
base_model: models/base
tokenizer_source: models/ft_other
dtype: float32
""",
    # The union: base's ids, then the other models' tokens; <tool> (ft_added and ft_other, not the base) is the
    # average of their rows (the base is merged too, but lacks it).
    "union.yml": """models:
  - model: models/ft_added
    parameters:
      weight: 1.0
  - model: models/ft_other
    parameters:
      weight: 0.5
  - model: models/base
    parameters:
      weight: 0.25
merge_method: linear
base_model: models/base
tokenizer_source: union
dtype: float32
""",
    # tokens: overrides, with the tokenizer: long form: a new token (zero row), a token from a named model, a token
    # from another token's row in one model (by token and by id), one forced.
    "tokens.yml": """models:
  - model: models/base
  - model: models/ft_added
  - model: models/ft_other
merge_method: linear
parameters:
  weight: 1.0
base_model: models/base
tokenizer:
  source: union
  tokens:
    <tool>:
      source: models/ft_added
    <think>:
      source:
        kind: zero
    ab:
      source:
        kind: model_token
        model: models/ft_other
        token: ba
      force: true
    <new>:
      source:
        kind: model_token
        model: models/ft_added
        token_id: 5
dtype: float32
""",
    # tokens: with source: base, on tokens the base has (mergekit 0.1.5 fails with a KeyError when tokens: adds a
    # token to the base's vocabulary: it adds it to the base's own tokenizer object, then finds its id out of range).
    "tokens-base.yml": """models:
  - model: models/ft_added
  - model: models/ft_other
  - model: models/base
merge_method: linear
parameters:
  weight: 0.5
base_model: models/base
tokenizer:
  source: base
  tokens:
    ab:
      source:
        kind: model_token
        model: models/ft_other
        token: ba
      force: true
    gh:
      source:
        kind: zero
      force: true
    cd:
      source: models/ft_other
    ef:
      source: models/ft_added
dtype: float32
""",
    # pad_to_multiple_of: ft_other's vocabulary padded to a multiple of 16 rows, the padding rows the mean of the real
    # ones (a sum over the rows in id order: with union, whose ids vary between mergekit's runs, its last bits would too).
    "pad.yml": """models:
  - model: models/ft_added
  - model: models/ft_other
  - model: models/base
merge_method: linear
parameters:
  weight: 0.5
base_model: models/base
tokenizer:
  source: models/ft_other
  pad_to_multiple_of: 16
dtype: float32
""",
    # A base whose tokenizer has tokens past its config's vocab_size: mergekit strips them.
    "stripped.yml": """models:
  - model: models/stripped
  - model: models/ft_added
merge_method: linear
parameters:
  weight: 0.5
base_model: models/stripped
tokenizer_source: base
dtype: float32
""",
    # bfloat16: the average of <tool>'s rows is computed in bfloat16 (each operation rounded), as mergekit does.
    "bf16.yml": """models:
  - model: models/ft_added
    parameters:
      weight: 0.6
  - model: models/ft_other
    parameters:
      weight: 0.4
  - model: models/base
merge_method: linear
base_model: models/base
parameters:
  weight: 0.1
tokenizer_source: union
dtype: bfloat16
""",
}

MAKE_MODELS = r"""
import json, os, sys
import torch
from tokenizers import Tokenizer, models as tm, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1]
SPECIALS = ["<unk>", "<s>", "</s>"]
LETTERS = list("abcdefghijklmn")

def save_tokenizer(folder, vocab, merges, added=()):
    tok = Tokenizer(tm.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if added:
        fast.add_tokens(list(added))
    fast.save_pretrained(folder)
    return fast.get_vocab()

def bpe(tokens_in_order, merges):
    return {t: i for i, t in enumerate(tokens_in_order)}, merges

base_merges = [("a", "b"), ("c", "d"), ("e", "f"), ("ab", "cd"), ("g", "h"), ("i", "j"), ("k", "l")]
base_tokens = SPECIALS + LETTERS + ["".join(m) for m in base_merges]
other_merges = [("b", "a"), ("c", "d"), ("ba", "cd"), ("m", "n"), ("g", "h"), ("n", "m")]
other_tokens = SPECIALS + list(reversed(LETTERS)) + ["".join(m) for m in other_merges]

def config(rows):
    return LlamaConfig(vocab_size=rows, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, hidden_act="silu", max_position_embeddings=64, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

def save(name, model):
    folder = os.path.join(out, "models", name)
    model.save_pretrained(folder, safe_serialization=True)
    return folder

torch.manual_seed(1)
base = LlamaForCausalLM(config(len(base_tokens))).to(torch.float32)
with torch.no_grad():
    for n, p in base.named_parameters():
        p.copy_(1 + 0.1 * torch.randn_like(p) if n.endswith("norm.weight") else 0.1 * torch.randn_like(p))
save_tokenizer(save("base", base), *bpe(base_tokens, base_merges))

def derived(name, seed, vocab_rows, row_of):
    # A fine-tune of base whose vocabulary rows are base's rows as `row_of` maps them (None: a fresh random row).
    torch.manual_seed(seed)
    m = LlamaForCausalLM(config(vocab_rows)).to(torch.float32)
    sd = base.state_dict()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n in ("model.embed_tokens.weight", "lm_head.weight"):
                for r in range(vocab_rows):
                    src = row_of(r)
                    p[r] = sd[n][src] + 0.02 * torch.randn(8) if src is not None else 0.1 * torch.randn(8)
            else:
                p.copy_(sd[n] + 0.02 * torch.randn_like(p))
    return save(name, m)

added = ["<tool>", "<think>"]
folder = derived("ft_added", 2, len(base_tokens) + 2, lambda r: r if r < len(base_tokens) else None)
save_tokenizer(folder, *bpe(base_tokens, base_merges), added=added)

other_all = other_tokens + ["<tool>"]
folder = derived("ft_other", 3, len(other_all), lambda r: base_tokens.index(other_all[r]) if other_all[r] in base_tokens else None)
save_tokenizer(folder, *bpe(other_tokens, other_merges), added=["<tool>"])

folder = derived("stripped", 4, len(base_tokens), lambda r: r)
save_tokenizer(folder, *bpe(base_tokens, base_merges), added=["<x1>", "<x2>"])
"""

VOCAB = r"""
import json, sys
from transformers import AutoTokenizer
out = {}
for folder in sys.argv[1:]:
    t = AutoTokenizer.from_pretrained(folder)
    out[folder] = {"vocab": t.get_vocab(), "ids": t("abcd ba <tool> gh mn")["input_ids"]}
print(json.dumps(out))
"""


def write_safetensors(path, tensors):
    header, data, at = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        data += raw
        at += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def read_folder(folder):
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


def rows(tensor):
    dtype, shape, raw = tensor
    width = {"F32": 4, "BF16": 2, "F16": 2}[dtype] * (shape[1] if len(shape) == 2 else 1)
    return [raw[i * width:(i + 1) * width] for i in range(shape[0])] if len(shape) == 2 else [raw]


def compare(expected, got, mk_vocab, ts_vocab):
    # Tensors byte for byte; vocabulary tensors row by row through the tokens (ids may differ for union).
    for name, e in expected.items():
        g = got.get(name)
        if g is None or g[0] != e[0] or g[1] != e[1]:
            return f"{name}: {g and g[:2]} vs {e[:2]}"
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            er, gr = rows(e), rows(g)
            for tok, i in mk_vocab.items():
                if tok not in ts_vocab or gr[ts_vocab[tok]] != er[i]:
                    return f"{name}: row of {tok!r}"
            for i in range(len(mk_vocab), len(er)):
                if gr[i] != er[i]:
                    return f"{name}: padding row {i}"
        elif g[2] != e[2]:
            return f"{name}: bytes differ"
    return "equal"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default="/work/venvs/mergekit")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    py = os.path.join(a.venv, "bin", "python")
    out = os.path.abspath(a.out)
    shutil.rmtree(out, ignore_errors=True)
    for d in ("configs", "expected"):
        os.makedirs(os.path.join(out, d))
    subprocess.run([py, "-c", MAKE_MODELS, out], check=True)
    for name, text in CONFIGS.items():
        with open(os.path.join(out, "configs", name), "w") as f:
            f.write(text)
    outcomes = {}
    work = tempfile.mkdtemp(prefix="mergekit-vocab-")
    try:
        for name in CONFIGS:
            stem = name[:-4]
            rel = os.path.join("configs", name)
            mk_out, ts_out = os.path.join(work, "mergekit-" + stem), os.path.join(work, "tessera-" + stem)
            cmd = [os.path.join(a.venv, "bin", "mergekit-yaml"), rel, mk_out, "--no-write-model-card"]
            mk = subprocess.run(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            row = {"mergekit": "merged" if mk.returncode == 0 else "failed: " + (mk.stdout.strip().splitlines() or ["?"])[-1][:300]}
            if mk.returncode == 0:
                expected = read_folder(mk_out)
                write_safetensors(os.path.join(out, "expected", stem + ".safetensors"), dict(sorted(expected.items())))
                shutil.copy(os.path.join(mk_out, "config.json"), os.path.join(out, "expected", stem + ".config.json"))
                folders = [mk_out]
                ts = None
                if os.path.exists(TESSERA):
                    ts = subprocess.run([TESSERA, "merge", "--config", rel, "-o", ts_out], cwd=out,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    row["tessera"] = "merged" if ts.returncode == 0 else "refused: " + ts.stderr.strip()
                    if ts.returncode == 0:
                        folders.append(ts_out)
                vocab = subprocess.run([py, "-c", VOCAB] + folders, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if vocab.returncode != 0:
                    row["tokenizer_error"] = vocab.stderr.strip().splitlines()[-1][:300]
                else:
                    v = json.loads(vocab.stdout)
                    mk_vocab = v[mk_out]["vocab"]
                    with open(os.path.join(out, "expected", stem + ".vocab.json"), "w") as f:
                        json.dump(dict(sorted(mk_vocab.items(), key=lambda kv: kv[1])), f, indent=1, ensure_ascii=False)
                        f.write("\n")
                    row["vocabulary"] = len(mk_vocab)
                    if ts_out in v:
                        ts_vocab = v[ts_out]["vocab"]
                        row["tessera_same_tokens"] = sorted(ts_vocab) == sorted(mk_vocab)
                        row["tessera_same_ids"] = ts_vocab == mk_vocab
                        row["tessera_same_encoding"] = v[ts_out]["ids"] == v[mk_out]["ids"]
                        row["tessera_tensors"] = compare(expected, read_folder(ts_out), mk_vocab, ts_vocab)
            outcomes[name] = row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(out, "outcomes.json"), "w") as f:
        json.dump({"mergekit": "0.1.5", "configs": outcomes}, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "SOURCES.md"), "w") as f:
        f.write("# Sources\n\nMade by `scripts/make_mergekit_vocab_fixtures.py` (run it again to remake everything here); "
                "its docstring says what each model and config is.\n")
    for name, r in outcomes.items():
        print(f"{name:<14} {json.dumps(r)}")


if __name__ == "__main__":
    main()
