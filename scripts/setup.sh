#!/usr/bin/env bash
# Creates .venv (if missing) and installs the package with its test references.
# torch is pinned and installed first: any other torch request pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "${MOBILEBERT_JAX_NO_TORCH:-0}" != "1" ]; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test]"
