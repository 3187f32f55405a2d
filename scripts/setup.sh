#!/usr/bin/env bash
# Create or reuse .venv at the repository root and install what is missing.
# torch is installed first, pinned, so that pip never resolves a CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.mmdisco-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
# The browser tests drive Debian's Chromium through its matching driver. Installed as root
# where missing; elsewhere those tests are skipped, and this says how to get them.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -qq update
    apt-get -qq install -y -o DPkg::Lock::Timeout=600 chromium chromium-driver >/dev/null
  else
    echo "setup: chromium and chromium-driver are missing; the browser tests will be skipped" \
      "(install them with: sudo apt-get install chromium chromium-driver)" >&2
  fi
fi
