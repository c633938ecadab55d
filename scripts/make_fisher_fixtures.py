#!/usr/bin/env python3
"""Builds Tests/Fixtures/training/fisher/: the diagonal Fisher of every weight of the engine's tiny Llama, GPT-2 and
GPT-Neo (Tests/TesseraEngineTests/Fixtures/tiny_{llama,gpt2,gptneo}, read from there, not copied) computed with
PyTorch autograd, for the Swift tests of `LanguageModelFisher` to compare against. Nothing here is computed by
Tessera.

Run with an interpreter that has torch, transformers 5.x and safetensors (see scripts/make_training_fixtures.py), e.g.
    python scripts/make_fisher_fixtures.py
Deterministic: the token ids come from a seeded generator; re-running rewrites the same files.

- multiple_choice.json / multiple_choice.safetensors: 3 examples (2, 3 and 4 choices), each a context and its
  choices' continuations as token ids. The Fisher is the exact expectation over the model's distribution restricted
  to the choices: ll_c = sum over the continuation's tokens of log p(token | everything before it),
  log p(c|x) = ll_c - logsumexp(ll), and F = mean over examples of sum_c p(c|x) * (d log p(c|x) / d theta)^2, each
  gradient taken by autograd of the normalised log-probability itself (not of the formula Tessera uses).
- text.json / text.safetensors: 2 plain texts as token ids; the empirical Fisher, F = mean over texts of
  (d sum_t log p(x_t | x_<t) / d theta)^2, every token after the first counted.

- gpt2_multiple_choice.*, gpt2_text.*, gptneo_multiple_choice.*, gptneo_text.*: the same two estimates for the tiny
  GPT-2 and GPT-Neo (vocabulary 100, 32 positions; their own seeded token ids, contexts long enough that GPT-Neo's
  local layer, window 5, masks keys). GPT-2's Conv1D weights keep the checkpoint's [in, out] layout.

Each .safetensors holds one F32 tensor per model parameter, named as the checkpoint (tied head: only the embedding,
model.embed_tokens.weight or transformer.wte.weight, which gets both uses; GPT-2/GPT-Neo: wpe too), and
`log_likelihoods` (F64): the ll_c of every choice in order (multiple choice) or each text's sum of log-probabilities.
float64 throughout from the float32 weights (Hugging Face's GPT-Neo attention casts queries and keys to float32;
here its scores stay in float64, same mask and softmax, no scaling).
"""
import hashlib
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "TesseraEngineTests", "Fixtures")
MODEL = os.path.join(FIXTURES, "tiny_llama")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "training", "fisher")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")


def sequence_log_likelihood(model, tokens, first_counted):
    """sum over t >= first_counted of log p(tokens[t] | tokens[:t]), one unpadded sequence."""
    ids = torch.tensor([tokens], dtype=torch.long)
    logits = model(input_ids=ids).logits[0].to(torch.float64)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[t - 1, tokens[t]] for t in range(first_counted, len(tokens)))


def gradients(model, value):
    params = [p for _, p in model.named_parameters()]
    return torch.autograd.grad(value, params, retain_graph=True)


def save(path, names, fisher, lls, metadata):
    tensors = {n: f.to(torch.float32).contiguous() for n, f in zip(names, fisher)}
    tensors["log_likelihoods"] = torch.tensor(lls, dtype=torch.float64)
    save_file(tensors, path, metadata={"source": json.dumps(metadata, sort_keys=True)})
    os.chmod(path, 0o644)


def gpt_neo_attention_in_float64():
    """GPT-Neo's eager attention with the scores kept in the model's dtype (Hugging Face casts queries and keys to
    float32): unscaled q·k, the layer's causal (and, for a local layer, windowed) mask, softmax, times v."""
    from transformers.models.gpt_neo import modeling_gpt_neo

    def attention(self, query, key, value, attention_mask=None):
        scores = torch.matmul(query, key.transpose(-1, -2))
        q, k = query.size(-2), key.size(-2)
        mask = self.bias[:, :, k - q:k, :k]
        scores = scores.masked_fill(~mask, float("-inf"))
        if attention_mask is not None:
            scores = scores + attention_mask
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights, value), weights

    modeling_gpt_neo.GPTNeoSelfAttention._attn = attention


def fishers(model_dir, prefix, seed):
    """The two fixtures of one model: PREFIX_multiple_choice.* and PREFIX_text.* (the Llama's have no prefix)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval().to(torch.float64)
    names = [n for n, _ in model.named_parameters()]
    vocab = model.config.vocab_size
    rng = np.random.default_rng(seed)
    os.makedirs(OUT, exist_ok=True)
    model_path = os.path.relpath(os.path.join(model_dir, "model.safetensors"), ROOT)
    source = {"model": model_path, "model_sha256": sha256(os.path.join(ROOT, model_path)), "precision": "float64"}

    def ids(n):
        return [int(x) for x in rng.integers(0, vocab, size=n)]

    # Multiple choice: contexts of 5-8 tokens, continuations of 1-3 tokens.
    examples = []
    for choices, context_length in ((2, 6), (3, 5), (4, 8)):
        examples.append({"context": ids(context_length), "choices": [ids(int(rng.integers(1, 4))) for _ in range(choices)]})
    fisher = [torch.zeros_like(p) for p in model.parameters()]
    lls_out = []
    for ex in examples:
        lls = torch.stack([sequence_log_likelihood(model, ex["context"] + c, len(ex["context"])) for c in ex["choices"]])
        lls_out += [float(v) for v in lls.detach()]
        normalised = lls - torch.logsumexp(lls, dim=0)
        p = normalised.detach().exp()
        for c in range(len(ex["choices"])):
            for f, g in zip(fisher, gradients(model, normalised[c])):
                f += p[c] * g * g
    fisher = [f / len(examples) for f in fisher]
    write_json(os.path.join(OUT, prefix + "multiple_choice.json"), {"examples": examples})
    save(os.path.join(OUT, prefix + "multiple_choice.safetensors"), names, fisher, lls_out,
         dict(source, estimate="expectation_over_choices", examples=len(examples)))

    # Plain text: two texts of 10 and 7 tokens.
    texts = [ids(10), ids(7)]
    fisher = [torch.zeros_like(p) for p in model.parameters()]
    lls_out = []
    for tokens in texts:
        ll = sequence_log_likelihood(model, tokens, 1)
        lls_out.append(float(ll.detach()))
        for f, g in zip(fisher, gradients(model, ll)):
            f += g * g
    fisher = [f / len(texts) for f in fisher]
    write_json(os.path.join(OUT, prefix + "text.json"), {"texts": texts})
    save(os.path.join(OUT, prefix + "text.safetensors"), names, fisher, lls_out, dict(source, estimate="empirical", examples=len(texts)))
    print(prefix or "llama_", "parameters:", names)


def main():
    fishers(MODEL, "", 1300)
    fishers(os.path.join(FIXTURES, "tiny_gpt2"), "gpt2_", 1301)
    gpt_neo_attention_in_float64()
    fishers(os.path.join(FIXTURES, "tiny_gptneo"), "gptneo_", 1302)


if __name__ == "__main__":
    main()
