#!/usr/bin/env bash
# Builds the fuzzing package (Fuzz/: one libFuzzer executable per reader of untrusted bytes, and the bit-flip sweep)
# with the fuzzer runtime, into .build-fuzz, and prints the directory of its executables on stdout.
# Used by scripts/fuzz.sh, scripts/bitflip-sweep.sh and scripts/test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
flags=(-c release --package-path Fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library)
log=$(mktemp)
echo "fuzz: building the fuzz targets (.build-fuzz)" >&2
if ! swift build "${flags[@]}" >"$log" 2>&1; then
  grep -E "error" "$log" >&2 || tail -30 "$log" >&2
  echo "fuzz: the build failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
swift build "${flags[@]}" --show-bin-path
