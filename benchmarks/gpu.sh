#!/usr/bin/env bash
# GPU figures in one command, on a bare machine with an NVIDIA GPU and Python 3.10+:
#
#   bash benchmarks/gpu.sh                  # set-up (two venvs, a few minutes), then ~6 min of measuring
#   bash benchmarks/gpu.sh --dry-run        # tiny config on CPU: the same code path, for CI
#   bash benchmarks/gpu.sh --json out.json --attention-dropout 0    # any bench_gpu.py flag passes through
#
# Two virtual environments keep the sides apart (jax[cuda12] and torch each bring their own CUDA
# libraries): .venv-gpu-jax (jax with CUDA 12 wheels + this package) runs our side and the
# coordinator, .venv-gpu-torch (torch + transformers, no JAX) the HF reference. With --dry-run and
# every package importable by $PYTHON (default python3, e.g. the test venv), nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dry=0
for a in "$@"; do [ "$a" = --dry-run ] && dry=1; done
if [ "$dry" = 1 ] && PYTHONPATH=$PWD "$PY" -c "import jax, flax, optax, torch, transformers, mobilebert_jax" 2>/dev/null; then
  exec env PYTHONPATH="$PWD" "$PY" benchmarks/bench_gpu.py "$@"
fi
JAXV=${JAX_VENV:-.venv-gpu-jax}
TORCHV=${TORCH_VENV:-.venv-gpu-torch}
if [ ! -x "$JAXV/bin/python" ]; then
  "$PY" -m venv "$JAXV"
  "$JAXV/bin/pip" install -q --upgrade pip
  if [ "$dry" = 1 ]; then "$JAXV/bin/pip" install -q -e .; else "$JAXV/bin/pip" install -q "jax[cuda12]" -e .; fi
fi
if [ ! -x "$TORCHV/bin/python" ]; then
  "$PY" -m venv "$TORCHV"
  "$TORCHV/bin/pip" install -q --upgrade pip
  if [ "$dry" = 1 ]; then "$TORCHV/bin/pip" install -q torch==2.13.0; else "$TORCHV/bin/pip" install -q torch; fi
  "$TORCHV/bin/pip" install -q "transformers>=5,<6" numpy
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec env PYTHONPATH="$PWD" "$JAXV/bin/python" benchmarks/bench_gpu.py --torch-python "$TORCHV/bin/python" "$@"
