#!/usr/bin/env bash
# Set up, then run the test suite (offline). Extra args go to pytest, e.g. `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Two pytest-xdist workers (ZARRTOK_TEST_WORKERS; 0 = one process): on the 2-core machine the suite
# took 835 s in one process and 567 s with two (the S3 and subprocess tests wait on I/O and spawns).
# A later `-n` in the arguments wins.
exec "${ZARRTOK_VENV:-.venv}/bin/python" -m pytest -n "${ZARRTOK_TEST_WORKERS:-2}" "$@"
