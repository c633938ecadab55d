#!/usr/bin/env python3
"""Cost of routed evaluation (issue 14), on SmolLM2-135M-Instruct (the Q4_1 GGUF):

- a library of 10 rank-8 experts on q, k, v, o of all 30 layers (seeded values, PEFT layout, written here and added
  with `tessera experts add`);
- Arrow prototypes for the 10 experts (`tessera route build --method arrow`; target <= 2 s of computation);
- 512-token prefill and 32-token decode with the library routed top-2 by Arrow (merge-after), against the base model
  alone, in the same run, interleaved, best of N each (target: routed / base <= 1.3 for both);
- with --mttl PYTHON (an interpreter where mttl 1.0.2, torch and transformers import): mttl's own routed forward in
  PyTorch on the same library (its Arrow selector over the same adapters) against transformers' base forward, the
  same 512-token prefill, best of N.

    python3 bench/bench_routing.py [--tessera .build/release/tessera] [--runs 3] [--threads 2] [--mttl PYTHON]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_adapter import DEFAULT_MODEL, HIDDEN, KV_DIM, LAYERS, Q_DIM, write_safetensors  # noqa: E402

import random  # noqa: E402
from array import array  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERTS = 10


def write_expert(directory, seed, rank=8):
    """A rank-8 expert on the attention projections (what `tessera train lora` adapts by default)."""
    rng = random.Random(seed)
    tensors = []
    for i in range(LAYERS):
        p = f"model.layers.{i}.self_attn."
        for name, d_in, d_out in [(p + "q_proj", HIDDEN, Q_DIM), (p + "k_proj", HIDDEN, KV_DIM), (p + "v_proj", HIDDEN, KV_DIM),
                                  (p + "o_proj", Q_DIM, HIDDEN)]:
            a = array("f", (rng.gauss(0, 0.05) for _ in range(rank * d_in)))
            b = array("f", (rng.gauss(0, 0.02) for _ in range(d_out * rank)))
            tensors.append((f"base_model.model.{name}.lora_A.weight", [rank, d_in], a))
            tensors.append((f"base_model.model.{name}.lora_B.weight", [d_out, rank], b))
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "adapter_model.safetensors"), tensors)
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
                   "base_model_name_or_path": "smollm2", "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, f)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def bench(tessera, model, threads, library=None):
    cmd = [tessera, "bench-engine", model, "--prefill", "512", "--decode", "32", "--threads", str(threads)]
    if library:
        cmd += ["--experts", library, "--router", "arrow", "--top-k", "2"]
    return json.loads(run(cmd).strip().splitlines()[-1])


MTTL_SCRIPT = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM
from mttl.models.library.expert_library import LocalExpertLibrary
folder, library, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
tokens = torch.tensor([[(i * 7919) % (49152 - 200) + 100 for i in range(512)]])
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
def best(m):
    t = []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter(); m(tokens); t.append(time.perf_counter() - t0)
    return min(t)
base = best(model)
print(json.dumps({"torch_base_prefill_s": base}))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tessera", default=os.path.join(ROOT, ".build", "release", "tessera"))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mttl", help="a Python interpreter with mttl 1.0.2, torch and transformers")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="tessera-bench-routing-") as tmp:
        run([args.tessera, "import", args.model, "-o", "smollm2"], cwd=tmp)
        for e in range(EXPERTS):
            write_expert(os.path.join(tmp, "adapters", f"e{e}"), seed=e)
            run([args.tessera, "experts", "add", "lib", f"adapters/e{e}", "--base", "smollm2", "--task", f"task{e}"], cwd=tmp)
        built = json.loads(run([args.tessera, "route", "build", "--method", "arrow", "--experts", "lib", "-o", "arrow",
                                "--json", "--threads", str(args.threads)], cwd=tmp))
        proto = built["prototype_seconds"]
        print(f"library: {EXPERTS} experts, rank 8 on q/k/v/o of {LAYERS} layers; model {os.path.basename(args.model)}, {args.threads} threads")
        print(f"Arrow prototypes for {EXPERTS} experts ({built['tensors']} modules): {proto:.3f} s (target <= 2 s) "
              f"{'PASS' if proto <= 2 else 'FAIL'}; route build total {built['seconds']:.2f} s")
        ok &= proto <= 2
        base, routed = [], []
        for _ in range(args.runs):  # interleaved, so load on the machine affects both alike
            base.append(bench(args.tessera, args.model, args.threads))
            routed.append(bench(args.tessera, args.model, args.threads, os.path.join(tmp, "lib")))
        best = lambda runs, key: max(r[key] for r in runs)
        pb, pr = best(base, "prefill_tokens_per_s"), best(routed, "prefill_tokens_per_s")
        db, dr = best(base, "decode_tokens_per_s"), best(routed, "decode_tokens_per_s")
        for label, b, r in [("prefill 512 tokens/s", pb, pr), ("decode tokens/s     ", db, dr)]:
            ratio = b / r
            ok &= ratio <= 1.3
            print(f"{label}  base {b:8.1f}   routed (10 experts, Arrow top-2) {r:8.1f}   time ratio {ratio:.3f} (target <= 1.3) "
                  f"{'PASS' if ratio <= 1.3 else 'FAIL'}")
        result = {"experts": EXPERTS, "prototype_seconds": proto, "prefill_base": pb, "prefill_routed": pr, "prefill_time_ratio": pb / pr,
                  "decode_base": db, "decode_routed": dr, "decode_time_ratio": db / dr}
        if args.mttl:
            try:
                out = run([args.mttl, "-c", MTTL_SCRIPT, os.path.join(tmp, "smollm2"), os.path.join(tmp, "lib"), str(args.runs), str(args.threads)])
                result.update(json.loads(out.strip().splitlines()[-1]))
                print(f"PyTorch base prefill 512: {result['torch_base_prefill_s']:.3f} s; Tessera base {512 / pb:.3f} s, routed {512 / pr:.3f} s")
            except subprocess.CalledProcessError as e:
                print(f"mttl side failed: {e.stderr.strip().splitlines()[-1] if e.stderr else e}")
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
