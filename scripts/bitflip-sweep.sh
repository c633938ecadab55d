#!/usr/bin/env bash
# The bit-flip sweep (issue 8, "Hostile repositories and files"): flips every bit of every object trailer and every
# bit (or an even sample) of every payload, for an object of each encoding the store writes, and checks that each
# variant is either refused with a clean error or decodes to the very same bytes. Then `tessera fsck --unreachable`
# over a store holding the variants (one process) and `git checkout` of manifests naming some of them.
#   scripts/bitflip-sweep.sh [PAYLOAD_BITS]      payload bits tried per object (default 8192; all when fewer)
# The objects come from the real filter: Fuzz/tools/make_repo.py builds a repository (raw header object as zstd,
# bg4/bg2+zstd tensors, a two-chunk bg4 tensor, an xor+bg4+zstd delta, zstd tensors and gaps, an opaque zstd stream)
# plus a hand-made object of encoding 0 (raw). The decoding is done by Fuzz/Sources/BitflipSweep (built with the fuzz
# targets). A variant that crashes, hangs or exhausts memory ends that process; it is recorded, its reproducer saved
# in Fuzz/Out/bitflip/crashes/ (in the FuzzObject input format: replay with `.build-fuzz/release/FuzzObject FILE`),
# and the sweep resumes after it. Exits 1 if anything is not clean: 0 crashes and 0 undetected flips are required.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export TESSERA_SWEEP_PAYLOAD_BITS=${1:-8192}
bin=$(./scripts/fuzz-build.sh)
tessera=${TESSERA_BIN:-$root/.build/release/tessera}
if [ ! -x "$tessera" ]; then
  echo "bitflip: building tessera" >&2
  swift build -c release --product tessera >/dev/null
fi
work=$root/Fuzz/Out/bitflip
rm -rf "$work"
mkdir -p "$work/state" "$work/crashes"
echo "bitflip: making objects with the real filter" >&2
TESSERA_BIN=$tessera python3 Fuzz/tools/make_repo.py "$work/objects"
store=$work/objects/repo/.git/tessera
mapfile -t ids < <(cut -f2 "$work/objects/objects.tsv")
mapfile -t paths < <(cut -f4 "$work/objects/objects.tsv")
results=$work/results
: >"$results"
resume=
first=0
export SWIFT_BACKTRACE=enable=no TESSERA_SWEEP_STATE=$work/state TESSERA_SWEEP_SOURCE=$store TESSERA_SWEEP_KEEP=$store
echo "bitflip: sweeping ${#ids[@]} objects" >&2
while :; do
  rm -rf "$work/state/store" "$work/state/current"
  status=0
  TESSERA_SWEEP_RESUME=$resume "$bin/BitflipSweep" -timeout=0 -rss_limit_mb=4096 "${paths[@]:$first}" \
    >>"$results" 2>"$work/state/log" || status=$?
  [ "$status" = 0 ] && break
  if [ ! -s "$work/state/current" ]; then
    echo "bitflip: the sweep failed before decoding anything (exit $status):" >&2
    tail -20 "$work/state/log" >&2
    exit 1
  fi
  read -r id index region offset bit _ <"$work/state/current"
  if [ "$status" = 142 ] || grep -q "ALRM\|libFuzzer: timeout" "$work/state/log"; then kind=hang
  elif grep -q "out-of-memory" "$work/state/log"; then kind=oom
  else kind=crash; fi
  echo "v $id $region $offset $bit $kind" >>"$results"
  file=$(python3 Fuzz/tools/sweep_report.py reproducer "$work" "$id" "$index" "$region" "$offset" "$bit" "$kind")
  message=$(grep -m1 -E "Fatal error|ERROR: libFuzzer" "$work/state/log" || true)
  frame=$(grep -m1 -oE "/Sources/Tessera[A-Za-z]+/[A-Za-z0-9_+]+\.swift:[0-9]+" "$work/state/log" | sed 's|^/||' || true)
  printf '%s\t%s\t%s\t%s\n' "$(basename "$file")" "$kind" "$message" "$frame" >>"$work/crashes/index.tsv"
  echo "bitflip: $kind at ${id:0:12} $region $offset.$bit: $message ${frame:-}" >&2
  resume=$id:$index
  for k in "${!ids[@]}"; do [ "${ids[$k]}" = "$id" ] && first=$k; done
done
python3 Fuzz/tools/sweep_report.py report "$work" "$tessera" | tee "$work/report.txt"
