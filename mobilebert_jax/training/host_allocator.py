"""The host allocator of CPU jobs: glibc malloc tuned so XLA's buffers are reused, not re-faulted.

XLA on CPU allocates every execution's temporaries and outputs anew (glibc `posix_memalign`) and frees
them when it ends. glibc serves large requests from worker threads with fresh `mmap`s (each thread has
its own arena, and an arena's heap cannot hold a block above 64 MB) and returns them on free, so the
next step touches every page again: a page fault per 4 KB of every temporary, in every step, which
on a small CPU is a large share of a fine-tuning step (the benchmark docs have the figures).

`tune_host_allocator()` sets three glibc options (`mallopt`): one arena (`M_ARENA_MAX=1`), no `mmap`
for large blocks (`M_MMAP_MAX=0`) and no trimming of the heap top (`M_TRIM_THRESHOLD`), so freed
buffers stay mapped and the next step reuses them without faulting. The cost: the process keeps its
peak memory until it exits, all threads share one malloc arena, and now and then a step grows the
heap once more by a temporary's size, when a small allocation took a piece of the freed block (rare,
and later steps reuse the grown heap). It changes no number.

The `mobilebert-jax` commands call it first thing, when JAX computes on the CPU; the environment
variable `MOBILEBERT_JAX_HOST_ALLOCATOR=system` keeps the system's malloc. In your own program, call
it before the first JAX computation (threads that already allocated keep their arenas).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

ENV = "MOBILEBERT_JAX_HOST_ALLOCATOR"
MODES = ("tuned", "system")
# glibc <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_INT_MAX = 2**31 - 1

_status: str | None = None


def _accelerator_plugin() -> str | None:
    """The first JAX accelerator plugin installed (CUDA, ROCm, TPU), or None."""
    names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    return names[0] if names else None


def _cpu_platform() -> tuple[bool, str]:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        first = platforms.split(",")[0].strip().lower()
        return first == "cpu", f"JAX_PLATFORMS={platforms}"
    plugin = _accelerator_plugin()
    return plugin is None, f"JAX plugin {plugin} installed" if plugin else "no accelerator plugin"


def tune_host_allocator(mode: str | None = None) -> str:
    """Applies the tuned glibc options (see the module docstring) where they apply; returns what it did,
    one line (also `status()`). `mode`: "tuned" or "system"; default: $MOBILEBERT_JAX_HOST_ALLOCATOR,
    else "tuned". Tuning applies only on Linux with glibc and when JAX's first platform is the CPU
    (`JAX_PLATFORMS`, else no accelerator plugin installed); calling it again changes nothing."""
    global _status
    if _status is not None:
        return _status
    given = mode if mode is not None else os.environ.get(ENV, "tuned")
    if given not in MODES:
        source = "mode" if mode is not None else f"${ENV}"
        raise ValueError(f"{source} must be one of {MODES}, got {given!r}")
    if given == "system":
        _status = f"system malloc ({ENV}=system)" if mode is None else "system malloc (as asked)"
        return _status
    cpu, why = _cpu_platform()
    if not cpu:
        _status = f"system malloc (JAX computes on an accelerator: {why})"
        return _status
    if not sys.platform.startswith("linux"):
        _status = f"system malloc (tuning is for glibc; this is {sys.platform})"
        return _status
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):
        _status = "system malloc (not glibc)"
        return _status
    ok = all(
        libc.mallopt(opt, value) == 1
        for opt, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
    )
    _status = (
        f"glibc {version} malloc tuned for XLA's CPU buffers (one arena, no mmap, no trim; "
        f"{ENV}=system to keep the system's)"
        if ok
        else f"system malloc (glibc {version} refused mallopt)"
    )
    return _status


def status() -> str | None:
    """What `tune_host_allocator` did in this process (None: not called)."""
    return _status
