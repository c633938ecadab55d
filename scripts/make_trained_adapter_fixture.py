#!/usr/bin/env python3
"""An adapter trained by Tessera, loaded in PEFT: Tests/Fixtures/training/tessera-trained/.

1. Builds a model folder from the engine's tiny Llama (Tests/TesseraEngineTests/Fixtures/tiny_llama: config and
   weights) with a byte-level tokenizer (ids 0-255 the bytes, 256-258 specials, no merges), and a small perplexity
   task file of English sentences.
2. Runs `tessera train lora` on it (TESSERA_BIN, default .build/release/tessera): rank 4, q/k/v/o and the MLP,
   12 steps. The adapter folder it writes (adapter_config.json, adapter_model.safetensors, training.json) is the
   fixture's `adapter/`.
3. Loads the base with transformers and the adapter with PEFT's PeftModel.from_pretrained (refusing missing or
   unexpected keys), and saves PEFT's logits for a fixed token batch in `peft_logits.safetensors`
   (`tokens` [2, 12] I64, `logits` [2, 12, 260] F32, float32 forward).

The Swift test (Tests/TesseraTrainingTests/TesseraTrainedAdapterTests.swift) attaches `adapter/` unmerged in the engine
and compares its logits with PEFT's within 1e-4.

Environment: torch (CPU), transformers and peft 0.21.2, e.g. a venv made as scripts/make_peft_fixtures.py says.
    python scripts/make_trained_adapter_fixture.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = os.path.join(root, "Tests", "Fixtures", "training", "tessera-trained")
engine_model = os.path.join(root, "Tests", "TesseraEngineTests", "Fixtures", "tiny_llama")
tessera = os.environ.get("TESSERA_BIN", os.path.join(root, ".build", "release", "tessera"))

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A model is a mosaic of tensors, and each tile is versioned.",
    "Small experts are trained, shared, merged and routed.",
    "Rain in the morning, sun in the afternoon.",
    "She read the letter twice before she answered it.",
    "Version control keeps every change that mattered.",
]


def bytes_to_unicode():
    """GPT-2's byte-to-character map: printable bytes stand for themselves, the others move above U+0100."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def model_folder(folder):
    os.makedirs(folder)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(engine_model, name), folder)
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for k, s in enumerate(specials):
        vocab[s] = 256 + k
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 256 + k, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for k, s in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
    }
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>"}, f)


def main():
    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    work = tempfile.mkdtemp()
    folder = os.path.join(work, "tiny")
    model_folder(folder)
    task = os.path.join(work, "sentences.jsonl")
    with open(task, "w") as f:
        f.write(json.dumps({"tessera_task": 1, "type": "perplexity", "name": "sentences"}) + "\n")
        for s in SENTENCES:
            f.write(json.dumps({"text": s}) + "\n")
    adapter = os.path.join(out, "adapter")
    if os.path.exists(adapter):
        shutil.rmtree(adapter)
    os.makedirs(out, exist_ok=True)
    subprocess.run([tessera, "train", "lora", folder, "--task", task, "-o", adapter, "--rank", "4", "--alpha", "8",
                    "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--steps", "12",
                    "--batch-size", "3", "--lr", "5e-3", "--seed", "3"], check=True)
    # The provenance names paths in a temporary folder: keep only what does not depend on this machine.
    training_path = os.path.join(adapter, "training.json")
    training = json.load(open(training_path))
    for record in training.get("data", []) + training.get("data_sequences", []):
        record["path"] = os.path.basename(record["path"])
    training["base"]["name"] = "tiny (Tests/TesseraEngineTests/Fixtures/tiny_llama with a byte-level tokenizer)"
    json.dump(training, open(training_path, "w"), indent=1)

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(engine_model, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    # Every factor in the file is the one PEFT loaded (from_pretrained only warns about missing keys).
    from safetensors.torch import load_file
    saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert set(saved) == set(loaded), (sorted(saved)[:3], sorted(loaded)[:3])
    assert all(torch.equal(saved[k], loaded[k]) for k in saved), "PEFT loaded other values"
    tokens = torch.tensor([[84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114],
                           [65, 32, 109, 111, 100, 101, 108, 32, 105, 115, 32, 97]], dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float()
    save_file({"tokens": tokens, "logits": logits.contiguous()}, os.path.join(out, "peft_logits.safetensors"),
              metadata={"source": "scripts/make_trained_adapter_fixture.py: PEFT " + __import__("peft").__version__
                        + ", transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__})
    print(f"{out}: adapter trained by tessera, PEFT logits {tuple(logits.shape)}", file=sys.stderr)


if __name__ == "__main__":
    main()
