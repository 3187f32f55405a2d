#!/usr/bin/env bash
# Set everything up (.venv at the repo root) and run the main job: the end-to-end MMDisCo demo
# on the continuous synthetic audio-visual world, a network discriminator against the exact
# density ratio (report and figure in outputs/demo, ~6 minutes on 2 cores). The finite world's
# demo: .venv/bin/mmdisco demo --world finite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/mmdisco demo --out "${1:-outputs/demo}"
