#!/usr/bin/env bash
# Creates .venv (if missing) and installs the package.
#   bash scripts/setup.sh        # run-time dependencies only (the main job)
#   bash scripts/setup.sh test   # plus the test references (torch, transformers, ...)
# torch is pinned and installed first: any other torch request pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[test]"
else
  python -m pip install -q -e .
fi
