"""Train state, its sharded creation, and orbax checkpoints (with the data-iterator position).

Creation follows big_vision/MaxText: `jax.eval_shape(init)` gives shapes and logical axes for free,
the rules turn them into `NamedSharding`s, and `jax.jit(init, out_shardings=...)` materialises every
param and optimizer-state leaf directly on its shard (nothing is ever gathered on one device).
Optimizer-state leaves take the sharding of the param they mirror (matched by tree path and shape).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobilebert_jax.training import sharding as shd

log = logging.getLogger(__name__)


class TrainState(flax.struct.PyTreeNode):
    """step (int32 scalar: updates applied), params, opt_state; `tx` is static (not checkpointed)."""

    step: jax.Array
    params: Any
    opt_state: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx)

    def apply_gradients(self, grads: Any) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def model_init_fn(model: nn.Module, example_batch: dict[str, Any]) -> Callable[[jax.Array], Any]:
    """`rng -> variables` (boxed, with logical axes) for `model` on an example batch's shapes.

    Only the model-input keys of `example_batch` are used (input_ids, attention_mask,
    token_type_ids, position_ids); their values do not matter, only shapes and dtypes.
    """
    keys = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
    inputs = {k: jnp.zeros(jnp.shape(v), jnp.int32) for k, v in example_batch.items() if k in keys}
    if "input_ids" not in inputs:
        raise ValueError(f"example_batch needs 'input_ids'; got keys {sorted(example_batch)}")

    def init(rng):
        return model.init({"params": rng, "dropout": rng}, **inputs, deterministic=True)

    return init


def _suffix_index(param_shardings: Any, abstract_params: Any) -> dict[tuple, tuple]:
    out = {}
    for (path, s), x in zip(
        jax.tree_util.tree_leaves_with_path(param_shardings, is_leaf=lambda v: v is None),
        jax.tree.leaves(abstract_params),
    ):
        key = tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
        out[key] = (tuple(x.shape), s)
    return out


def state_shardings(abstract_state: TrainState, param_shardings: Any, mesh: Mesh | None) -> Any:
    """Shardings for every leaf of `abstract_state` (None leaves without a mesh).

    Params get `param_shardings`; an optimizer-state leaf whose trailing dict-key path and shape equal
    a param's gets that param's sharding (Adam's mu/nu, also inside `multi_transform` and `masked`);
    every other leaf (counts, scalars) is replicated.
    """
    if mesh is None:
        return jax.tree.map(lambda _: None, abstract_state)
    index = _suffix_index(param_shardings, abstract_state.params)
    rep = NamedSharding(mesh, PartitionSpec())

    def for_opt(path, x):
        keys = []
        for k in reversed(path):
            if not isinstance(k, jax.tree_util.DictKey):
                break
            keys.append(str(k.key))
        hit = index.get(tuple(reversed(keys)))
        return hit[1] if hit is not None and hit[0] == tuple(x.shape) else rep

    return abstract_state.replace(
        step=rep,
        params=param_shardings,
        opt_state=jax.tree_util.tree_map_with_path(for_opt, abstract_state.opt_state),
    )


@dataclasses.dataclass(frozen=True)
class ShardedState:
    """What `create_train_state` returns: the state and the shardings the steps are jitted with.

    Attributes:
        state: the `TrainState` (arrays already on their shards).
        shardings: same tree of `NamedSharding` (None leaves without a mesh).
        logical_specs: logical `PartitionSpec`s of the params (from the model's annotations).
    """

    state: TrainState
    shardings: Any
    logical_specs: Any


def abstract_train_state(
    init_fn: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh | None = None,
    rules: shd.Rules | None = None,
) -> tuple[TrainState, Any, Any]:
    """(abstract state of `ShapeDtypeStruct`s carrying shardings, state shardings, logical specs).

    Costs no FLOPs and no memory: use it as the restore target on any mesh.
    """
    boxed = jax.eval_shape(init_fn, rng)
    logical = nn.get_partition_spec(boxed)["params"]
    abstract_params = nn.meta.unbox(boxed)["params"]
    p_shard = shd.logical_to_sharding(logical, abstract_params, mesh, rules)
    abstract = jax.eval_shape(lambda p: TrainState.create(p, tx), abstract_params)
    shardings = state_shardings(abstract, p_shard, mesh)
    if mesh is None:
        return abstract, shardings, logical
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract,
        shardings,
        is_leaf=lambda v: isinstance(v, jax.ShapeDtypeStruct),
    )
    return abstract, shardings, logical


def create_train_state(
    init_fn: Callable[[jax.Array], Any],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh | None = None,
    rules: shd.Rules | None = None,
    params: Any = None,
    compiler_options: dict[str, Any] | None = None,
) -> ShardedState:
    """Creates the train state directly sharded: eval_shape → shardings → jit(init, out_shardings).

    Args:
        init_fn: `rng -> variables` with logical boxes (e.g. `model_init_fn(model, batch)`).
        tx: the optax optimizer.
        rng: init key (`jax.random.key(seed)`).
        mesh, rules: from `sharding.make_mesh` / `sharding.logical_rules` (None: one device).
        params: optional pretrained params (plain arrays, same tree as the model's); they are placed on
            their shards and the optimizer state is initialised from them.
        compiler_options: XLA options for the init compile (e.g. {"xla_backend_optimization_level": 0}).

    Returns:
        `ShardedState(state, shardings, logical_specs)`.
    """
    abstract, shardings, logical = abstract_train_state(init_fn, tx, rng, mesh, rules)
    # Without a mesh, commit the state to the default device: a restored state is committed too, and
    # jit keys its cache on that, so a resumed run then reuses the same executable.
    out_shardings = shardings if mesh is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with shd.mesh_context(mesh, rules):
        if params is None:

            def init(r):
                return TrainState.create(nn.meta.unbox(init_fn(r))["params"], tx)

            state = jax.jit(init, out_shardings=out_shardings, compiler_options=compiler_options)(rng)
        else:
            _check_same_tree(params, abstract.params)
            if mesh is not None:
                params = jax.device_put(params, shardings.params)
            state = jax.jit(
                lambda p: TrainState.create(p, tx),
                out_shardings=out_shardings,
                compiler_options=compiler_options,
            )(params)
    return ShardedState(state=state, shardings=shardings, logical_specs=logical)


def _check_same_tree(params: Any, expected: Any) -> None:
    from mobilebert_jax.training.optim import path_str

    got = {path_str(p): tuple(jnp.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    want = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    bad = [
        f"{k}: expected {want[k]}, got {got[k]}"
        for k in sorted(want.keys() & got.keys())
        if want[k] != got[k]
    ]
    if missing or unexpected or bad:
        raise ValueError(
            f"params do not match the model: missing {missing}, unexpected {unexpected}, wrong shapes {bad}"
        )


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def checkpoint_manager(
    directory: str | os.PathLike, save_every: int = 1000, max_to_keep: int | None = 3, async_save: bool = True
) -> ocp.CheckpointManager:
    """An orbax `CheckpointManager` with items "state" (the TrainState) and "data" (iterator JSON)."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every,
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)), options=options, item_names=("state", "data")
    )


def save_checkpoint(
    mngr: ocp.CheckpointManager,
    step: int,
    state: TrainState,
    data_state: dict | None = None,
    force: bool = False,
) -> bool:
    """Saves (asynchronously when the manager is async) `state` and the iterator position."""
    args = {"state": ocp.args.StandardSave(state)}
    args["data"] = ocp.args.JsonSave(data_state if data_state is not None else {})
    return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore_checkpoint(
    mngr_or_dir: ocp.CheckpointManager | str | os.PathLike,
    abstract_state: TrainState,
    step: int | None = None,
) -> tuple[TrainState, dict, int]:
    """Restores onto the shardings carried by `abstract_state` (any mesh, any device count).

    Args:
        mngr_or_dir: a manager or a checkpoint directory.
        abstract_state: target tree of `ShapeDtypeStruct` with `.sharding` (e.g. from
            `abstract_train_state` on the new mesh), or a concrete state (its shardings are used).
        step: step to restore (default: latest committed).

    Returns:
        (state with the static `tx` of `abstract_state`, data-iterator state dict, step).
    """
    mngr = mngr_or_dir if isinstance(mngr_or_dir, ocp.CheckpointManager) else checkpoint_manager(mngr_or_dir)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no committed checkpoint in {mngr.directory}")
    target = jax.tree.map(_as_abstract, abstract_state)
    out = mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    )
    return out["state"], dict(out["data"] or {}), step


def _as_abstract(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    if sharding is None:  # no mesh: restore onto the default device
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=sharding)


def restore_latest(
    mngr: ocp.CheckpointManager, abstract_state: TrainState, warn: Callable[[str], None] | None = None
) -> tuple[TrainState, dict, int] | None:
    """The newest committed checkpoint that reads back, or None when there is none.

    A checkpoint that fails to restore (truncated or corrupted files, a half-finished copy) is moved
    aside to `<step>.corrupt-<time>` (orbax then no longer lists it, so the step can be saved again)
    and the previous one is tried, with a warning naming both. If every checkpoint fails, the error
    of the newest is raised.
    """
    warn = warn or log.warning
    first_error: Exception | None = None
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            return restore_checkpoint(mngr, abstract_state, step)
        except Exception as e:  # orbax/tensorstore raise many types for unreadable files
            first_error = first_error or e
            bad = os.path.join(os.fspath(mngr.directory), str(step))
            aside = f"{bad}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            if jax.process_index() == 0 and os.path.isdir(bad):
                os.rename(bad, aside)
            mngr.reload()
            rest = [s for s in mngr.all_steps() if s < step]
            warn(
                f"warning: checkpoint step {step} in {mngr.directory} cannot be read ({type(e).__name__}: "
                f"{msg}); moved it to {os.path.basename(aside)}; "
                + (f"falling back to step {max(rest)}" if rest else "no earlier checkpoint")
            )
    if first_error is not None:
        raise CheckpointReadError(
            f"no checkpoint in {mngr.directory} can be read (newest error: {first_error})"
        ) from first_error
    return None


class CheckpointReadError(RuntimeError):
    """No committed checkpoint of a run can be restored."""


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, int | None]:
    """(checkpoints directory, step or None for the latest) for a `--resume_from_checkpoint` path.

    Accepts a step directory (`run/checkpoints/120`), a checkpoints directory or a run directory
    holding `checkpoints/`.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such directory")
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(base)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    steps = [int(n) for n in os.listdir(path) if n.isdigit()]
    if not steps:
        raise FileNotFoundError(
            f"--resume_from_checkpoint {path}: no checkpoint here (expected a step directory such as "
            "run/checkpoints/100, a checkpoints/ directory, or a run directory)"
        )
    return path, None
