#!/usr/bin/env python3
"""Cost of routed evaluation (issue 14), on SmolLM2-135M-Instruct (the Q4_1 GGUF):

- a library of 10 rank-8 experts on q, k, v, o of all 30 layers (seeded values, PEFT layout, written here and added
  with `tessera experts add`);
- Arrow prototypes for the 10 experts (`tessera route build --method arrow`; target <= 2 s of computation);
- 512-token prefill and 32-token decode with the library routed top-2 by Arrow (merge-after), against the base model
  alone, in the same run, interleaved, best of N each (target: routed / base <= 1.3 for both);
- with --mttl PYTHON (an interpreter where mttl 1.0.2, torch and transformers import): mttl's own routed forward in
  PyTorch on the same library (its Arrow selector over the same adapters, top-2, T = 1, merge-after; MTTL_SCRIPT says
  how it is set up and what had to be worked around) against transformers' base forward, the same 512-token prefill,
  best of N, printed beside Tessera's ratios; mttl's prototypes against Tessera's router file; and an agreement check:
  the NLL of one 24-token document, base and routed, from PyTorch/mttl and from `tessera eval`.

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
"""mttl 1.0.2's own routed forward (PyTorch, CPU) on the Tessera library; run by bench_routing.py --mttl.

argv: smollm2 folder, Tessera library folder (PEFT folders eN/), runs, threads, scratch folder, Tessera's Arrow
router.safetensors, agreement prompt text. Prints one JSON line.

- Experts: mttl's own PEFT loader (mttl.models.library.peft.load_expert_from_peft_checkpoint; its snapshot_download
  is replaced by the identity so it reads the local folder), which stores lora_a = A_peft^T, lora_b = B_peft^T,
  scaling lora_alpha / r; added in name order to a LocalExpertLibrary.
- Prototypes: mttl's ArrowTransform (ab_only=True, scale=False, tie_params "default": none tied here).
- Selector: ArrowSelectorConfig(top_k=2, router_temp=1.0, input_norm_fn="id", proto_norm_fn="id", proto_init="arrow",
  router_granularity="*" (one selector per module), selector_logging=False), so logits |<x, v>| / 1 and a softmax
  over the two kept. mttl 1.0.2 does not pass SelectorConfig.lora_merge_after to the LoRA containers (they default
  to merge-before), so lora_merge_after=True is set on every LoRAExpertContainer after the experts are added.
- The installed mttl needs triton.ops (gone in triton 3); empty placeholders for its block-sparse kernels were put in
  that venv's triton/ops: only mttl's sparse-mask modifiers use them, nothing here. Its wheel declares no
  dependencies; matplotlib had to be installed there too (mttl.models.monitors imports it).
- mttl.dataloader.ni_metrics fetches the gpt2 tokenizer from the hub when imported (through the Arrow transform's
  imports); with no network it is replaced by a stub (its Rouge metrics are not used).
- mttl replaces torch.nn.functional.scaled_dot_product_attention by a packed-sequence wrapper without enable_gqa,
  which transformers 5 passes for SmolLM2's grouped-query attention; torch's own is put back (no packing here).
- Importing mttl sets torch's float32 matmul precision to "high"; it is put back to "highest" (exact float32).
"""
import json, logging, os, sys, time, types

os.environ["HF_HUB_OFFLINE"] = "1"
import torch


def _not_here(*args, **kwargs):
    raise RuntimeError("NI metrics are not available in this bench")


# mttl.dataloader.ni_metrics downloads the gpt2 tokenizer at import time (for NI Rouge metrics, unused here) and the
# machine has no network: the Arrow library transform imports it through mttl.evaluators, so it is stubbed.
import mttl.dataloader  # noqa: E402

_ni = types.ModuleType("mttl.dataloader.ni_metrics")
_ni.compute_metrics = _ni.compute_grouped_metrics = _not_here
sys.modules["mttl.dataloader.ni_metrics"] = _ni

import mttl.models.library.peft as mttl_peft
from mttl.models.containers.lora_containers import LoRAExpertContainer
from mttl.models.containers.selectors.arrow_selector import ArrowSelectorConfig, compute_arrow_embeddings
from mttl.models.expert_model import MultiExpertModel, MultiExpertModelConfig
from mttl.models.library.expert_library import LocalExpertLibrary
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

# mttl replaces torch's scaled_dot_product_attention by a wrapper for packed sequences that lacks the enable_gqa
# argument transformers 5 passes for grouped-query attention (SmolLM2): put torch's own back (no packing here).
torch.nn.functional.scaled_dot_product_attention = torch.nn.functional._default_scaled_dot_product_attention
logging.getLogger("mttl").setLevel(logging.ERROR)  # its SVD alignment warnings, one per module

folder, library, runs, threads, scratch, tessera_router, prompt = sys.argv[1:8]
runs, threads = int(runs), int(threads)
torch.set_num_threads(threads)
torch.set_float32_matmul_precision("highest")
tokens = torch.tensor([[(i * 7919) % (49152 - 200) + 100 for i in range(512)]])


def load():
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


# mttl's PEFT loader, reading the local folder instead of a hub snapshot.
mttl_peft.snapshot_download = lambda path: path
names = sorted(n for n in os.listdir(library) if os.path.isfile(os.path.join(library, n, "adapter_config.json")))
lib = LocalExpertLibrary("local://" + os.path.join(scratch, "mttl-library"), create=True)
for name in names:
    lib.add_expert(mttl_peft.load_expert_from_peft_checkpoint(os.path.join(library, name), expert_name=name))
t0 = time.perf_counter()
save_name = compute_arrow_embeddings(lib, selector_data_id="arrow-bench", recompute_prototypes=True)
arrow_seconds = time.perf_counter() - t0

selector = ArrowSelectorConfig(top_k=2, router_temp=1.0, proto_init="arrow", input_norm_fn="id", proto_norm_fn="id",
                               router_granularity="*", selector_logging=False, lora_merge_after=True,
                               library_id=lib.uri, selector_data_id=save_name)
routed = MultiExpertModel(MultiExpertModelConfig(base_model=None, selector_config=selector), model_object=load())
for name in names:
    routed.add_expert_instance(lib[name])
containers = [m for m in routed.modules() if isinstance(m, LoRAExpertContainer)]
for c in containers:
    c.lora_merge_after = True
routed.eval()
base = load()

# The prototypes mttl routes with against Tessera's (router.safetensors: <module>.arrow_prototype [experts, d_in]).
tessera_prototypes = load_file(tessera_router)
cosines, missing = [], 0
for c in containers:  # rows: experts in name order on both sides
    key = c.layer_name + ".arrow_prototype"
    if key not in tessera_prototypes:
        missing += 1
        continue
    mttl_rows = c.selector.prototypes.detach().double()
    tessera_rows = tessera_prototypes[key].double()
    cos = (mttl_rows * tessera_rows).sum(1).abs() / (mttl_rows.norm(dim=1) * tessera_rows.norm(dim=1))
    cosines += cos.tolist()


def run_base(ids):
    return base(input_ids=ids).logits


def run_routed(ids):
    return routed(input_ids=ids).logits


def timed(f):
    with torch.no_grad():
        t0 = time.perf_counter()
        f(tokens)
        return time.perf_counter() - t0


def nll(f, ids):
    with torch.no_grad():
        logits = f(ids)[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return -logp.gather(1, ids[0, 1:, None]).mean().item(), logits[-1]


base_s, routed_s = [], []
for _ in range(runs):  # interleaved, so load on the machine affects both alike
    base_s.append(timed(run_base))
    routed_s.append(timed(run_routed))

tok = AutoTokenizer.from_pretrained(folder)
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
base_nll, base_last = nll(run_base, ids)
routed_nll, routed_last = nll(run_routed, ids)
print(json.dumps({
    "torch_base_prefill_s": min(base_s), "mttl_routed_prefill_s": min(routed_s), "mttl_arrow_seconds": arrow_seconds,
    "mttl_experts": len(names), "mttl_routed_modules": len(containers),
    "prototype_abs_cos_min": min(cosines) if cosines else None, "prototype_pairs": len(cosines),
    "prototype_modules_missing": missing,
    "prompt_token_ids": ids[0].tolist(), "torch_base_nll": base_nll, "mttl_routed_nll": routed_nll,
    "mttl_last_logits_max_abs_routed_minus_base": (routed_last - base_last).abs().max().item(),
    "mttl_last_argmax_base": int(base_last.argmax()), "mttl_last_argmax_routed": int(routed_last.argmax()),
}))
'''


AGREEMENT_TEXT = ("Version control for model weights keeps every tensor of a checkpoint as an object, so two commits share "
                  "what did not change.")  # 24 tokens with SmolLM2's tokenizer, no BOS


def tessera_nll(tessera, tmp, task, *routing):
    out = json.loads(run([tessera, "eval", "smollm2", *routing, "--task", task, "--json"], cwd=tmp))
    return next(r["value"] for r in out["results"] if r["metric"] == "nll")


def mttl_side(args, tmp, tessera_base_tps, tessera_routed_tps):
    """mttl's routed forward (MTTL_SCRIPT) beside Tessera's: prefill times and ratios, then the agreement check: the
    NLL of one short document, base and routed, from PyTorch/mttl and from `tessera eval` (which has no logits command;
    equal base NLLs also say both tokenised the text alike)."""
    task = os.path.join(tmp, "agreement.jsonl")
    with open(task, "w") as f:
        f.write(json.dumps({"tessera_task": 1, "type": "perplexity", "name": "agreement"}) + "\n")
        f.write(json.dumps({"text": AGREEMENT_TEXT}) + "\n")
    try:
        out = run([args.mttl, "-c", MTTL_SCRIPT, os.path.join(tmp, "smollm2"), os.path.join(tmp, "lib"), str(args.runs),
                   str(args.threads), tmp, os.path.join(tmp, "arrow", "router.safetensors"), AGREEMENT_TEXT])
    except subprocess.CalledProcessError as e:
        print(f"mttl side failed: {e.stderr.strip().splitlines()[-1] if e.stderr else e}")
        return {}
    m = json.loads(out.strip().splitlines()[-1])
    tb, tr = 512 / tessera_base_tps, 512 / tessera_routed_tps
    tb_nll = tessera_nll(args.tessera, tmp, task)
    tr_nll = tessera_nll(args.tessera, tmp, task, "--experts", "lib", "--router", "arrow", "--top-k", "2", "--mixing", "merge-after")
    pt, mr = m["torch_base_prefill_s"], m["mttl_routed_prefill_s"]
    print(f"mttl 1.0.2 (PyTorch {args.threads} threads, float32; Arrow selector top-2, T=1, merge-after): "
          f"{m['mttl_experts']} experts on {m['mttl_routed_modules']} modules; its Arrow transform {m['mttl_arrow_seconds']:.2f} s")
    print(f"prefill 512 seconds     torch base {pt:8.3f}   mttl routed    {mr:8.3f}   time ratio mttl routed / torch base     {mr / pt:.3f}")
    print(f"prefill 512 seconds     Tessera base {tb:6.3f}   Tessera routed {tr:8.3f}   time ratio Tessera routed / Tessera base {tr / tb:.3f}")
    print(f"time ratio Tessera routed / mttl routed {tr / mr:.3f}; Tessera base / torch base {tb / pt:.3f}")
    print(f"Arrow prototypes, mttl vs Tessera: min |cos| {m['prototype_abs_cos_min']:.9f} over {m['prototype_pairs']} "
          f"(module, expert) pairs, {m['prototype_modules_missing']} modules missing in Tessera's router")
    n = len(m["prompt_token_ids"])
    print(f"agreement, {n}-token document (NLL of {n - 1} predicted tokens, nats):")
    print(f"  base    torch {m['torch_base_nll']:.7f}   Tessera {tb_nll:.7f}   difference {tb_nll - m['torch_base_nll']:+.2e}")
    print(f"  routed  mttl  {m['mttl_routed_nll']:.7f}   Tessera {tr_nll:.7f}   difference {tr_nll - m['mttl_routed_nll']:+.2e}")
    print(f"  mttl's last-position logits: routing moves them by up to {m['mttl_last_logits_max_abs_routed_minus_base']:.4f} "
          f"(argmax {m['mttl_last_argmax_base']} base, {m['mttl_last_argmax_routed']} routed)")
    print(f"  routing moves the NLL by {m['mttl_routed_nll'] - m['torch_base_nll']:+.6f} in mttl, {tr_nll - tb_nll:+.6f} in Tessera")
    return {"torch_base_prefill_s": pt, "mttl_routed_prefill_s": mr, "mttl_time_ratio": mr / pt, "tessera_base_prefill_s": tb,
            "tessera_routed_prefill_s": tr, "tessera_routed_over_mttl_routed": tr / mr, "mttl_arrow_seconds": m["mttl_arrow_seconds"],
            "prototype_abs_cos_min": m["prototype_abs_cos_min"], "agreement_tokens": n, "torch_base_nll": m["torch_base_nll"],
            "tessera_base_nll": tb_nll, "mttl_routed_nll": m["mttl_routed_nll"], "tessera_routed_nll": tr_nll}


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
            result.update(mttl_side(args, tmp, pb, pr))
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
