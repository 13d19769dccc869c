#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
# One persistent XLA cache for the run, shared by both workers: the many tests that build the same tiny
# model compile each step once (a fresh cache every run, so timings stay those of a fresh clone).
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
    export JAX_COMPILATION_CACHE_DIR="$PWD/.pytest_cache/xla"
    rm -rf "$JAX_COMPILATION_CACHE_DIR"
    mkdir -p "$JAX_COMPILATION_CACHE_DIR"
fi
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="${JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES:-0}"
# Two workers, one test file each at a time (module fixtures stay shared), the longest files first
# (tests/conftest.py orders them): much of the suite is single-threaded compilation, so two workers keep
# both cores busy.
exec python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
