#!/usr/bin/env python3
"""Writes seed objects of the codecs that code against a base (adelta4, adelta2, lowrank4: static tables and rANS, in
the payload version the filter writes, 3 now; the committed corpus keeps version 2 seeds as v2-*.EXT and this script's
version 3 output as v2-*-payload3.EXT) into a corpus directory, each with its base in front ("BASE", u32 length, base
object, object: the layout FuzzObject reads). The objects are made by the real filter: two versions of a small
checkpoint committed in a throw-away repository (isolated HOME, no system config), the second a fine-tune, a bf16
fine-tune and a rank-2 update.

    TESSERA_BIN=.build/release/tessera Fuzz/tools/make_delta_seeds.py Fuzz/Corpus/object
"""
import os, random, struct, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_repo import safetensors, f32, bf16  # noqa: E402


def matrix(rows, columns, rng, scale=0.02):
    return [[rng.gauss(0, scale) for _ in range(columns)] for _ in range(rows)]


def flat(m):
    return [v for row in m for v in row]


def main():
    out = sys.argv[1]
    tessera = os.environ.get("TESSERA_BIN", "tessera")
    rng = random.Random(5)
    dense, half, lora = matrix(64, 128, rng), matrix(64, 128, rng), matrix(64, 96, rng)
    dense2 = [[v + 2e-5 * rng.gauss(0, 1) for v in row] for row in dense]
    half2 = [[v + 2e-4 * rng.gauss(0, 1) for v in row] for row in half]
    b, a = matrix(64, 2, rng, 0.01), matrix(2, 96, rng, 0.05)
    lora2 = [[lora[i][j] + sum(b[i][t] * a[t][j] for t in range(2)) for j in range(96)] for i in range(64)]
    versions = [[("dense.weight", "F32", [64, 128], f32(flat(d))), ("half.weight", "BF16", [64, 128], bf16(flat(h))),
                 ("lora.weight", "F32", [64, 96], f32(flat(l)))] for d, h, l in [(dense, half, lora), (dense2, half2, lora2)]]
    with tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, HOME=work, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="s", GIT_AUTHOR_EMAIL="s@s",
                   GIT_COMMITTER_NAME="s", GIT_COMMITTER_EMAIL="s@s")
        bindir = os.path.join(work, "bin")
        os.makedirs(bindir)
        os.symlink(os.path.abspath(tessera) if os.path.exists(tessera) else tessera, os.path.join(bindir, "tessera"))
        env["PATH"] = bindir + ":" + env["PATH"]
        repo = os.path.join(work, "repo")
        sh = lambda cmd: subprocess.run(cmd, cwd=repo, env=env, shell=True, check=True, stdout=subprocess.PIPE, text=True).stdout
        os.makedirs(repo)
        sh('git init -q . && tessera track "*.safetensors" >/dev/null && git add .gitattributes && git commit -qm init')
        for k, entries in enumerate(versions):
            with open(os.path.join(repo, "m.safetensors"), "wb") as f:
                f.write(safetensors(entries))
            sh(f"git add m.safetensors && git commit -qm v{k}")
        objects = os.path.join(repo, ".git", "tessera", "objects")
        read = lambda oid: open(os.path.join(objects, oid[:2], oid[2:]), "rb").read()
        for line in sh("git show HEAD:m.safetensors").splitlines():
            parts = line.split()
            if parts[0] != "tensor" or "@" not in parts[4]:
                continue
            encoding, base_id = parts[4].split("@")[0], parts[4].split("@")[1].split(":")[0]
            base, data = read(base_id), read(parts[6])
            name = "v2-" + parts[1].replace(".", "-") + "." + encoding
            with open(os.path.join(out, name), "wb") as f:
                f.write(b"BASE" + struct.pack("<I", len(base)) + base + data)
            print(name, len(data))


if __name__ == "__main__":
    main()
