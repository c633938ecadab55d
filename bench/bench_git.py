#!/usr/bin/env python3
"""Tessera vs plain git-lfs (and git-theta 0.2.0 where it installs), side by side in one run, on a
GPT-2-small-shaped checkpoint (124M float32 parameters, 148 tensors, 498 MB).

Measures: first add; add after 2 tensors changed; add after every tensor changed slightly (a fine-tune); checkout of
an older version; `git status`; store bytes after each commit; peak RSS. Prints each number and the ratios against
the targets of issue 2.
`--baseline BIN` measures another tessera binary (the previous release) in the same run, interleaved with this one
(`--repeat` times each, default 3, best time kept), and checks that no timing got worse by more than 5% and that the
store holds the same bytes.
Usage: bench/bench_git.py [--workdir DIR] [--no-theta] [--json OUT] [--baseline BIN [--repeat N]]
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

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--no-theta", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--baseline", help="another tessera binary (the previous release), measured in the same run")
    ap.add_argument("--repeat", type=int, default=3, help="with --baseline: runs of each tessera binary; the best time is kept")
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
    if not a.no_theta:
        venv = ensure_theta(work)
        if venv: tools.append(GitTheta(venv))
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
    if a.json:
        json.dump({"results": results, "bf16_store_ratio": bf16_ratio, "raw_bytes": raw}, open(a.json, "w"), indent=1)
    print(f"{sum(checks)} passed, {len(checks) - sum(checks)} failed")

if __name__ == "__main__":
    main()
