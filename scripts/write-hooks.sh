#!/usr/bin/env bash
# Regenerates hooks/ from the hook text that `tessera install` writes (GitHooks.script), so the repository shows
# exactly what gets installed. Beside git-lfs, pre-push is installed with git-lfs's own hook text in front
# (`tessera hook-script pre-push --git-lfs` prints it; docs/architecture.md says why).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${TESSERA_BIN:-$root/.build/release/tessera}
for h in pre-push pre-commit; do "$bin" hook-script "$h" > "$root/hooks/$h"; chmod +x "$root/hooks/$h"; done
