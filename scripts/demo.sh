#!/usr/bin/env bash
# The main job on the embedded default: set up, then generate a corpus, train a tokenizer, build a
# store through the seed-compatible facade and read windows back. Offline. Extra args go to `zarrtok demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${ZARRTOK_VENV:-.venv}/bin/zarrtok" demo --output zarrtok-demo "$@"
