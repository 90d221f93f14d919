#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.10+, no torch needed): creates .venv with
# torch 2.13.0 (CPU), compress itself with its test/bench/cluster extras (and the `compress-bench` command), and every model family's
# package (scripts/install_models.sh). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build
"$PIP" install -q "torch==2.13.0"
"$PIP" install -q -e ".[test,bench,cluster]"
if [ -f scripts/install_models.sh ]; then
  PIP="$PIP" bash scripts/install_models.sh
fi
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} replaced 2.13.0: an install step ignored the pin"
PY
