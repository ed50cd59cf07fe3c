#!/usr/bin/env bash
# Create ./.venv-peers: zarrtok (test extras, pinned stack) plus the peer libraries the
# `local_read` and `build_peers` benchmarks compare against: archai 1.0.0 (dataset path only) and
# litdata 0.2.76; and wordfreq (a real English word list for build_peers' corpus).
# See benchmarks/PEERS.md for why each step is what it is. Idempotent: skips everything when the
# stamp matches this script + pyproject.toml + constraints.txt.
#
#   bash benchmarks/peers_env.sh
#   .venv-peers/bin/python -m benchmarks.local_read
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
VENV="${ZARRTOK_PEERS_VENV:-.venv-peers}"
STAMP="$VENV/.peers-installed"
WANT="$(cat benchmarks/peers_env.sh pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
    echo "$VENV is up to date"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
LOG="$(mktemp -t zarrtok-peers.XXXXXX.log)"
echo "setting up $VENV (log: $LOG)"
step() {  # step <description> <pip args...>
    local what="$1"; shift
    echo "  $what"
    if ! "${PIP[@]}" "$@" >>"$LOG" 2>&1; then
        grep -v "^WARNING: Location" "$LOG" | tail -40
        echo "peers setup failed at: $what (full log: $LOG)" >&2
        exit 1
    fi
}
# torch first, pinned: 2.13.0 is the local CPU wheel; any other spec would pull a multi-GB CUDA build.
step "torch==2.13.0" torch==2.13.0
step "zarrtok[test] with constraints.txt" -c constraints.txt -e ".[test]"
# archai: only its dataset path is used. The full install pulls ray/onnx/... and its nlp extra pins
# transformers 4.27 (incompatible), so: no deps, plus the two modules its import chain needs.
step "archai==1.0.0 (--no-deps) + overrides + pyyaml" --no-deps archai==1.0.0
step "overrides==3.1.0 pyyaml" -c constraints.txt overrides==3.1.0 pyyaml
# litdata: --no-deps, then its runtime deps. A plain install drags in torchvision 0.28.0 from PyPI,
# which is broken against torch 2.13.0+cpu (`operator torchvision::nms does not exist`); litdata only
# imports torchvision lazily for image serializers, so it is left out.
step "litdata==0.2.76 (--no-deps)" --no-deps litdata==0.2.76
step "litdata's deps" -c constraints.txt lightning-utilities filelock boto3 requests urllib3 obstore tifffile
# wordfreq: build_peers draws its corpus from top_n_list("en", 30000); the word lists ship in the
# wheel (no download at run time). Its dependencies pinned to what was tested.
step "wordfreq==3.1.1" -c constraints.txt wordfreq==3.1.1 ftfy==6.3.1 langcodes==3.5.1 locate==1.1.1 \
    msgpack==1.2.4 wcwidth==0.9.4
# Sanity: every import the benchmark needs, and no torchvision.
"$VENV/bin/python" - <<'PY'
import importlib.util, torch, zarrtok, litdata, wordfreq
assert len(wordfreq.top_n_list("en", 30000)) == 30000
from litdata import optimize, StreamingDataset, StreamingDataLoader, TokensLoader
from archai.datasets.nlp.fast_hf_dataset_provider import FastHfDatasetProvider, FastHfDataset
assert importlib.util.find_spec("torchvision") is None, "torchvision installed: it is broken with torch 2.13.0+cpu"
print(f"installed: torch {torch.__version__}, zarrtok {zarrtok.__version__}, litdata {litdata.__version__}, archai 1.0.0")
PY
echo "$WANT" >"$STAMP"
