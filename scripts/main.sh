#!/usr/bin/env bash
# The main job: set-up on a fresh machine, then a complete fine-tuning run on CPU (a few minutes):
# QNLI-derived text shipped in the package, a 2-layer MobileBERT from random init, evaluation against the
# majority-class baseline, an orbax checkpoint, an HF-format export, metrics.jsonl and loss.png in runs/main.
# Extra flags pass through, e.g. `bash scripts/main.sh --model path/to/mobilebert-uncased`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec mobilebert-jax demo "$@"
