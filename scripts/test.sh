#!/usr/bin/env bash
# Set up, then run the test suite (offline). Extra args go to pytest, e.g. `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "${ZARRTOK_VENV:-.venv}/bin/python" -m pytest "$@"
