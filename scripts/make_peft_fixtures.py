"""Builds Tests/Fixtures/peft/: a tiny Llama-shaped base model, PEFT LoRA adapters of it, and what PEFT 0.21 and
mergekit 0.1.5 compute from them, for the Swift tests of adapter merging, applying and extracting.

Run with the interpreter that has peft 0.21.2, torch, transformers and mergekit 0.1.5 installed (the CPU torch wheel
first, so pip does not pull CUDA's: see bench/bench_merge.py's venv), e.g.
    python3 -m venv mk && mk/bin/pip install "$TORCH_WHEEL" && mk/bin/pip install mergekit==0.1.5 peft==0.21.2
    mk/bin/python scripts/make_peft_fixtures.py
Re-runnable and deterministic: every random tensor is seeded, the outputs are rewritten whole, and JSON is written
with sorted keys (PEFT writes target_modules from a set).

Layout of Tests/Fixtures/peft/:
- base/            model.safetensors (float32) + config.json; base-bf16/ the same model in bfloat16
- finetuned/       base + a rank-3 change on every attention and MLP projection + small noise on v_proj
- adapters/a, b    rank 4 (alpha 8 and 16), different target modules; adapters/c rank 2 (alpha 4)
- combined/NAME/   add_weighted_adapter outputs (adapter_config.json + adapter_model.safetensors), NAME listed in
                   cases.json with its inputs, weights and parameters
- applied/f32, applied/bf16   merge_and_unload of adapter a on base (float32) and on base-bf16
- extracted/       mergekit-extract-lora of finetuned against base, --max-rank 4 (loaded back in PEFT here)
"""
import json
import os
import shutil
import subprocess
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = os.path.join(root, "Tests", "Fixtures", "peft")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
torch.use_deterministic_algorithms(True)

config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False, hidden_act="silu",
                     rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def sort_json(path):
    cfg = json.load(open(path))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["base_model_name_or_path"] = "base"  # PEFT writes the absolute path it loaded the base from
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def save_model(m, folder):
    m.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(folder, extra)
        if os.path.exists(p):
            os.remove(p)


def load_base(dtype=torch.float32):
    return LlamaForCausalLM.from_pretrained(os.path.join(out, "base"), dtype=dtype)


# The base: random weights, seeded.
torch.manual_seed(0)
base = LlamaForCausalLM(config).to(torch.float32)
with torch.no_grad():
    for n, p in base.named_parameters():
        p.copy_(1 + 0.1 * torch.randn_like(p) if n.endswith("norm.weight") else 0.2 * torch.randn_like(p))
save_model(base, os.path.join(out, "base"))
save_model(load_base(torch.bfloat16), os.path.join(out, "base-bf16"))

# A fine-tune: a rank-3 change on every projection, plus small full-rank noise on v_proj (so that a rank-4
# extraction is exact on most modules and an approximation on v_proj).
torch.manual_seed(1)
ft = load_base()
with torch.no_grad():
    for n, p in ft.named_parameters():
        if n.endswith("proj.weight"):
            u, v = torch.randn(p.shape[0], 3), torch.randn(3, p.shape[1])
            p.add_(0.05 * u @ v)
            if "v_proj" in n:
                p.add_(0.01 * torch.randn_like(p))
        elif n.endswith("norm.weight"):
            p.add_(0.01 * torch.randn_like(p))
save_model(ft, os.path.join(out, "finetuned"))

ADAPTERS = {
    "a": dict(seed=10, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]),
    "b": dict(seed=11, r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "up_proj"]),
    "c": dict(seed=12, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
}


def make_adapter(name, seed, **kw):
    torch.manual_seed(seed)
    pm = get_peft_model(load_base(), LoraConfig(lora_dropout=0.0, **kw))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(0.3 * torch.randn_like(p))  # PEFT starts B at zero: make ΔW visible
    folder = os.path.join(out, "adapters", name)
    pm.save_pretrained(folder)
    os.remove(os.path.join(folder, "README.md"))
    sort_json(os.path.join(folder, "adapter_config.json"))


for name, a in ADAPTERS.items():
    make_adapter(name, a["seed"], **{k: v for k, v in a.items() if k != "seed"})

# add_weighted_adapter: one case per combination PEFT computes deterministically (DARE draws a random mask).
CASES = [
    dict(name="cat_ab", adapters=["a", "b"], weights=[0.7, 0.5], combination="cat"),
    dict(name="cat_abc", adapters=["a", "b", "c"], weights=[1.0, -0.5, 2.0], combination="cat"),
    dict(name="svd_ac", adapters=["a", "c"], weights=[0.7, 0.5], combination="svd"),
    dict(name="svd_ab_r6", adapters=["a", "b"], weights=[1.0, 1.0], combination="svd", svd_rank=6),
    dict(name="linear_ab", adapters=["a", "b"], weights=[0.7, 0.5], combination="linear"),
    dict(name="ties_ab", adapters=["a", "b"], weights=[0.7, 0.5], combination="ties", density=0.5),
    dict(name="ties_svd_ab", adapters=["a", "b"], weights=[0.7, 0.5], combination="ties_svd", density=0.5),
    dict(name="ties_svd_ab_frequency", adapters=["a", "b"], weights=[1.0, -0.5], combination="ties_svd", density=0.6,
         majority_sign_method="frequency"),
    dict(name="magnitude_prune_ab", adapters=["a", "b"], weights=[0.7, 0.5], combination="magnitude_prune", density=0.5),
    dict(name="magnitude_prune_svd_ac", adapters=["a", "c"], weights=[0.7, 0.5], combination="magnitude_prune_svd",
         density=0.3),
]
for case in CASES:
    pm = PeftModel.from_pretrained(load_base(), os.path.join(out, "adapters", case["adapters"][0]),
                                   adapter_name=case["adapters"][0])
    for other in case["adapters"][1:]:
        pm.load_adapter(os.path.join(out, "adapters", other), adapter_name=other)
    kw = {k: case[k] for k in ("svd_rank", "density", "majority_sign_method") if k in case}
    pm.add_weighted_adapter(case["adapters"], case["weights"], "merged", combination_type=case["combination"], **kw)
    tmp = os.path.join(out, "tmp")
    pm.save_pretrained(tmp, selected_adapters=["merged"])
    folder = os.path.join(out, "combined", case["name"])
    shutil.move(os.path.join(tmp, "merged"), folder)
    shutil.rmtree(tmp)
    readme = os.path.join(folder, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    sort_json(os.path.join(folder, "adapter_config.json"))
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(CASES, f, indent=2, sort_keys=True)
    f.write("\n")

# merge_and_unload of adapter a, in float32 and in bfloat16.
for label, dtype, base_folder in (("f32", torch.float32, "base"), ("bf16", torch.bfloat16, "base-bf16")):
    m = LlamaForCausalLM.from_pretrained(os.path.join(out, base_folder), dtype=dtype)
    merged = PeftModel.from_pretrained(m, os.path.join(out, "adapters", "a")).merge_and_unload()
    save_model(merged, os.path.join(out, "applied", label))

# mergekit-extract-lora of the fine-tune, rank 4.
extracted = os.path.join(out, "extracted")
subprocess.run([sys.executable, "-m", "mergekit.scripts.extract_lora", "--model", os.path.join(out, "finetuned"),
                "--base-model", os.path.join(out, "base"), "--out-path", extracted, "--max-rank", "4"],
               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for extra in ("README.md",):
    p = os.path.join(extracted, extra)
    if os.path.exists(p):
        os.remove(p)
cfg_path = os.path.join(extracted, "adapter_config.json")
cfg = json.load(open(cfg_path))
cfg["base_model_name_or_path"] = "base"  # mergekit writes the absolute path it was given
for key in ("target_modules", "modules_to_save"):
    cfg[key] = sorted(cfg[key])
with open(cfg_path, "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
    f.write("\n")
# The extracted adapter loads in PEFT, and applying it gives the fine-tune's rank-4 approximation.
pm = PeftModel.from_pretrained(load_base(), extracted)
applied = pm.merge_and_unload().state_dict()
ft_sd = load_file(os.path.join(out, "finetuned", "model.safetensors"))
for n, t in ft_sd.items():
    if n.endswith("proj.weight") and "v_proj" not in n:
        assert torch.allclose(applied[n], t, atol=1e-5), n  # a rank-3 change: rank 4 is exact
print("wrote", out)
