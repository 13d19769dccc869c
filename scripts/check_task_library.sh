#!/usr/bin/env bash
# Device-ready exports in the TFLite Task Library (tflite-support 0.4.4) vs HF PyTorch, in its own venv
# (tflite-support pins old numpy/protobuf and needs Python <= 3.11 and libusb-1.0).
#
#   scripts/check_task_library.sh [OUT [--classifier-model HF_DIR] [--qa-model HF_DIR]]
#                                           # PYTHON: the project's python (default .venv/bin/python)
#                                           # TFLS_VENV: where the tflite-support venv lives
# Output: docs/deploy_clients.md quotes it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
VENV=${TFLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mobilebert-jax/tflite-support-venv}
OUT=${1:-$(mktemp -d)}
if ! ldconfig -p | grep -q libusb-1.0; then
    echo "tflite-support needs libusb-1.0: apt-get install -y libusb-1.0-0" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3.11 -m venv "$VENV"
    "$VENV/bin/pip" install -q "tflite-support==0.4.4" "numpy<2"
fi
"$PY" "$ROOT/scripts/check_task_library.py" export "$OUT" "${@:2}"
"$VENV/bin/python" "$ROOT/scripts/check_task_library.py" check "$OUT"
