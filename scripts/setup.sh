#!/usr/bin/env bash
# Create ./.venv (or $ZARRTOK_VENV) and install zarrtok with its test extras. Idempotent: skips the
# install when pyproject.toml and constraints.txt have not changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${ZARRTOK_VENV:-.venv}"
STAMP="$VENV/.zarrtok-installed"
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
LOG="$(mktemp -t zarrtok-setup.XXXXXX.log)"
echo "setting up $VENV (log: $LOG)"
# torch first, pinned: 2.13.0 is the local CPU wheel; any other spec would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -m pip install torch==2.13.0 >"$LOG" 2>&1 \
   || ! "$VENV/bin/python" -m pip install -c constraints.txt -e ".[test]" >>"$LOG" 2>&1; then
    grep -v "^WARNING: Location" "$LOG" | tail -40
    echo "setup failed (full log: $LOG)" >&2
    exit 1
fi
echo "$WANT" >"$STAMP"
echo "installed: $("$VENV/bin/python" -c 'import torch, zarr, datasets, transformers; print("torch", torch.__version__, "zarr", zarr.__version__, "datasets", datasets.__version__, "transformers", transformers.__version__)')"
