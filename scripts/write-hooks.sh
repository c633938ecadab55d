#!/usr/bin/env bash
# Regenerates hooks/ from the hook text that `tessera install` writes (Installer.hookScript), so the repository shows
# exactly what gets installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${TESSERA_BIN:-$root/.build/release/tessera}
for h in pre-push post-checkout post-merge pre-commit; do "$bin" hook-script "$h" > "$root/hooks/$h"; chmod +x "$root/hooks/$h"; done
