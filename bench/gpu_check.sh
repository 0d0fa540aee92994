#!/usr/bin/env bash
# The GPU check (issue 19): engine tests on the device, the headline, benchmarks, largest n and P.
# One call on the GPU machine, from the repository root:
#     OUT=$OUT bash bench/gpu_check.sh                 # device auto (CUDA when present), full sizes
# The CPU check of the same code (about two minutes):
#     bash bench/gpu_check.sh --device cpu --quick
# Results go to $OUT (default bench/results/gpu): results.json, results.md, <step>.json, tests.xml, logs/.
# Any other arguments go to bench/gpu_check.py (--only STEP..., --skip STEP..., --pytest-k EXPR).
set -uo pipefail
cd "$(dirname "$0")/.."
# The GPU machine's own python3 (torch with CUDA); the project's .venv (CPU torch) only when asked.
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
"$PY" -c "import torch, ntk_studio.core" || { echo "gpu_check: $PY cannot import torch and ntk_studio.core" >&2; exit 2; }
case " $* " in *" --device "*) DEV=() ;; *) DEV=(--device auto) ;; esac
"$PY" bench/gpu_check.py "${DEV[@]}" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
