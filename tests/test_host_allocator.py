"""The host allocator of CPU jobs (training/host_allocator.py), each case in a fresh process: the tuning
must come before JAX starts its threads, and it lasts for the process.

The effect is measured, not assumed: a jitted step with a 64 MB temporary, run again and again, page-
faults that memory on every call under the system's malloc, and once tuned, in the typical call not at
all. (Tuned, a call now and then still grows the heap by the temporary's size and faults it, when a
small allocation took a piece of the freed block: hence the median over 15 calls, not the mean.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r"""
import json, resource, statistics, sys
mode = sys.argv[1]
from mobilebert_jax import tune_host_allocator
status = tune_host_allocator(None if mode == "env" else mode)
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MB
w = jnp.ones((4096, 8), jnp.float32)
f = jax.jit(lambda x, w: jax.lax.optimization_barrier(x * 2.0 + 1.0) @ w)  # a 64 MB temporary
for _ in range(3):
    f(x, w).block_until_ready()
per_call = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"status": status, "faults_per_call": statistics.median(per_call), "all": per_call}))
"""


def _probe(mode: str, **env: str) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "MOBILEBERT_JAX_HOST_ALLOCATOR"}
    full_env.update(JAX_PLATFORMS="cpu", **env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tuning is for glibc on Linux")
def test_tuned_malloc_reuses_xla_buffers_instead_of_faulting_them_again():
    system = _probe("system")
    tuned = _probe("tuned")
    assert system["status"] == "system malloc (as asked)"
    assert tuned["status"].startswith("glibc ") and "tuned" in tuned["status"]
    # 64 MB in 4 KB pages is 16,384 faults: the system's malloc maps the temporary anew every call
    assert system["faults_per_call"] > 8000, system  # (medians over 15 calls)
    assert tuned["faults_per_call"] < 0.05 * system["faults_per_call"], (tuned, system)


def test_environment_variable_and_platform_decide(monkeypatch):
    assert _probe("env", MOBILEBERT_JAX_HOST_ALLOCATOR="system")["status"] == (
        "system malloc (MOBILEBERT_JAX_HOST_ALLOCATOR=system)"
    )
    from mobilebert_jax.training import host_allocator

    monkeypatch.setattr(host_allocator, "_status", None)  # as in a fresh process; restored after
    monkeypatch.setenv("MOBILEBERT_JAX_HOST_ALLOCATOR", "fast")
    with pytest.raises(
        ValueError, match=r"\$MOBILEBERT_JAX_HOST_ALLOCATOR must be one of \('tuned', 'system'\)"
    ):
        host_allocator.tune_host_allocator()
    # an accelerator first: nothing is tuned (its host buffers are small)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert host_allocator._cpu_platform() == (False, "JAX_PLATFORMS=cuda,cpu")
    assert host_allocator.tune_host_allocator("tuned") == (
        "system malloc (JAX computes on an accelerator: JAX_PLATFORMS=cuda,cpu)"
    )


def test_cli_names_a_bad_value_in_one_line():
    env = {**os.environ, "MOBILEBERT_JAX_HOST_ALLOCATOR": "fast", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "mobilebert_jax.cli", "convert", "in", "out"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: $MOBILEBERT_JAX_HOST_ALLOCATOR must be one of ('tuned', 'system'), got 'fast' "
        "(--debug shows the traceback)"
    ]
