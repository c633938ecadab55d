#!/usr/bin/env python3
"""Task files for training and evaluating experts (data/experts/): a train split and a held-out split per task, in
Tessera's task format (docs/task-format.md), so `tessera train lora --task` and `tessera eval --task` read the same
files.

    python3 scripts/make_expert_tasks.py --source DIR [--out data/experts]

DIR holds the public data sets as published (the files and commits named in data/experts/SOURCES.md); each input is
checked against its SHA-256 before use, so the outputs are reproducible byte for byte. Only the standard library is
used. Selection is seeded (random.Random(0)) and stratified where the task has classes.

Tasks (the prompt formats are the ones the built-in evaluation tasks use, where there is one):
- arc-easy: multiple choice, "Question: {q}\\nAnswer:" / " {choice}" (lm-eval-harness). Train: ARC-Easy train
  (2,251). Held-out: ARC-Easy validation (570).
- sst2: multiple choice by label words, "Review: {text}\\nSentiment:" / " negative" | " positive". Train: 3,000 rows of
  SST-2 train (1,500 per label, sentences of 6 to 40 words). Held-out: SST-2 dev (872). The same rows as a
  classification task (sst2-classification-train.jsonl) train MiniLM's head (`tessera train head`).
- clinc150: generation, the intent's name (underscores as spaces) answered in the chat template. Train: 20 requests
  per intent of CLINC150 train (3,000). Held-out: 4 per intent of CLINC150 test (600).
- cnn-dailymail: generation, TL;DR summaries (P3 template), Rouge-L. Train: the first 160 of 200. Held-out: the last 40.
- shakespeare: perplexity, Tiny Shakespeare split at 90% of its lines into documents of about 1,500 characters
  (train: the first 90%, held-out: the rest).
- arc-challenge: multiple choice, the arc-easy prompt. Only ARC-Challenge's test split is published here: its 1,172
  questions shuffled (seeded), 900 train / the rest held-out. (A different task from ARC-Easy, whose held-out split
  stays unseen by every expert: the routing comparison's held-out task.)
- wikitext: perplexity, WikiText-2 (raw test file) articles cut into documents of about 1,500 characters at line
  ends (train: the first 90% of the articles, held-out: the rest).
- selfinstruct: generation, the 252 user-oriented instructions of Self-Instruct with their human-written outputs,
  "{instruction}\n\n{input}" answered in the chat template, Rouge-L. Shuffled (seeded): 200 train / 52 held-out.
"""
import argparse
import hashlib
import json
import os
import random
import sys

# The published files' SHA-256 (data/experts/SOURCES.md names their repositories and commits).
SOURCES = {
    "ARC-Easy-train.jsonl": "75d0bb9b9218278fb9cb430fc0ace63d71cfe02ca1a03d39374260c7cd7c67f7",
    "ARC-Easy-validation.jsonl": "e45dbcd2d8e8235af16302f4be0dd00c5d173878c583f4dfe55b70f9df07b2f8",
    "sst2_train.tsv": "c3c410c1cd1307a8dfcbc51f69086c61fc7d95c0fc353b80009dfe5fb4970172",
    "sst2_dev.tsv": "46cc9126f5e3bf1634991d8eeed3a5e8dc81869622444af859729d720c58d815",
    "clinc150_data_full.json": "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0",
    "p3_cnn_dailymail_tldr_summary.jsonl": "56c029dbc69206ac005818d1c2f229b653406d35f0e3cf0647cba4693b26040d",
    "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "ARC-Challenge-test.jsonl": "c0e7635ee91b9ca47bf388f1f6cd5140fda083a71dccda44de72c364645df3f3",
    "wikitext2_raw_test.txt": "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
    "selfinstruct_user_oriented_instructions.jsonl": "81d60a117db495cecedecd9193504fd07c5b5a42f6699ef6b0f9da10fc22f42e",
}


def read_checked(source, name):
    path = os.path.join(source, name)
    data = open(path, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    expected = SOURCES[name]
    if digest != expected:
        sys.exit(f"{path}: SHA-256 {digest} is not the published file's {expected}")
    return data.decode("utf-8")


def write_task(path, header, examples):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for e in examples:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    print(f"{path}: {len(examples)} examples", file=sys.stderr)


def arc_questions(source, name):
    """ARC rows as multiple-choice examples in the lm-eval-harness prompt (rows whose answer is not a label skipped)."""
    questions = []
    for line in read_checked(source, name).splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        labels = row["choices"]["label"]
        if row["answerKey"] not in labels:
            continue
        questions.append({"id": row["id"], "context": f"Question: {row['question']}\nAnswer:",
                          "choices": row["choices"]["text"], "answer": labels.index(row["answerKey"])})
    return questions


def arc(source, out):
    header = {"tessera_task": 1, "type": "multiple_choice", "name": "arc-easy",
              "description": "ARC-Easy (AI2, CC BY-SA 4.0), lm-eval-harness prompt"}
    write_task(os.path.join(out, "arc-easy-train.jsonl"), header, arc_questions(source, "ARC-Easy-train.jsonl"))
    write_task(os.path.join(out, "arc-easy-heldout.jsonl"), header, arc_questions(source, "ARC-Easy-validation.jsonl"))


def sst2(source, out):
    def rows(name):
        lines = read_checked(source, name).splitlines()[1:]
        return [(t.strip(), int(l)) for t, l in (line.rsplit("\t", 1) for line in lines if line.strip())]

    def example(text, label):
        return {"context": f"Review: {text}\nSentiment:", "choices": ["negative", "positive"], "answer": label}

    rng = random.Random(0)
    train = [r for r in rows("sst2_train.tsv") if 6 <= len(r[0].split()) <= 40]
    chosen = []
    for label in (0, 1):
        pool = [r for r in train if r[1] == label]
        chosen += rng.sample(pool, 1500)
    rng.shuffle(chosen)
    header = {"tessera_task": 1, "type": "multiple_choice", "name": "sst2",
              "description": "SST-2 (GLUE) sentiment by label words"}
    write_task(os.path.join(out, "sst2-train.jsonl"), header, [example(t, l) for t, l in chosen])
    # The same rows as a classification task for a sentence encoder's head (`tessera train head`); its "head" is the
    # one data/ ships for the built-in sst2 task.
    classification = {"tessera_task": 1, "type": "classification", "name": "sst2-head", "labels": ["negative", "positive"],
                      "head": "../minilm_sst2_head.safetensors", "description": "SST-2 (GLUE) train rows for a MiniLM head"}
    write_task(os.path.join(out, "sst2-classification-train.jsonl"), classification, [{"text": t, "label": l} for t, l in chosen])
    write_task(os.path.join(out, "sst2-heldout.jsonl"), header, [example(t, l) for t, l in rows("sst2_dev.tsv")])


def clinc(source, out):
    data = json.loads(read_checked(source, "clinc150_data_full.json"))
    rng = random.Random(0)

    def per_intent(rows, n):
        by = {}
        for text, intent in rows:
            by.setdefault(intent, []).append(text)
        chosen = [(t, intent) for intent in sorted(by) for t in rng.sample(by[intent], n)]
        rng.shuffle(chosen)
        return [{"prompt": f"Which intent does this request express? Answer with the intent's name only.\nRequest: {t}",
                 "reference": intent.replace("_", " ")} for t, intent in chosen]

    header = {"tessera_task": 1, "type": "generation", "name": "clinc150", "max_new_tokens": 8,
              "description": "CLINC150 intent names (CC BY 3.0)"}
    write_task(os.path.join(out, "clinc150-train.jsonl"), header, per_intent(data["train"], 20))
    write_task(os.path.join(out, "clinc150-heldout.jsonl"), header, per_intent(data["test"], 4))


def cnn(source, out):
    rows = [json.loads(l) for l in read_checked(source, "p3_cnn_dailymail_tldr_summary.jsonl").splitlines() if l.strip()]
    examples = [{"prompt": r["prompt"].strip(), "reference": r["completion"].replace("<|endoftext|>", "").strip()} for r in rows]
    header = {"tessera_task": 1, "type": "generation", "name": "cnn-dailymail", "max_new_tokens": 96, "stemming": True,
              "description": "CNN/DailyMail TL;DR summaries (P3 template, Apache-2.0 via self-instruct)"}
    write_task(os.path.join(out, "cnn-dailymail-train.jsonl"), header, examples[:160])
    write_task(os.path.join(out, "cnn-dailymail-heldout.jsonl"), header, examples[160:])


def shakespeare(source, out):
    lines = read_checked(source, "tinyshakespeare.txt").split("\n")
    cut = int(len(lines) * 0.9)

    def documents(part):
        docs, current = [], []
        for line in part:
            current.append(line)
            if sum(len(l) + 1 for l in current) >= 1500 and line == "":
                docs.append("\n".join(current).strip())
                current = []
        if current and "\n".join(current).strip():
            docs.append("\n".join(current).strip())
        return [{"text": d} for d in docs if d]

    header = {"tessera_task": 1, "type": "perplexity", "name": "shakespeare",
              "description": "Tiny Shakespeare (karpathy/char-rnn)"}
    write_task(os.path.join(out, "shakespeare-train.jsonl"), header, documents(lines[:cut]))
    write_task(os.path.join(out, "shakespeare-heldout.jsonl"), header, documents(lines[cut:]))


def arc_challenge(source, out):
    questions = arc_questions(source, "ARC-Challenge-test.jsonl")
    random.Random(0).shuffle(questions)
    header = {"tessera_task": 1, "type": "multiple_choice", "name": "arc-challenge",
              "description": "ARC-Challenge (AI2, CC BY-SA 4.0), lm-eval-harness prompt"}
    write_task(os.path.join(out, "arc-challenge-train.jsonl"), header, questions[:900])
    write_task(os.path.join(out, "arc-challenge-heldout.jsonl"), header, questions[900:])


def wikitext(source, out):
    articles, current = [], []
    for line in read_checked(source, "wikitext2_raw_test.txt").replace("\r\n", "\n").split("\n"):
        # An article starts at a top-level heading " = Title = " (not " = = Section = = ").
        if line.startswith(" = ") and not line.startswith(" = = ") and current:
            articles.append(current)
            current = []
        current.append(line)
    if current:
        articles.append(current)

    def documents(part):
        docs = []
        for article in part:
            chunk = []
            for line in article:
                chunk.append(line)
                if sum(len(l) + 1 for l in chunk) >= 1500:
                    docs.append("\n".join(chunk).strip())
                    chunk = []
            if "\n".join(chunk).strip():
                docs.append("\n".join(chunk).strip())
        return [{"text": d} for d in docs if d]

    cut = int(len(articles) * 0.9)
    header = {"tessera_task": 1, "type": "perplexity", "name": "wikitext",
              "description": "WikiText-2 raw (CC BY-SA 3.0), articles in documents of ~1,500 characters"}
    write_task(os.path.join(out, "wikitext-train.jsonl"), header, documents(articles[:cut]))
    write_task(os.path.join(out, "wikitext-heldout.jsonl"), header, documents(articles[cut:]))


def selfinstruct(source, out):
    rows = [json.loads(l) for l in read_checked(source, "selfinstruct_user_oriented_instructions.jsonl").splitlines() if l.strip()]
    examples = []
    for r in rows:
        instance = r["instances"][0]
        prompt = r["instruction"].strip()
        if instance["input"].strip():
            prompt += "\n\n" + instance["input"].strip()
        examples.append({"prompt": prompt, "reference": instance["output"].strip()})
    random.Random(0).shuffle(examples)
    header = {"tessera_task": 1, "type": "generation", "name": "selfinstruct", "max_new_tokens": 64,
              "description": "Self-Instruct user-oriented instructions with human outputs (Apache-2.0)"}
    write_task(os.path.join(out, "selfinstruct-train.jsonl"), header, examples[:200])
    write_task(os.path.join(out, "selfinstruct-heldout.jsonl"), header, examples[200:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="folder with the published data files")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "experts"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for make in (arc, sst2, clinc, cnn, shakespeare, arc_challenge, wikitext, selfinstruct):
        make(args.source, args.out)


if __name__ == "__main__":
    main()
