#!/usr/bin/env bash
# Set everything up (.venv at the repo root) and run the main job: the end-to-end MMDisCo demo
# on the synthetic audio-visual world (report, figures and mp4s in outputs/demo, ~3 minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/mmdisco demo --out "${1:-outputs/demo}"
