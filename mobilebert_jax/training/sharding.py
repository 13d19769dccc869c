"""Mesh, logical-axis rules and shardings: the one place that knows about devices.

Modules annotate params and activations with logical axis names only (`model/layers.py`); this module
maps those names to mesh axes. Mesh axes are `("data", "fsdp", "tensor")`:

- `data`: pure data parallelism (params replicated across it);
- `fsdp`: data parallelism whose params and optimizer state are sharded across it (ZeRO-3 style);
- `tensor`: tensor (model) parallelism over attention heads, FFN width and vocabulary.

The batch dimension is always split over `data` × `fsdp`. Without a mesh (1 device, Colab CPU) the
annotations do nothing and every helper here returns `None` shardings, so the same code runs.

Example::

    mesh = make_mesh(data=-1, fsdp=2)                 # 8 devices -> data=4, fsdp=2
    rules = logical_rules("fsdp", mesh=mesh, config=cfg)
    with mesh_context(mesh, rules):
        ...  # trace/jit steps here so linen's logical constraints see the mesh and rules
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")

Rules = tuple[tuple[str, Any], ...]

# The one table of logical-axis rules. Order is priority: flax assigns each mesh axis to the first
# logical axis (in rule order) that claims it, so `batch` comes first and an activation
# ("batch", "length", "embed") never gets `fsdp` twice. Names not listed stay replicated.
_BATCH_RULE: Rules = (("batch", BATCH_AXES),)
# FSDP: shard each param along its widest dimension (vocab > mlp/heads > bottleneck > E). `embed` (the
# residual width H) is left out: sharding it made GSPMD split activations' feature dim against their
# batch sharding (an "involuntary full rematerialization" of the position-embedding lookup); the params
# with only an `embed` axis (position/type tables, pooler, H-wide norms: ~0.6M of 25M) stay replicated.
_FSDP_RULES: Rules = (
    ("vocab", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
    ("bottleneck", "fsdp"),
    ("word_embed", "fsdp"),
)
# Tensor parallel (Megatron style): column-parallel q/k/v and FFN-in, row-parallel output denses.
_TENSOR_RULES: Rules = (("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))
RULES: dict[str, Rules] = {
    "dp": _BATCH_RULE,
    "fsdp": _BATCH_RULE + _FSDP_RULES,
    "tensor": _BATCH_RULE + _TENSOR_RULES,
    "fsdp_tensor": _BATCH_RULE + _TENSOR_RULES + _FSDP_RULES,
}
DEFAULT_RULES = "dp"


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh over ("data", "fsdp", "tensor") with `AxisType.Auto` axes.

    Linen's logical constraints call `with_sharding_constraint`, which is what Auto axes take;
    Explicit axes would make them reshard or fail, so they are never used here.

    Args:
        data, fsdp, tensor: axis sizes; exactly one may be -1, meaning "all remaining devices".
        devices: devices to use (default: all of `jax.devices()`).

    Returns:
        A `jax.sharding.Mesh` of shape (data, fsdp, tensor).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh axis sizes must be positive or -1, got data={data}, fsdp={fsdp}, tensor={tensor}"
        )
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(f"{n} devices are not divisible by the fixed mesh axes (product {known})")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
            f"{math.prod(sizes)} devices, {n} available"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_axis_sizes(config: Any) -> dict[str, int]:
    """Sizes of the model's logical axes for a `MobileBertConfig` (used to check divisibility)."""
    return {
        "vocab": config.vocab_size,
        "word_embed": config.embedding_size,
        "embed": config.hidden_size,
        "bottleneck": config.true_hidden_size,
        "heads": config.true_hidden_size,  # the flattened N*d projection width
        "mlp": config.intermediate_size,
        "layers": config.num_hidden_layers,
    }


def logical_rules(kind: str = DEFAULT_RULES, mesh: Mesh | None = None, config: Any = None) -> Rules:
    """The rule set `kind` ("dp", "fsdp", "tensor", "fsdp_tensor") from the one table `RULES`.

    With a mesh and a config, a rule whose logical axis size is not divisible by its mesh axes is
    dropped (that axis stays replicated, params and activations alike) and a warning says so once.
    """
    if kind not in RULES:
        raise ValueError(f"unknown sharding rules {kind!r}; choose one of {sorted(RULES)}")
    rules = RULES[kind]
    if mesh is None or config is None:
        return rules
    sizes = logical_axis_sizes(config)
    kept, dropped = [], []
    for name, axes in rules:
        n = _mesh_size(mesh, axes)
        if name in sizes and sizes[name] % n:
            dropped.append(f"{name}={sizes[name]} over {axes} (size {n})")
        else:
            kept.append((name, axes))
    if dropped:
        log.warning("sharding rules %r: replicating %s (not divisible)", kind, "; ".join(dropped))
    return tuple(kept)


@contextlib.contextmanager
def mesh_context(mesh: Mesh | None, rules: Rules | None = None) -> Iterator[None]:
    """Sets the mesh and the logical rules for tracing (no-op for `mesh=None`)."""
    if mesh is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules if rules is not None else RULES[DEFAULT_RULES]):
        yield


def _mesh_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


def logical_to_sharding(
    logical_specs: Any, shapes: Any, mesh: Mesh | None, rules: Rules | None = None
) -> Any:
    """Logical PartitionSpecs → `NamedSharding`s (or all `None` without a mesh).

    A dimension whose size does not divide its mesh axes is replicated instead; one warning lists
    every such dimension.

    Args:
        logical_specs: pytree of logical `PartitionSpec` (e.g. `nn.get_partition_spec(variables)`).
        shapes: matching pytree of arrays or `ShapeDtypeStruct` (anything with `.shape`).
        mesh: the mesh, or None.
        rules: logical-axis rules (default `RULES["dp"]`).

    Returns:
        Pytree of `NamedSharding` with the structure of `shapes` (None leaves without a mesh).
    """
    if mesh is None:
        return jax.tree.map(lambda _: None, shapes)
    rules = rules if rules is not None else RULES[DEFAULT_RULES]
    fallbacks: list[str] = []

    def one(path, spec, x):
        mesh_spec = nn.logical_to_mesh_axes(
            tuple(spec) if spec is not None else (None,) * len(x.shape), rules
        )
        dims = list(mesh_spec) + [None] * (len(x.shape) - len(mesh_spec))
        for i, axes in enumerate(dims):
            if axes is not None and x.shape[i] % _mesh_size(mesh, axes):
                fallbacks.append(f"{jax.tree_util.keystr(path)} dim {i} ({x.shape[i]} over {axes})")
                dims[i] = None
        return NamedSharding(mesh, PartitionSpec(*dims))

    out = jax.tree_util.tree_map_with_path(
        one, logical_specs, shapes, is_leaf=lambda s: isinstance(s, PartitionSpec) or s is None
    )
    if fallbacks:
        _warn_once("replicating dims not divisible by their mesh axes: " + ", ".join(fallbacks))
    return out


def batch_sharding(mesh: Mesh | None) -> NamedSharding | None:
    """Sharding of every batch array: leading (batch) dim over data × fsdp, the rest replicated."""
    if mesh is None:
        return None
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def make_global_batch(local_batch: Mapping[str, Any], sharding: NamedSharding | None) -> dict[str, jax.Array]:
    """This host's slice of the batch → global arrays sharded over the batch axes.

    Each process passes its own rows ([B_global / process_count, ...]); on one host that is the
    whole batch. Without a mesh the arrays are just put on the default device.

    Args:
        local_batch: dict of host numpy arrays, leading dim = per-host batch size.
        sharding: `batch_sharding(mesh)` or None.

    Returns:
        dict of `jax.Array` with leading dim = global batch size.
    """
    if sharding is None:
        return {k: jax.numpy.asarray(v) for k, v in local_batch.items()}
    out = {}
    n_proc = jax.process_count()
    for k, v in local_batch.items():
        v = np.asarray(v)
        if v.ndim == 0:
            raise ValueError(f"batch[{k!r}] is a scalar; every batch entry needs a leading batch dim")
        global_shape = (v.shape[0] * n_proc,) + v.shape[1:]
        n_shards = _mesh_size(sharding.mesh, BATCH_AXES)
        if global_shape[0] % n_shards:
            raise ValueError(
                f"batch[{k!r}] global batch size {global_shape[0]} is not divisible by the "
                f"data x fsdp mesh size {n_shards}"
            )
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out


def host_slice(global_batch_size: int) -> slice:
    """Rows of a global batch that this process feeds (contiguous, process-index order)."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {n} processes")
    per = global_batch_size // n
    i = jax.process_index()
    return slice(i * per, (i + 1) * per)


def host_rows(global_batch: Mapping[str, Any]) -> dict[str, Any]:
    """This process's rows (`host_slice`) of a batch every process holds whole (e.g. eval batches)."""
    n = {k: len(v) for k, v in global_batch.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"batch arrays have different leading dims: {n}")
    rows = host_slice(next(iter(n.values())))
    return {k: v[rows] for k, v in global_batch.items()}


# Multi-process set-up. JAX itself reads JAX_COORDINATOR_ADDRESS (and JAX_LOCAL_DEVICE_IDS); the
# process count and index have no JAX variable, so we read these two (flags override all three).
DISTRIBUTED_ENV = "MOBILEBERT_JAX_DISTRIBUTED"
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def maybe_initialize_distributed(
    enable: bool | None = None,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> bool:
    """Calls `jax.distributed.initialize(...)` when asked to (flag or env var).

    On TPU pods and SLURM/Open MPI clusters `initialize()` needs no arguments. Elsewhere (several
    processes on one machine, a plain GPU cluster) give the coordinator's `host:port`, the number of
    processes and this process's index, as arguments or as `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. CPU devices talk through gloo collectives (set here unless
    `JAX_CPU_COLLECTIVES_IMPLEMENTATION` says otherwise). Must run before any other JAX call.

    Args:
        enable: True/False; None reads `MOBILEBERT_JAX_DISTRIBUTED` ("1"/"true" enables).
        coordinator_address, num_processes, process_id: see above (None: environment, then
            JAX's cluster auto-detection).
        kwargs: passed on to `jax.distributed.initialize` (e.g. `initialization_timeout`).

    Returns:
        Whether it initialized.
    """
    if enable is None:
        enable = os.environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes")
    if not enable:
        return False
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    num_processes = num_processes if num_processes is not None else _env_int(NUM_PROCESSES_ENV)
    process_id = process_id if process_id is not None else _env_int(PROCESS_ID_ENV)
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in [0, {num_processes}) (num processes)")
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
