#!/usr/bin/env bash
# Replays reproducers and groups them by crash site: the Swift runtime's message (numbers elided) and the first stack
# frame in Tessera's own sources.
#   Fuzz/tools/triage.sh TARGET FILE...     TARGET: safetensors manifest object gguf taskfile mergeconfig
# Prints one line per distinct site: how many files, one example file, the message and the frame.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=$1; shift
case "$target" in
  safetensors) b=FuzzSafetensors ;; manifest) b=FuzzManifest ;; object) b=FuzzObject ;;
  gguf) b=FuzzGGUF ;; taskfile) b=FuzzTaskFile ;; mergeconfig) b=FuzzMergeConfig ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
bin=${TESSERA_FUZZ_BIN:-$root/.build-fuzz/release}
export SWIFT_BACKTRACE=enable=no
for f in "$@"; do
  log=$("$bin/$b" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" "$f" 2>&1)
  status=$?
  if [ "$status" = 0 ]; then echo "ok|$f|no crash (fixed?)|"; continue; fi
  message=$(grep -m1 -E "Fatal error|FUZZ FINDING|ERROR: libFuzzer: (timeout|out-of-memory|deadly)" <<<"$log" | sed -E 's/[0-9]{3,}/N/g')
  frame=$(grep -m1 -oE "/(Sources|Fuzz/Sources)/[A-Za-z]+/[A-Za-z0-9_+]+\.swift:[0-9]+" <<<"$log" | sed -E 's|.*/(Sources/)|\1|')
  echo "$message|$f|$frame"
done | awk -F'|' '{ key = $1 "|" $3; n[key]++; if (!(key in ex)) ex[key] = $2 } END { for (k in n) { split(k, p, "|"); printf "%4d  %s\n      %s\n      e.g. %s\n", n[k], p[1], p[2], ex[k] } }'
