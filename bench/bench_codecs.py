#!/usr/bin/env python3
"""The storage targets of issue 12's encodings, Tessera vs plain git-lfs, on GPT-2-small-shaped checkpoints
(bench/make_checkpoint.py's base, 124M parameters, 498 MB in float32):

  finetune   every tensor + scale*|w|*N(0,1) (make_checkpoint.py finetune, scale 1e-3)   target: growth <= 0.50x raw
  lowrank    a rank-8 B.A merged into the 24 attention matrices (c_attn, c_proj), no hint target: growth <= 5 MiB
  sparse     1% of the entries of 10 tensors (h.0-9 mlp.c_fc) changed                 target: <= 0.03x those tensors
  (each also in bf16 with --bf16)

For each scenario, in a fresh repository per tool: add + commit the base, then time `git add` of the changed file,
measure the store's growth, commit, and time the checkout of the base version (checked byte-identical) and back.
Usage: bench/bench_codecs.py [--workdir DIR] [--bf16] [--only NAME[,NAME]] [--json OUT]
This is the scenario code meant for bench_git.py's storage part (which the chains work owns).
"""
import argparse, json, os, shutil, subprocess, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_checkpoint as mc  # noqa: E402
from bench_git import Tessera, GitLFS, base_env, run  # noqa: E402

def lowrank(src, out, rank=8, seed=1):
    tensors, meta = mc.load(src)
    rng = np.random.default_rng(seed)
    for i in range(12):
        for part in ["attn.c_attn.weight", "attn.c_proj.weight"]:
            n = f"h.{i}.{part}"
            w = mc.array(tensors[n])
            b = rng.standard_normal((w.shape[0], rank), dtype=np.float32) * np.float32(0.01)
            a = rng.standard_normal((rank, w.shape[1]), dtype=np.float32) * np.float32(0.05)
            tensors[n] = (tensors[n][0], tensors[n][1], mc.encode(w + b @ a, tensors[n][0]))
    mc.save(out, tensors, meta)

SPARSE_TENSORS = [f"h.{i}.mlp.c_fc.weight" for i in range(10)]

def sparse(src, out, fraction=0.01, seed=2):
    tensors, meta = mc.load(src)
    rng = np.random.default_rng(seed)
    for n in SPARSE_TENSORS:
        w = mc.array(tensors[n]).copy().reshape(-1)
        k = int(w.size * fraction)
        at = rng.choice(w.size, size=k, replace=False)
        w[at] += rng.standard_normal(k, dtype=np.float32) * np.float32(0.02)
        tensors[n] = (tensors[n][0], tensors[n][1], mc.encode(w.reshape(tensors[n][1]), tensors[n][0]))
    mc.save(out, tensors, meta)

def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            fp = os.path.join(d, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total

def scenario(tool, work, label, base, changed):
    home = os.path.join(work, f"home-{tool.name}")
    os.makedirs(home, exist_ok=True)
    env = base_env(home)
    repo = os.path.join(work, f"repo-{tool.name}-{label}")
    shutil.rmtree(repo, ignore_errors=True)
    tool.setup(repo, env)
    path = os.path.join(repo, "model.safetensors")
    shutil.copyfile(base, path)
    run("git add model.safetensors && git commit -qm base", repo, env)
    before = tool.store(repo)
    shutil.copyfile(changed, path)
    add_s, add_cpu, _, _ = run("git add model.safetensors", repo, env)
    growth = tool.store(repo) - before
    run("git commit -qm changed", repo, env)
    os.remove(path)
    co_old, co_old_cpu, _, _ = run("git checkout -q HEAD~1 -- model.safetensors", repo, env)
    exact_old = subprocess.run(["cmp", "-s", path, base]).returncode == 0
    os.remove(path)
    co_new, co_new_cpu, _, _ = run("git checkout -q HEAD -- model.safetensors", repo, env)
    exact_new = subprocess.run(["cmp", "-s", path, changed]).returncode == 0
    encodings = {}
    if tool.name == "tessera":
        manifest = subprocess.run("git show HEAD:model.safetensors", cwd=repo, env=env, shell=True, stdout=subprocess.PIPE, text=True).stdout
        for line in manifest.splitlines():
            if line.startswith("tensor "):
                enc = line.split()[4].split("@")[0]
                encodings[enc] = encodings.get(enc, 0) + 1
    shutil.rmtree(repo, ignore_errors=True)
    return dict(add_s=add_s, add_cpu_s=add_cpu, growth=growth, checkout_old_s=co_old, checkout_new_s=co_new,
                checkout_old_cpu_s=co_old_cpu, checkout_new_cpu_s=co_new_cpu,
                exact=exact_old and exact_new, encodings=encodings)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/tessera-bench-codecs")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--only", default="finetune,lowrank,sparse")
    ap.add_argument("--tools", default="tessera,git-lfs")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    dt = "bf16" if args.bf16 else "f32"
    base = os.path.join(work, f"base-{dt}.safetensors")
    if not os.path.exists(base):
        subprocess.run([sys.executable, os.path.join(HERE, "make_checkpoint.py"), "base", base, "--dtype", dt], check=True)
    raw = os.path.getsize(base)
    files = {}
    for name in args.only.split(","):
        out = os.path.join(work, f"{name}-{dt}.safetensors")
        if not os.path.exists(out):
            if name == "finetune":
                subprocess.run([sys.executable, os.path.join(HERE, "make_checkpoint.py"), "finetune", base, out, "--scale", "1e-3"], check=True)
            elif name == "lowrank":
                lowrank(base, out)
            elif name == "sparse":
                sparse(base, out)
        files[name] = out
    tensors, _ = mc.load(base)
    sparse_raw = sum(len(tensors[n][2]) for n in SPARSE_TENSORS)
    tools = [t for t in [Tessera(), GitLFS()] if t.name in args.tools.split(",")]
    results = {}
    for name, changed in files.items():
        for tool in tools:
            r = scenario(tool, work, name, base, changed)
            results[f"{name}/{tool.name}"] = r
            extra = ""
            if name == "finetune": extra = f"growth/raw {r['growth'] / raw:.3f} (target <= 0.50)"
            if name == "lowrank": extra = f"growth {r['growth'] / 2**20:.2f} MiB (target <= 5)"
            if name == "sparse": extra = f"growth/changed tensors' raw {r['growth'] / sparse_raw:.4f} (target <= 0.03)"
            print(f"{dt} {name:8s} {tool.name:8s} add {r['add_s']:.2f}s (cpu {r['add_cpu_s']:.2f}s) checkout old {r['checkout_old_s']:.2f}s "
                  f"(cpu {r['checkout_old_cpu_s']:.2f}s) new {r['checkout_new_s']:.2f}s (cpu {r['checkout_new_cpu_s']:.2f}s) growth {r['growth']:,} B exact={r['exact']} {extra} {r['encodings'] or ''}", flush=True)
            # Throughput over the whole file (git and the filter together), by wall time and by CPU time (the CPU
            # figure is the one that survives a loaded machine).
            mbs = lambda s: raw / s / 1e6 if s > 0 else float("inf")
            print(f"{dt} {name:8s} {tool.name:8s} MB/s: add {mbs(r['add_s']):.0f} wall, {mbs(r['add_cpu_s']):.0f} cpu; "
                  f"checkout new {mbs(r['checkout_new_s']):.0f} wall, {mbs(r['checkout_new_cpu_s']):.0f} cpu", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)

if __name__ == "__main__":
    main()
