#!/usr/bin/env bash
# Set everything up (.venv at the repo root) and run the main job: the paper's toy experiment
# (Table 1). The audio-video world demo (`mmdisco demo`) takes its place once its shipped base
# models generate valid clips.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/mmdisco toy --out "${1:-outputs/toy}"
