#!/usr/bin/env bash
# Regenerates the seed corpora Fuzz/Corpus/{safetensors,manifest,object,gguf} from real Tessera output: a small
# repository made by the real filter (Fuzz/tools/make_repo.py --small), its checkpoints, manifests and objects, plus
# hand-rolled GGUF files (Fuzz/tools/make_gguf.py) and the engine's quant_types.gguf fixture. The task-file and
# merge-config seeds are written by hand and not touched here.
#   TESSERA_BIN=.build/release/tessera Fuzz/tools/make_corpus.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export TESSERA_BIN=${TESSERA_BIN:-$root/.build/release/tessera}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 Fuzz/tools/make_repo.py "$work" --small
c=Fuzz/Corpus
rm -f $c/safetensors/* $c/manifest/* $c/object/* $c/gguf/*

cp "$work/files/model-v1.safetensors" "$work/files/model-v2.safetensors" "$work/files/notes.safetensors" $c/safetensors/
cp "$work/files/v1.manifest" $c/safetensors/manifest-v1  # the cleaner passes manifests through
for m in v1 v2 notes; do cp "$work/files/$m.manifest" "$c/manifest/$m.manifest"; done
python3 - "$work" "$c" <<'PY'
import os, struct, sys
sys.path.insert(0, "Fuzz/tools")
from make_repo import safetensors, f32, raw_object
work, c = sys.argv[1], sys.argv[2]
def put(dir_, name, data):
    with open(os.path.join(c, dir_, name), "wb") as f:
        f.write(data)
# Small safetensors edge cases: empty header, scalar and zero-size tensors, trailing bytes, a gap, no metadata.
put("safetensors", "empty-header.safetensors", struct.pack("<Q", 8) + b"{}      ")
put("safetensors", "scalar-and-empty.safetensors", safetensors(
    [("s", "F64", [], struct.pack("<d", 1.5)), ("e", "F32", [0, 4], b""), ("b", "BOOL", [3], b"\x01\x00\x01")]))
put("safetensors", "trailing-and-gap.safetensors", safetensors(
    [("a", "F32", [2, 2], f32([1, 2, 3, 4])), ("b", "BF16", [2], b"\x80\x3f\x00\x40")],
    metadata={"format": "pt", "note": "gap\u00e9"}, gaps={0: b"\xaa" * 70, 1: b"tail"}))
put("safetensors", "packed-types.safetensors", safetensors(
    [("f4", "F4", [4], b"\x12\x34"), ("f6", "F6_E2M3", [4], b"\x01\x02\x03"), ("c", "C64", [1], b"\0" * 8),
     ("f8", "F8_E4M3", [2], b"\x38\x40")]))
# A hand-written manifest with every line kind and an escaped name.
put("manifest", "every-line.manifest", (
    "tessera-manifest 1\nformat safetensors\nsize 120\n"
    "header 0 16 zstd " + "a" * 64 + " " + "b" * 64 + " 100\n"
    "tensor name%20with%25escapes%0A F32 [2,2] 16 32 bg4+zstd " + "c" * 64 + " " + "d" * 64 + " 90\n"
    "gap 32 36 inline 00ff00ff\n"
    "gap 36 100 zstd " + "e" * 64 + " " + "f" * 64 + " 80\n"
    "tensor t BF16 [] 100 102 xor+bg2+zstd@" + "d" * 64 + ":90 " + "1" * 64 + " " + "2" * 64 + " 70\n"
    "tensor z U8 [0] 102 102 zstd " + "3" * 64 + " " + "4" * 64 + " 60\n"
    "gap 102 120 inline " + "00" * 18 + "\nend\n").encode())
put("manifest", "opaque.manifest", (
    "tessera-manifest 1\nformat opaque\nsize 5\nblob 0 5 zstd " + "a" * 64 + " " + "b" * 64 + " 100\nend\n").encode())
# Objects: every small object the filter wrote; a delta with its base in front ("BASE", length, base, object).
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(work, "objects.tsv"))]
paths = {r[1]: r[3] for r in rows}
for label, oid, enc, path in rows:
    data = open(path, "rb").read()
    if enc.startswith("xor"):
        base_id = data[-88 + 32:-88 + 64].hex()
        base = open(paths[base_id], "rb").read()
        data = b"BASE" + struct.pack("<I", len(base)) + base + data
    put("object", label.replace(":", "-").replace(".", "-") + "." + enc.replace("+", "-"), data)
put("object", "empty-raw.raw", raw_object(b""))
PY
python3 Fuzz/tools/make_delta_seeds.py $c/object
python3 Fuzz/tools/make_gguf.py $c/gguf
cp Tests/TesseraEngineTests/Fixtures/quant_types.gguf $c/gguf/
ls -la $c/*
