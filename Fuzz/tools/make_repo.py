#!/usr/bin/env python3
"""Builds a small Tessera repository whose store holds an object of every encoding the store writes, by running the
real `tessera` filter under git (as the tests do: isolated HOME, no system config). Used by Fuzz/make_corpus.sh (seed
corpora) and scripts/bitflip-sweep.sh (the objects to flip).

    TESSERA_BIN=.build/release/tessera Fuzz/tools/make_repo.py DIR [--small]

DIR/repo is the repository. DIR/objects.tsv lists one object per line: label, object id, manifest encoding, path of
the object file. DIR/files/ keeps the checkpoint files that were committed. A hand-made object of encoding 0 (raw,
which the filter never writes but a remote may serve) is written to DIR/raw-object. --small leaves out the
multi-chunk tensor (1.2 MB), for seed corpora.
"""
import hashlib
import os
import shutil
import struct
import subprocess
import sys


def xorshift_floats(n, seed, scale=0.02):
    s = (seed * 0x9E3779B97F4A7C15 | 1) & 0xFFFFFFFFFFFFFFFF
    out = []
    for _ in range(n):
        s ^= (s << 13) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 7
        s ^= (s << 17) & 0xFFFFFFFFFFFFFFFF
        # Rounded to a few significant bits so that zstd has something to find (real weights compress a little).
        out.append(round(((s % 2001) / 1000.0 - 1.0) * scale, 5))
    return out


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def bf16(values):
    return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in values)


def f16(values):
    return struct.pack("<%de" % len(values), *values)


def safetensors(entries, metadata=None, gaps=None):
    """entries: (name, dtype, shape, bytes); gaps: {index: bytes after that entry}."""
    gaps = gaps or {}
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for k, (name, dtype, shape, raw) in enumerate(entries):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw + gaps.get(k, b"")
    import json
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def checkpoint(version, small):
    embed = xorshift_floats(64 * 64, 1)
    if version == 2:
        # A fine-tune: the same values nudged in their low mantissa bits, so the store writes an XOR delta.
        embed = [v * (1 + 1e-4) + 1e-7 for v in embed]
    entries = [
        ("embed.weight", "F32", [64, 64], f32(embed)),
        ("norm.weight", "BF16", [32, 32], bf16(xorshift_floats(32 * 32, 2, 1.0))),
        ("proj.weight", "F16", [16, 16], f16(xorshift_floats(16 * 16, 3, 1.0))),
        ("token_ids", "I8", [200], bytes((i * 7) % 256 for i in range(200))),
        ("step", "I64", [], struct.pack("<q", 1000 * version)),
    ]
    if not small:
        entries.append(("big.weight", "F32", [300000], f32(xorshift_floats(300000, 4))))
    # A 4-byte gap (stored inline in the manifest) and a 100-byte gap (stored as an object).
    return safetensors(entries, metadata={"format": "pt"}, gaps={1: b"\0" * 4, 2: bytes(range(100))})


def raw_object(payload):
    trailer = (hashlib.sha256(payload).digest() + b"\0" * 32 + struct.pack("<Q", len(payload))
               + bytes([0, 1, 20, 0]) + b"TSO1" + b"\0" * 8)
    return payload + trailer


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = os.path.abspath(sys.argv[1])
    small = "--small" in sys.argv[2:]
    tessera = os.environ.get("TESSERA_BIN") or "tessera"
    repo = os.path.join(out, "repo")
    files = os.path.join(out, "files")
    home = os.path.join(out, "home")
    for d in (repo, files, home):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(home, ".gitconfig"), "w") as f:
        f.write("[user]\n\tname = Tessera Fuzz\n\temail = fuzz@tessera.invalid\n[init]\n\tdefaultBranch = main\n")
    env = dict(os.environ, HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C",
               SWIFT_BACKTRACE="enable=no")
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)

    def run(*args):
        subprocess.run(args, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)

    def show(spec):
        return subprocess.run(["git", "show", spec], cwd=repo, env=env, check=True, capture_output=True).stdout.decode()

    def put(name, data, keep_as):
        with open(os.path.join(repo, name), "wb") as f:
            f.write(data)
        shutil.copy(os.path.join(repo, name), os.path.join(files, keep_as))

    run("git", "init", "-q")
    run(tessera, "track", "*.safetensors")
    put("model.safetensors", checkpoint(1, small), "model-v1.safetensors")
    put("notes.safetensors", b"not a checkpoint: stored whole, as one zstd stream\n" * 40, "notes.safetensors")
    run("git", "add", ".")
    run("git", "commit", "-qm", "v1")
    put("model.safetensors", checkpoint(2, small), "model-v2.safetensors")
    run("git", "commit", "-qam", "v2")

    store = os.path.join(repo, ".git", "tessera", "objects")
    rows = []
    seen = set()
    manifests = [("v1", "HEAD~1:model.safetensors"), ("v2", "HEAD:model.safetensors"), ("notes", "HEAD:notes.safetensors")]
    for tag, spec in manifests:
        text = show(spec)
        with open(os.path.join(files, tag + ".manifest"), "w") as f:
            f.write(text)
        # Version 1 lines carry begin and end offsets; version 2 lines one length (docs/manifest-format.md).
        v2 = text.startswith("tessera-manifest 2")
        at = 2 if v2 else 3
        for line in text.splitlines():
            f_ = line.split(" ")
            if f_[0] in ("header", "blob") or (f_[0] == "gap" and f_[at] != "inline"):
                label, enc, oid = f_[0], f_[at], f_[at + 2]
            elif f_[0] == "tensor":
                label, enc, oid = f_[1], f_[at + 2], f_[at + 4]
            else:
                continue
            if oid in seen:
                continue
            seen.add(oid)
            rows.append((tag + ":" + label, oid, enc.split("@")[0], os.path.join(store, oid[:2], oid[2:])))
    raw = raw_object(bytes(range(256)) * 2)
    raw_id = hashlib.sha256(raw).hexdigest()
    with open(os.path.join(out, "raw-object"), "wb") as f:
        f.write(raw)
    rows.append(("handmade:raw", raw_id, "raw", os.path.join(out, "raw-object")))
    with open(os.path.join(out, "objects.tsv"), "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")


if __name__ == "__main__":
    main()
