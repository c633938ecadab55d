#!/usr/bin/env bash
# Runs the fuzz targets for longer than the test suite's smoke run, and reports executions and findings per target.
#   scripts/fuzz.sh [TARGET|all] [SECONDS]        TARGET: safetensors manifest object gguf taskfile mergeconfig
# Each target fuzzes for SECONDS (default 300) from its seed corpus Fuzz/Corpus/TARGET plus the inputs earlier runs
# found (Fuzz/Out/corpus/TARGET), with its dictionary, in libFuzzer's fork mode so that a crash does not end the run.
# Crashes, hangs (-timeout) and out-of-memory inputs are saved to Fuzz/Out/crashes/TARGET/ (gitignored); replay one
# with `.build-fuzz/release/FuzzX FILE`. Logs: Fuzz/Out/logs/TARGET.log.
# Environment: FUZZ_JOBS (parallel jobs, default 1), FUZZ_TIMEOUT (seconds per input before it counts as a hang,
# default 10), FUZZ_RSS_MB (memory limit, default 2048), FUZZ_FLAGS (more libFuzzer flags, e.g. -max_len=65536),
# FUZZ_ASAN=1 (the AddressSanitizer build, .build-fuzz-asan), TESSERA_FUZZ_GGUF_DUPLICATES=ignore (see FuzzGGUF).
# Exits 1 if any target found anything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
all=(safetensors manifest object gguf taskfile mergeconfig)
target=${1:-all}
seconds=${2:-300}
binary_of() {
  case "$1" in
    safetensors) echo FuzzSafetensors ;; manifest) echo FuzzManifest ;; object) echo FuzzObject ;;
    gguf) echo FuzzGGUF ;; taskfile) echo FuzzTaskFile ;; mergeconfig) echo FuzzMergeConfig ;;
    *) return 1 ;;
  esac
}
if [ "$target" = all ]; then targets=("${all[@]}"); else
  binary_of "$target" >/dev/null || { echo "fuzz: unknown target '$target' (one of: ${all[*]}, all)" >&2; exit 2; }
  targets=("$target")
fi
bin=$(./scripts/fuzz-build.sh)
out=Fuzz/Out
mkdir -p "$out/logs"
export SWIFT_BACKTRACE=enable=no
# With FUZZ_ASAN=1 (AddressSanitizer, see scripts/fuzz-build.sh) leaks are not reported: Foundation leaks a page when
# it maps an empty file, and leaks are not what these runs look for.
if [ "${FUZZ_ASAN:-0}" = 1 ]; then export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}; fi
# The targets' scratch stores (on tmpfs when there is one: the store fsyncs), removed whatever happens to the targets.
scratch=$(mktemp -d "$( [ -w /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/tessera-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export TESSERA_FUZZ_TMPDIR=$scratch
declare -a rows
status=0
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t" "$out/crashes/$t"
  marker=$(mktemp)
  echo "fuzz: $t for ${seconds} s" >&2
  # shellcheck disable=SC2086
  "$bin/$(binary_of "$t")" -fork="${FUZZ_JOBS:-1}" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -dict="Fuzz/Dictionaries/$t.dict" -artifact_prefix="$out/crashes/$t/" ${FUZZ_FLAGS:-} \
    "$out/corpus/$t" "Fuzz/Corpus/$t" >"$out/logs/$t.log" 2>&1 || true
  last=$(grep -E '^#[0-9]+: cov:' "$out/logs/$t.log" | tail -1 || true)
  execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
  counts=$(sed -E 's|.*oom/timeout/crash: ([0-9]+)/([0-9]+)/([0-9]+).*|\1 \2 \3|' <<<"$last")
  read -r ooms hangs crashes <<<"${counts:-0 0 0}"
  new=$(find "$out/crashes/$t" -type f -newer "$marker" | sort)
  rm -f "$marker"
  rows+=("$(printf '%-12s %6s %12s %7s %6s %5s %8s' "$t" "$seconds" "${execs:-?}" "${crashes:-?}" "${hangs:-?}" "${ooms:-?}" "$(find "$out/corpus/$t" -type f | wc -l)")")
  if [ -n "$new" ] || [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ] || [ "${ooms:-0}" != 0 ]; then
    status=1
    [ -n "$new" ] && echo "$new" | sed "s|^|fuzz: $t: reproducer |" >&2
  fi
done
printf '%-12s %6s %12s %7s %6s %5s %8s\n' target secs executions crashes hangs ooms corpus
printf '%s\n' "${rows[@]}"
exit "$status"
