#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
# Two workers, one test file each at a time (module fixtures stay shared): much of the suite is
# single-threaded compilation, so two workers keep both cores busy.
exec python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
