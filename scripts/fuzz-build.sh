#!/usr/bin/env bash
# Builds the fuzzing package (Fuzz/: one libFuzzer executable per reader of untrusted bytes, and the bit-flip sweep)
# with the fuzzer runtime, into .build-fuzz, and prints the directory of its executables on stdout.
# Used by scripts/fuzz.sh, scripts/bitflip-sweep.sh and scripts/test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# FUZZ_ASAN=1 adds AddressSanitizer (Swift code only; a separate build in .build-fuzz-asan): out-of-bounds accesses
# through unsafe pointers then crash too, at several times the cost per input.
if [ "${FUZZ_ASAN:-0}" = 1 ]; then sanitize=fuzzer,address; scratch=.build-fuzz-asan; else sanitize=fuzzer; scratch=.build-fuzz; fi
flags=(-c release --package-path Fuzz --scratch-path "$scratch" -Xswiftc "-sanitize=$sanitize" -Xswiftc -parse-as-library)
log=$(mktemp)
echo "fuzz: building the fuzz targets ($scratch)" >&2
# SwiftPM builds from the build plan it kept in $scratch, which does not notice new files or edges in the main package
# (this package's dependency): a target that gained a dependency failed with "no such module", a new C file in
# CKernels with "undefined reference" at the link, on every retry. After a failed build the kept plan
# (release.yaml, release/description.json) is removed, so that the next build plans afresh; then once more.
forget_plan() { rm -f "$scratch/release.yaml" "$scratch/release/description.json"; }
if ! swift build "${flags[@]}" >"$log" 2>&1 && ! { forget_plan; swift build "${flags[@]}" >"$log" 2>&1; } \
   && ! swift build "${flags[@]}" >"$log" 2>&1; then
  grep -E "error" "$log" >&2 || tail -30 "$log" >&2
  echo "fuzz: the build failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
swift build "${flags[@]}" --show-bin-path
