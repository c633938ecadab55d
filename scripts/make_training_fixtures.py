#!/usr/bin/env python3
"""Builds Tests/Fixtures/training/: what PyTorch computes for the training code of issue 13 (backward passes, AdamW,
learning-rate schedules, a short LoRA training run), for the Swift tests to compare against. Nothing here is
computed by Tessera. Tests/Fixtures/training/README.md states the format of every file.

Run with an interpreter that has torch (the CPU wheel, installed first so pip does not pull CUDA's), transformers 5.x,
peft 0.21.2 and safetensors, e.g.
    TORCH_WHEEL=$(find / -xdev -name 'torch-*+cpu-*.whl' 2>/dev/null | head -1)
    python3 -m venv tr && tr/bin/pip install "$TORCH_WHEEL" && tr/bin/pip install "transformers>=5" peft==0.21.2 safetensors
    tr/bin/python scripts/make_training_fixtures.py [gradients] [optimizer] [curve]
(no argument: all three). Re-runnable and deterministic: every random tensor is drawn from a seeded generator, each
output folder is rewritten whole, JSON is written with sorted keys.

- gradients: for the engine's tiny Llama, GPT-2 and GPT-Neo (Tests/TesseraEngineTests/Fixtures/tiny_*, made by
  scripts/make_engine_fixtures.py, read from there, not copied) and a tiny BERT made here: a PEFT LoRA adapter,
  a batch of two sequences of different lengths, and the summed loss with its gradients for every LoRA factor and
  every base parameter, computed in float64 from the float32 weights.
- optimizer: torch.optim.AdamW over five fixed gradients, and transformers' learning-rate schedules.
- curve: 20 steps of LoRA training of the tiny Llama (losses and the final adapter).
"""
import hashlib
import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_FIXTURES = os.path.join(ROOT, "Tests", "TesseraEngineTests", "Fixtures")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "training")

LORA_RANK, LORA_ALPHA = 4, 8
B_STD = 0.02  # B is redrawn from N(0, 0.02²) after PEFT's init (B = 0), so that A's gradients are not zero

# Every linear layer of attention and MLP, as PEFT's target_modules (suffix match on module names).
CAUSAL_ARCHS = {
    "llama": dict(fixture="tiny_llama", targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gpt2": dict(fixture="tiny_gpt2", targets=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    "gptneo": dict(fixture="tiny_gptneo", targets=["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]),
}
# BERT: "output.dense" matches attention.output.dense and the layer's output.dense, not the (unused) pooler.dense.
BERT_TARGETS = ["query", "key", "value", "output.dense", "intermediate.dense"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_json(path, value, compact=False):
    with open(path, "w") as f:
        if compact:
            json.dump(value, f, sort_keys=True, separators=(",", ":"))
        else:
            json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def save_adapter(peft_model, folder, base_path):
    """save_pretrained, then keep only what is read, with the base as a path inside the repository."""
    peft_model.save_pretrained(folder, safe_serialization=True)
    readme = os.path.join(folder, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    config_path = os.path.join(folder, "adapter_config.json")
    cfg = json.load(open(config_path))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes them from a set
    cfg["base_model_name_or_path"] = base_path
    write_json(config_path, cfg)


def lora_config(targets, fan_in_fan_out=False):
    return LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none", target_modules=targets,
                      fan_in_fan_out=fan_in_fan_out)


def redraw_b(peft_model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if ".lora_B." in name:
                p.copy_(B_STD * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def peft_key(name):
    """named_parameters() name -> the key PEFT writes in adapter_model.safetensors."""
    return name.replace(".default.", ".")


def base_key(name):
    """A base parameter's name inside the PEFT model -> its Hugging Face (checkpoint) name."""
    assert name.startswith("base_model.model."), name
    return name[len("base_model.model."):].replace(".base_layer.", ".")


def causal_batch(vocab, seed):
    """Two sequences of 9 and 6 tokens; the second's first 3 positions are a prompt (no target)."""
    rng = np.random.default_rng(seed)
    tokens = [[int(x) for x in rng.integers(0, vocab, size=n)] for n in (9, 6)]
    targets = []
    for i, seq in enumerate(tokens):
        t = seq[1:] + [-1]
        if i == 1:
            t[:3] = [-1, -1, -1]
        targets.append(t)
    return {"tokens": tokens, "targets": targets}


def padded(batch_tokens, pad):
    t = max(len(s) for s in batch_tokens)
    ids = torch.tensor([s + [pad] * (t - len(s)) for s in batch_tokens], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in batch_tokens], dtype=torch.long)
    return ids, mask


def causal_loss_sum(model, batch):
    """Σ over counted targets of -log softmax(logits[b, t])[targets[b, t]]: right padding, attention_mask, targets
    of padded or ignored positions -1 (HF's labels would be these shifted right by one, -100 where ignored)."""
    ids, mask = padded(batch["tokens"], 0)
    t = ids.shape[1]
    targets = torch.tensor([s + [-1] * (t - len(s)) for s in batch["targets"]], dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).to(torch.float64), targets.reshape(-1),
                                             ignore_index=-1, reduction="sum")
    return loss, int((targets != -1).sum())


def bert_loss_sum(model, batch):
    """The engine's classification path (SentenceEmbedder + LinearClassificationHead): the encoder's last hidden
    states, mean over each sequence's real tokens, divided by max(L2 norm, 1e-12), then the classifier
    (classifier.weight [2, H], classifier.bias [2]); cross-entropy summed over the examples. BERT's pooler is not
    used."""
    ids, mask = padded(batch["tokens"], model_pad_id(model))
    states = bert_encoder(model)(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.to(states.dtype).unsqueeze(-1)
    pooled = (states * m).sum(1) / m.sum(1)
    pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    head = classifier(model)
    logits = pooled @ head.weight.T + head.bias
    labels = torch.tensor(batch["labels"], dtype=torch.long)
    loss = torch.nn.functional.cross_entropy(logits.to(torch.float64), labels, reduction="sum")
    return loss, len(batch["labels"])


def unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def bert_encoder(model):
    return unwrap(model).bert


def classifier(model):
    return unwrap(model).classifier


def model_pad_id(model):
    return unwrap(model).config.pad_token_id


def gradients_of(model, loss_fn, batch, wanted):
    """Loss sum, count and d(loss sum)/d(parameter) for the named parameters `wanted` selects (others frozen)."""
    for name, p in model.named_parameters():
        p.requires_grad_(wanted(name))
        p.grad = None
    loss, count = loss_fn(model, batch)
    loss.backward()
    # A parameter the loss does not reach (BERT's pooler) has no .grad: its gradient is zero.
    grads = {name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for name, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), count, grads


def compute_expected(peft_model, loss_fn, batch):
    """float64 reference (the float32 weights cast exactly), plus the largest relative difference float32 torch makes
    (|g32 - g64| / max|g64| per tensor) as a note on what float32 can be expected to reach."""
    results = {}
    for dtype in (torch.float64, torch.float32):
        peft_model.to(dtype)
        lora = gradients_of(peft_model, loss_fn, batch, lambda n: "lora_" in n)
        with peft_model.disable_adapter():
            base = gradients_of(peft_model, loss_fn, batch, lambda n: "lora_" not in n)
        full = gradients_of(peft_model, loss_fn, batch, lambda n: "lora_" not in n)
        results[dtype] = (lora, full, base)
    peft_model.to(torch.float32)
    lora, full, base = results[torch.float64]
    tensors = {
        "loss_sum": torch.tensor([lora[0]], dtype=torch.float64),
        "count": torch.tensor([lora[1]], dtype=torch.int64),
        "base_loss_sum": torch.tensor([base[0]], dtype=torch.float64),
    }
    assert abs(full[0] - lora[0]) <= 1e-12 * abs(lora[0]), (full[0], lora[0])
    for name, g in lora[2].items():
        tensors["grad." + peft_key(name)] = g.to(torch.float32).contiguous()
    for name, g in full[2].items():
        tensors["weight_grad." + base_key(name)] = g.to(torch.float32).contiguous()
    for name, g in base[2].items():
        tensors["base_weight_grad." + base_key(name)] = g.to(torch.float32).contiguous()

    def worst(i):
        a, b = results[torch.float64][i], results[torch.float32][i]
        rel = abs(a[0] - b[0]) / abs(a[0])
        for n in a[2]:
            scale = float(a[2][n].abs().max())
            if scale > 1e-12:  # BERT's key biases: zero analytically, roundoff here
                rel = max(rel, float((a[2][n] - b[2][n].double()).abs().max()) / scale)
        return rel

    return tensors, {"lora": worst(0), "full": worst(1), "base": worst(2)}


def check_reload(load_base, adapter_dir, loss_fn, batch, tensors):
    """The saved adapter, loaded back by PEFT on a freshly loaded base, gives the stored loss."""
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(load_base(), adapter_dir).to(torch.float64)
    with torch.no_grad():
        loss, _ = loss_fn(reloaded, batch)
    want = float(tensors["loss_sum"][0])
    assert abs(float(loss) - want) <= 1e-12 * abs(want), (float(loss), want)


def save_expected(tensors, path, metadata):
    # One metadata key: safetensors writes several in no fixed order, and the fixture should be byte-reproducible.
    save_file(tensors, path, metadata={"source": json.dumps(metadata, sort_keys=True)})
    os.chmod(path, 0o644)  # safetensors writes through a private temporary file


def check_lora_nonzero(tensors):
    for k, v in tensors.items():
        if k.startswith("grad."):
            assert float(v.abs().max()) > 0, f"{k}: zero gradient"


def causal_fixture(arch, spec):
    from transformers import AutoModelForCausalLM

    base_dir = os.path.join(ENGINE_FIXTURES, spec["fixture"])
    out = os.path.join(OUT, arch)
    os.makedirs(out)
    load_base = lambda: AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    model = load_base()
    torch.manual_seed(100)  # PEFT's kaiming-uniform init of A draws from the global generator
    peft_model = get_peft_model(model, lora_config(spec["targets"], spec.get("fan_in_fan_out", False)))
    redraw_b(peft_model, 200)
    save_adapter(peft_model, os.path.join(out, "adapter"), os.path.relpath(base_dir, ROOT))
    batch = causal_batch(model.config.vocab_size, 300)
    write_json(os.path.join(out, "batch.json"), batch, compact=True)
    tensors, drift = compute_expected(peft_model, causal_loss_sum, batch)
    check_lora_nonzero(tensors)
    check_reload(load_base, os.path.join(out, "adapter"), causal_loss_sum, batch, tensors)
    model_path = os.path.relpath(os.path.join(base_dir, "model.safetensors"), ROOT)
    save_expected(tensors, os.path.join(out, "expected.safetensors"),
                  metadata={"model": model_path, "model_sha256": sha256(os.path.join(ROOT, model_path)), "precision": "float64"})
    return tensors, drift


def make_tiny_bert(folder):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                     pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     classifier_dropout=0.0, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(14)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("classifier"):
                p.copy_(1.0 * torch.randn(p.shape, generator=g))  # over unit-length embeddings: logits of order 1
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(folder, extra)
        if os.path.exists(p):
            os.remove(p)
    # The head alone, in the layout LinearClassificationHead reads (weight [C, D], bias [C]).
    save_file({"weight": model.classifier.weight.detach().contiguous(), "bias": model.classifier.bias.detach().contiguous()},
              os.path.join(folder, "head.safetensors"))


def bert_fixture():
    from transformers import BertForSequenceClassification

    out = os.path.join(OUT, "bert")
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir)
    make_tiny_bert(model_dir)
    load_base = lambda: BertForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32,
                                                                      attn_implementation="eager").eval()
    model = load_base()
    torch.manual_seed(101)
    peft_model = get_peft_model(model, lora_config(BERT_TARGETS))
    redraw_b(peft_model, 201)
    save_adapter(peft_model, os.path.join(out, "adapter"), os.path.relpath(model_dir, ROOT))
    rng = np.random.default_rng(301)
    batch = {"tokens": [[int(x) for x in rng.integers(1, 100, size=n)] for n in (9, 6)], "labels": [1, 0]}
    write_json(os.path.join(out, "batch.json"), batch, compact=True)
    tensors, drift = compute_expected(peft_model, bert_loss_sum, batch)
    check_lora_nonzero(tensors)
    check_reload(load_base, os.path.join(out, "adapter"), bert_loss_sum, batch, tensors)
    for k in list(tensors):  # the pooler takes no part in the loss: its gradients are zero, not worth storing
        if ".pooler." in k:
            assert float(tensors[k].abs().max()) == 0, k
            del tensors[k]
    save_expected(tensors, os.path.join(out, "expected.safetensors"), metadata={"model": "model/model.safetensors", "precision": "float64"})
    return tensors, drift


def read_gguf_f32(path):
    """The F32 tensors of a GGUF file (v3, little-endian), by name: enough to compare the engine's tiny_llama.gguf
    with its safetensors twin without the gguf package."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            inner, n = take("I"), take("Q")
            return [value(inner) for _ in range(n)]
        return take(scalar[kind])

    assert data[:4] == b"GGUF" and struct.unpack_from("<I", data, 4)[0] == 3
    pos = 8
    n_tensors, n_kv = take("Q"), take("Q")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        v = value(take("I"))
        if key == "general.alignment":
            alignment = v
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        kind, offset = take("I"), take("Q")
        infos.append((name, dims, kind, offset))
    start = (pos + alignment - 1) // alignment * alignment
    out = {}
    for name, dims, kind, offset in infos:
        if kind == 0:  # F32; GGUF lists dimensions innermost first
            count = math.prod(dims)
            out[name] = np.frombuffer(data, dtype="<f4", count=count, offset=start + offset).reshape(list(reversed(dims)))
    return out


def check_llama_gguf():
    """True when tiny_llama.gguf holds the same weights as tiny_llama/model.safetensors (Q/K rows in llama.cpp's
    order), so the llama fixture's expected values hold for the GGUF model too."""
    gguf = read_gguf_f32(os.path.join(ENGINE_FIXTURES, "tiny_llama.gguf"))
    st = {k: v.numpy() for k, v in load_file(os.path.join(ENGINE_FIXTURES, "tiny_llama", "model.safetensors")).items()}
    cfg = json.load(open(os.path.join(ENGINE_FIXTURES, "tiny_llama", "config.json")))

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    pairs = {"token_embd.weight": st["model.embed_tokens.weight"], "output_norm.weight": st["model.norm.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        pairs.update({
            f"blk.{i}.attn_norm.weight": st[p + "input_layernorm.weight"],
            f"blk.{i}.attn_q.weight": permute(st[p + "self_attn.q_proj.weight"], cfg["num_attention_heads"]),
            f"blk.{i}.attn_k.weight": permute(st[p + "self_attn.k_proj.weight"], cfg["num_key_value_heads"]),
            f"blk.{i}.attn_v.weight": st[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": st[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_norm.weight": st[p + "post_attention_layernorm.weight"],
            f"blk.{i}.ffn_gate.weight": st[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": st[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": st[p + "mlp.down_proj.weight"],
        })
    return set(gguf) == set(pairs) and all(np.array_equal(gguf[k], v) for k, v in pairs.items())


def gradients():
    torch.use_deterministic_algorithms(True)
    summary = {}
    for arch, spec in CAUSAL_ARCHS.items():
        shutil.rmtree(os.path.join(OUT, arch), ignore_errors=True)
        tensors, drift = causal_fixture(arch, spec)
        summary[arch] = (tensors, drift)
    shutil.rmtree(os.path.join(OUT, "bert"), ignore_errors=True)
    summary["bert"] = bert_fixture()
    same = check_llama_gguf()
    assert same, "tiny_llama.gguf no longer holds tiny_llama/model.safetensors' weights: the llama fixture does not apply to it"
    for arch, (tensors, drift) in summary.items():
        n_lora = sum(1 for k in tensors if k.startswith("grad."))
        n_base = sum(1 for k in tensors if k.startswith("weight_grad."))
        print(f"{arch}: loss_sum {float(tensors['loss_sum'][0]):.6f} over {int(tensors['count'][0])}, base_loss_sum "
              f"{float(tensors['base_loss_sum'][0]):.6f}; {n_lora} LoRA factors, {n_base} base parameters; float32 torch "
              f"vs float64, max relative (per tensor, to its max |g|): lora {drift['lora']:.2e} full {drift['full']:.2e} "
              f"base {drift['base']:.2e}")
    print("tiny_llama.gguf holds the same weights as tiny_llama/model.safetensors:", same)


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedules

ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def adamw_gradients():
    """Three small parameters and five gradients each, seeded, with cases that exercise the formula: a zero gradient
    (only decay and momentum move the weight), gradients far below eps, a sign flip, a large gradient."""
    g = torch.Generator().manual_seed(400)
    params = {"matrix": torch.randn(2, 3, generator=g), "vector": torch.randn(4, generator=g), "scalar": torch.tensor([0.75])}
    steps = []
    for k in range(5):
        step = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
        steps.append(step)
    steps[1]["vector"] = torch.zeros(4)
    steps[2]["vector"] = torch.tensor([1e-10, -1e-10, 3e-9, 0.0])
    steps[3]["matrix"] = -steps[2]["matrix"]
    steps[4]["scalar"] = torch.tensor([1e4])
    return params, steps


def run_adamw(params, steps, schedule):
    live = {n: torch.nn.Parameter(p.clone()) for n, p in params.items()}
    opt = torch.optim.AdamW(list(live.values()), **ADAMW)
    sched = schedule(opt) if schedule else None
    lrs, after = [], []
    for grads in steps:
        opt.zero_grad()
        for n, p in live.items():
            p.grad = grads[n].clone()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched:
            sched.step()
        after.append({n: p.detach().tolist() for n, p in live.items()})
    return lrs, after


def check_adamw_formula(params, steps, lrs, after):
    """The README's statement of AdamW, in float64, agrees with torch's float32 steps."""
    b1, b2, eps, wd = ADAMW["betas"][0], ADAMW["betas"][1], ADAMW["eps"], ADAMW["weight_decay"]
    for n, p0 in params.items():
        p = p0.double().clone()
        m = torch.zeros_like(p)
        v = torch.zeros_like(p)
        for t, (grads, lr) in enumerate(zip(steps, lrs), start=1):
            g = grads[n].double()
            p = p * (1 - lr * wd)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
            want = torch.tensor(after[t - 1][n], dtype=torch.float64)
            assert float((p - want).abs().max()) <= 1e-6 * max(1.0, float(want.abs().max())), (n, t)


def optimizer():
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    out = os.path.join(OUT, "optimizer")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    params, steps = adamw_gradients()
    cases = {
        "constant": None,
        "linear_warmup_3_total_10": lambda o: get_linear_schedule_with_warmup(o, num_warmup_steps=3, num_training_steps=10),
    }
    result = {
        "hyperparameters": {"lr": ADAMW["lr"], "beta1": ADAMW["betas"][0], "beta2": ADAMW["betas"][1], "eps": ADAMW["eps"],
                            "weight_decay": ADAMW["weight_decay"], "amsgrad": False},
        "shapes": {n: list(p.shape) for n, p in params.items()},
        "initial": {n: p.tolist() for n, p in params.items()},
        "gradients": [{n: g.tolist() for n, g in step.items()} for step in steps],
        "cases": {},
    }
    for name, schedule in cases.items():
        lrs, after = run_adamw(params, steps, schedule)
        check_adamw_formula(params, steps, lrs, after)
        result["cases"][name] = {"lr": lrs, "after_step": after}
    write_json(os.path.join(out, "adamw.json"), result, compact=True)

    schedules = {}
    warmup, total = 3, 10
    makers = {
        "linear": lambda o: get_linear_schedule_with_warmup(o, num_warmup_steps=warmup, num_training_steps=total),
        "cosine": lambda o: get_cosine_schedule_with_warmup(o, num_warmup_steps=warmup, num_training_steps=total),
        "constant_with_warmup": lambda o: get_constant_schedule_with_warmup(o, num_warmup_steps=warmup),
    }
    for name, make in makers.items():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        multipliers = []
        for _ in range(total + 3):
            multipliers.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        schedules[name] = {"warmup": warmup, "total": total, "multipliers": multipliers}
    schedules["cosine"]["num_cycles"] = 0.5
    write_json(os.path.join(out, "schedules.json"), schedules)
    for name, s in schedules.items():
        print(name, [round(m, 6) for m in s["multipliers"]])
    print("adamw constant, scalar after 5 steps:", result["cases"]["constant"]["after_step"][-1]["scalar"])


# ---------------------------------------------------------------------------------------------------------------
# A short LoRA training run

CURVE = dict(rank=4, alpha=8, targets=["q_proj", "k_proj", "v_proj", "o_proj"], lr=1e-3, weight_decay=0.0,
             warmup=2, steps=20, batch=4, length=16, seed=500)


def train_curve(dtype, adapter_dir, base_dir, batch):
    """The loop the README states: per step, zero_grad, forward (mean over the batch's counted targets), backward,
    AdamW step, scheduler step."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True).to(dtype)
    trainable = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.requires_grad for p in trainable) and not any(
        p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    opt = torch.optim.AdamW(trainable, lr=CURVE["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=CURVE["weight_decay"])
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=CURVE["warmup"], num_training_steps=CURVE["steps"])
    losses, lrs = [], []
    for _ in range(CURVE["steps"]):
        opt.zero_grad()
        loss_sum, count = causal_loss_sum(model, batch)
        loss = loss_sum / count
        losses.append(float(loss.detach()))
        lrs.append(opt.param_groups[0]["lr"])
        loss.backward()
        opt.step()
        sched.step()
    return model, losses, lrs


def curve():
    from transformers import AutoModelForCausalLM

    torch.use_deterministic_algorithms(True)
    out = os.path.join(OUT, "curve")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    base_dir = os.path.join(ENGINE_FIXTURES, "tiny_llama")
    base_rel = os.path.relpath(base_dir, ROOT)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    torch.manual_seed(CURVE["seed"])  # PEFT's init of A; B stays zero, as PEFT makes it
    peft_model = get_peft_model(model, LoraConfig(r=CURVE["rank"], lora_alpha=CURVE["alpha"], lora_dropout=0.0,
                                                  bias="none", target_modules=CURVE["targets"]))
    initial = os.path.join(out, "initial_adapter")
    save_adapter(peft_model, initial, base_rel)
    rng = np.random.default_rng(CURVE["seed"])
    tokens = [[int(x) for x in rng.integers(0, model.config.vocab_size, size=CURVE["length"])] for _ in range(CURVE["batch"])]
    batch = {"tokens": tokens, "targets": [s[1:] + [-1] for s in tokens]}
    write_json(os.path.join(out, "batch.json"), batch, compact=True)

    trained, losses, lrs = train_curve(torch.float64, initial, base_dir, batch)
    trained.to(torch.float32)
    save_adapter(trained, os.path.join(out, "final_adapter"), base_rel)
    _, losses32, _ = train_curve(torch.float32, initial, base_dir, batch)
    drift = max(abs(a - b) / abs(a) for a, b in zip(losses, losses32))
    write_json(os.path.join(out, "losses.json"), {
        "precision": "float64",
        "steps": CURVE["steps"], "warmup": CURVE["warmup"], "schedule": "linear", "lr": CURVE["lr"],
        "weight_decay": CURVE["weight_decay"], "betas": [0.9, 0.999], "eps": 1e-8,
        "rank": CURVE["rank"], "alpha": CURVE["alpha"], "target_modules": CURVE["targets"], "dropout": 0.0,
        "count": sum(1 for s in batch["targets"] for t in s if t != -1),
        "losses": losses, "lr_per_step": lrs,
        "losses_float32": losses32,
    })
    print("curve losses:", [round(x, 5) for x in losses])
    print("lr per step:", lrs)
    print(f"float32 torch vs float64, max relative loss difference over 20 steps: {drift:.2e}")


if __name__ == "__main__":
    parts = sys.argv[1:] or ["gradients", "optimizer", "curve"]
    os.makedirs(OUT, exist_ok=True)
    for part in parts:
        globals()[part]()
