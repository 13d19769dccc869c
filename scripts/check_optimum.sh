#!/usr/bin/env bash
# ONNX exports in HF optimum (ORTModelFor*) and HF pipelines vs HF PyTorch, in a venv of their own
# (optimum-onnx needs transformers 4.x; the project pins transformers 5).
#
#   scripts/check_optimum.sh [OUT [EXPORT FLAGS]]
#   PYTHON: the project's python (default .venv/bin/python); OPTIMUM_VENV: where the optimum venv lives
#   (default /tmp/optimum-venv). EXPORT FLAGS: trained models instead of random ones, e.g.
#   scripts/check_optimum.sh out/optimum --classifier-model runs/sst2/hf_model --sst2-skip 600 \
#       --sst2-texts 272 --qa-model runs/squad/hf_model
# Output: docs/deploy_clients.md quotes it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
VENV=${OPTIMUM_VENV:-/tmp/optimum-venv}
OUT=${1:-$(mktemp -d)}
shift || true
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    # torch first and pinned: any other torch request pulls GBs of CUDA wheels
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q "transformers==4.57.*" "optimum[onnxruntime]"
fi
"$PY" "$ROOT/scripts/check_optimum.py" export "$OUT" "$@"
"$VENV/bin/python" "$ROOT/scripts/check_optimum.py" check "$OUT"
