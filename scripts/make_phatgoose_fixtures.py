#!/usr/bin/env python3
"""Builds Tests/Fixtures/phatgoose/: what PyTorch computes for PhatGOOSE gate training (issue 14), for the Swift tests
to compare against. Nothing here is computed by Tessera. Tests/Fixtures/phatgoose/README.md states the format.

Run with an interpreter that has torch (CPU wheel), transformers 5.x, peft 0.21.2 and safetensors (the same
environment as scripts/make_training_fixtures.py), e.g.
    /work/wt-engine10/bench/out/venv-mergekit/bin/python scripts/make_phatgoose_fixtures.py
Re-runnable and deterministic: every random tensor comes from a seeded generator, the folder is rewritten whole.

On the engine's tiny Llama (Tests/TesseraEngineTests/Fixtures/tiny_llama, read from there, not copied) with a seeded
PEFT adapter on every linear layer (B non-zero), every LoRA layer's forward is replaced by
    y = base(x) + sigmoid(x . g) * scaling * B(A(x))        (g [d_in] per module, one scalar per token)
- gradients: random non-zero gates; the loss sum over a two-sequence batch and d(loss sum)/dg for every module, by
  autograd in float64 from the float32 weights (base and adapter frozen).
- run: gates from zero, 10 steps of torch.optim.AdamW (weight decay 0) under transformers'
  get_linear_schedule_with_warmup (warm-up int(0.1 * 10) = 1 step), every step on the whole data set (4 sequences,
  mean loss over the counted targets); the loss of each step and the final gates, in float64.
"""
import json
import math
import os
import shutil
import struct

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "Tests", "TesseraEngineTests", "Fixtures", "tiny_llama")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "phatgoose")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
B_STD = 0.05
GATE_STD = 0.3
RUN = dict(steps=10, lr=1e-2, warmup_ratio=0.1, sequences=4)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")


def module_name(peft_name):
    """PEFT's named_modules() name of a LoRA layer -> the module name the adapter file uses (no base_model.model.)."""
    assert peft_name.startswith("base_model.model."), peft_name
    return peft_name[len("base_model.model."):]


def gated_forward(layer):
    def forward(x, *args, **kwargs):
        result = layer.base_layer(x)
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        delta = b(a(x.to(a.weight.dtype))) * layer.scaling["default"]
        sigma = torch.sigmoid(x @ layer.phatgoose_gate)
        return result + sigma.unsqueeze(-1) * delta
    return forward


def gated_model(seed_b, adapter_folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager").eval()
    torch.manual_seed(100)  # PEFT's kaiming-uniform init of A draws from the global generator
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=TARGETS)
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed_b)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if ".lora_B." in name:
                p.copy_(B_STD * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    save_adapter(peft_model, adapter_folder)  # before the gates exist: the adapter holds A and B only
    layers = {}
    for name, m in peft_model.named_modules():
        if isinstance(m, LoraLinear):
            m.phatgoose_gate = torch.nn.Parameter(torch.zeros(m.in_features, dtype=torch.float32))
            m.forward = gated_forward(m)
            layers[module_name(name)] = m
    return peft_model, layers


def save_adapter(peft_model, folder):
    peft_model.save_pretrained(folder, safe_serialization=True)
    readme = os.path.join(folder, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    path = os.path.join(folder, "adapter_config.json")
    cfg = json.load(open(path))
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = os.path.relpath(BASE, ROOT)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def sequences(vocab, lengths, seed):
    """Token lists with targets = next token, -1 at the end; the second sequence's first 3 targets ignored."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        tokens = [int(x) for x in rng.integers(0, vocab, size=n)]
        targets = tokens[1:] + [-1]
        if i == 1:
            targets[:3] = [-1, -1, -1]
        out.append({"tokens": tokens, "targets": targets})
    return out


def loss_sum(model, batch):
    t = max(len(s["tokens"]) for s in batch)
    ids = torch.tensor([s["tokens"] + [0] * (t - len(s["tokens"])) for s in batch], dtype=torch.long)
    mask = torch.tensor([[1] * len(s["tokens"]) + [0] * (t - len(s["tokens"])) for s in batch], dtype=torch.long)
    targets = torch.tensor([s["targets"] + [-1] * (t - len(s["targets"])) for s in batch], dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).to(torch.float64), targets.reshape(-1),
                                             ignore_index=-1, reduction="sum")
    return loss, int((targets != -1).sum())


def gates_file(path, gates, metadata):
    """The gates format (README.md) written here byte for byte: header JSON with sorted keys, F32 little-endian."""
    header, offset, data = {"__metadata__": metadata}, 0, b""
    for name in sorted(gates):
        values = np.asarray(gates[name], dtype="<f4")
        header[name + ".gate"] = {"dtype": "F32", "shape": [int(values.size)], "data_offsets": [offset, offset + values.nbytes]}
        offset += values.nbytes
        data += values.tobytes()
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def save_tensors(tensors, path):
    save_file(tensors, path, metadata={"source": os.path.relpath(os.path.join(BASE, "model.safetensors"), ROOT)})
    os.chmod(path, 0o644)


def main():
    torch.use_deterministic_algorithms(True)
    if os.path.exists(OUT):
        for entry in os.listdir(OUT):
            if entry != "README.md":
                p = os.path.join(OUT, entry)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(OUT, exist_ok=True)
    model, layers = gated_model(200, os.path.join(OUT, "adapter"))
    vocab = model.get_base_model().config.vocab_size
    for p in model.parameters():
        p.requires_grad_(False)

    # Gradients at random non-zero gates, float64.
    g = torch.Generator().manual_seed(400)
    gates = {name: (GATE_STD * torch.randn(m.in_features, generator=g, dtype=torch.float64)).to(torch.float32)
             for name, m in sorted(layers.items())}
    gates_file(os.path.join(OUT, "gates.safetensors"), {n: v.numpy() for n, v in gates.items()},
               {"format": "tessera-phatgoose-gates", "steps": "0", "lr": "0"})
    batch = sequences(vocab, [9, 6], 300)
    write_json(os.path.join(OUT, "batch.json"), batch)
    model.to(torch.float64)
    for name, m in layers.items():
        m.phatgoose_gate = torch.nn.Parameter(gates[name].to(torch.float64))
    loss, count = loss_sum(model, batch)
    loss.backward()
    expected = {"loss_sum": torch.tensor([float(loss)], dtype=torch.float64), "count": torch.tensor([count], dtype=torch.int64)}
    for name, m in sorted(layers.items()):
        assert float(m.phatgoose_gate.grad.abs().max()) > 0, name
        expected["grad." + name + ".gate"] = m.phatgoose_gate.grad.to(torch.float32).contiguous()
    save_tensors(expected, os.path.join(OUT, "expected.safetensors"))

    # A short run from zero gates.
    data = sequences(vocab, [12, 8, 10, 7], 500)
    write_json(os.path.join(OUT, "run_data.json"), data)
    params = []
    for name, m in sorted(layers.items()):
        m.phatgoose_gate = torch.nn.Parameter(torch.zeros(m.in_features, dtype=torch.float64))
        params.append(m.phatgoose_gate)
    warmup = int(RUN["warmup_ratio"] * RUN["steps"])
    optimizer = torch.optim.AdamW(params, lr=RUN["lr"], weight_decay=0.0, eps=1e-8)
    from transformers import get_linear_schedule_with_warmup

    schedule = get_linear_schedule_with_warmup(optimizer, warmup, RUN["steps"])
    losses = []
    for _ in range(RUN["steps"]):
        optimizer.zero_grad()
        total, counted = loss_sum(model, data)
        (total / counted).backward()
        losses.append(float(total) / counted)
        optimizer.step()
        schedule.step()
    run = {"losses": torch.tensor(losses, dtype=torch.float64)}
    for name, m in sorted(layers.items()):
        run[name + ".gate"] = m.phatgoose_gate.detach().to(torch.float32).contiguous()
    save_tensors(run, os.path.join(OUT, "run_expected.safetensors"))
    write_json(os.path.join(OUT, "run_settings.json"), dict(RUN, warmup_steps=warmup, weight_decay=0.0, eps=1e-8, beta1=0.9, beta2=0.999))
    print(f"loss_sum {float(loss):.6f} over {count}; run losses {losses[0]:.6f} -> {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
