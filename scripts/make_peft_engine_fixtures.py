#!/usr/bin/env python3
"""Generates the PEFT reference fixtures of the engine's unmerged-LoRA tests (Tests/TesseraEngineTests/Fixtures/peft_lora/).

For the tiny random Llama and GPT-2 of Tests/TesseraEngineTests/Fixtures (tiny_llama, tiny_gpt2), PEFT 0.21.2
wraps the model with a seeded LoRA adapter on every attention and MLP projection, saves it as PEFT saves adapters
(adapter_config.json + adapter_model.safetensors), and records the logits PEFT's unmerged forward computes for the
fixture's token ids. Nothing here is computed by Tessera.

  * Llama: rank 8, alpha 16, q/k/v/o/gate/up/down, with rank_pattern (down_proj: 4) and alpha_pattern (o_proj: 8).
  * GPT-2: rank 8, alpha 32, use_rslora, c_attn/c_proj/c_fc (Conv1D: fan_in_fan_out).

The factors are drawn from a seeded generator (PEFT initialises B to zero, which would make the adapter a no-op).

Run (PyPI only): a venv with torch (CPU), transformers 5.x, peft 0.21.2, safetensors:
    python scripts/make_peft_engine_fixtures.py
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "TesseraEngineTests", "Fixtures")
OUT = os.path.join(FIXTURES, "peft_lora")

CASES = {
    "tiny_llama": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                       rank_pattern={"down_proj": 4}, alpha_pattern={"o_proj": 8}),
    "tiny_gpt2": dict(r=8, lora_alpha=32, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, use_rslora=True),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for fixture, options in CASES.items():
        base_dir = os.path.join(FIXTURES, fixture)
        ids = load_file(os.path.join(base_dir, "expected_logits.safetensors"))["input_ids"].to(torch.long)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model.eval()
        config = LoraConfig(lora_dropout=0.0, bias="none", **options)
        peft_model = get_peft_model(model, config)
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
        peft_model.eval()
        with torch.no_grad():
            logits = peft_model(ids.unsqueeze(0)).logits[0].contiguous()
        adapter_dir = os.path.join(OUT, fixture)
        peft_model.save_pretrained(adapter_dir)
        # The README PEFT writes beside the adapter is boilerplate; the fixture keeps only what is read.
        readme = os.path.join(adapter_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        # The base as a path inside the repository, not this machine's absolute path.
        config_path = os.path.join(adapter_dir, "adapter_config.json")
        with open(config_path) as f:
            saved = json.load(f)
        saved["base_model_name_or_path"] = os.path.relpath(base_dir, ROOT)
        with open(config_path, "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
            f.write("\n")
        save_file({"input_ids": ids.to(torch.float32), "logits": logits}, os.path.join(OUT, fixture + "_peft_logits.safetensors"))
        with peft_model.disable_adapter():
            with torch.no_grad():
                plain = peft_model(ids.unsqueeze(0)).logits[0]
        print(fixture, "max |logit|", float(logits.abs().max()), "max change from base", float((logits - plain).abs().max()))


if __name__ == "__main__":
    main()
