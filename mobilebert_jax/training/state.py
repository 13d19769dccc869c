"""Train state, its sharded creation, and orbax checkpoints (with the data-iterator position).

Creation follows big_vision/MaxText: `jax.eval_shape(init)` gives shapes and logical axes for free,
the rules turn them into `NamedSharding`s, and `jax.jit(init, out_shardings=...)` materialises every
param and optimizer-state leaf directly on its shard (nothing is ever gathered on one device).
Optimizer-state leaves take the sharding of the param they mirror (matched by tree path and shape).

Checkpoints are never lost to a restore: each committed step gets an integrity manifest (SHA-256 of its
files, `seal_checkpoints`), checked before it is read; an unreadable step is skipped for an older one
and set aside (kept) only when an older one restores; a step of another model is an error naming the
differing keys (`restore_latest`, `restore_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
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

from mobilebert_jax import storage
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
        storage.path(storage.abspath(directory)), options=options, item_names=("state", "data")
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

    Before reading any array: the step's files are checked (regular files only, each against the
    integrity manifest where there is one, with a time limit), then its tree against the target's.

    Args:
        mngr_or_dir: a manager or a checkpoint directory.
        abstract_state: target tree of `ShapeDtypeStruct` with `.sharding` (e.g. from
            `abstract_train_state` on the new mesh), or a concrete state (its shardings are used).
        step: step to restore (default: latest committed).

    Returns:
        (state with the static `tx` of `abstract_state`, data-iterator state dict, step).

    Raises:
        CheckpointUnreadable: files missing, damaged, not regular, or too slow to read.
        CheckpointMismatchError: the checkpoint holds another tree (names the differing keys).
    """
    mngr = mngr_or_dir if isinstance(mngr_or_dir, ocp.CheckpointManager) else checkpoint_manager(mngr_or_dir)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no committed checkpoint in {mngr.directory}")
    step_dir = storage.join(os.fspath(mngr.directory), str(step))
    verify_checkpoint(step_dir)
    target = jax.tree.map(_as_abstract, abstract_state)
    _with_timeout(lambda: check_fits(step_dir, target), step_dir, READ_TIMEOUT_S)
    try:
        out = mngr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        )
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files
        raise CheckpointUnreadable(f"{step_dir}: {_first_line(e)}") from e
    return out["state"], dict(out["data"] or {}), step


def _as_abstract(x: Any) -> Any:
    sharding = getattr(x, "sharding", None)
    if sharding is None:  # no mesh: restore onto the default device
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=sharding)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


class CheckpointReadError(RuntimeError):
    """No committed checkpoint of a run can be restored."""


class CheckpointUnreadable(OSError):
    """A checkpoint's files cannot be read back as written (missing, damaged, not regular, too slow)."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint of another model or optimizer (a usage error, not damage)."""


# ---------------------------------------------------------------------------------------------------
# Integrity and the restore policy. Every file-system operation on checkpoint directories is in the
# few functions below, through `mobilebert_jax.storage` (a local dir or a gs:// URL).
# ---------------------------------------------------------------------------------------------------
MANIFEST = "integrity.json"  # {"sha256": {relative path: hex digest}} of a committed step's files
READ_TIMEOUT_S = 600.0  # a checkpoint whose files take longer to read is treated as unreadable
QUARANTINE = ".unreadable-"  # `<step>.unreadable-<time>`: set aside, kept in the run dir


def _step_files(step_dir: str) -> list[str]:
    """Relative paths of the files of a step directory; anything but regular files and directories
    (a FIFO, a device, a link) is refused before it is opened (a bucket holds only objects)."""
    import stat

    if storage.is_url(step_dir):
        return [f for f in storage.files_under(step_dir) if f != MANIFEST]
    out = []
    for root, dirs, files in os.walk(step_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                out.append(os.path.relpath(path, step_dir))
            elif not stat.S_ISDIR(mode):
                raise CheckpointUnreadable(f"{path}: not a regular file")
    return sorted(f for f in out if f != MANIFEST)


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with storage.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _with_timeout(fn: Callable[[], Any], what: str, timeout: float) -> Any:
    """`fn()` in a daemon thread; `CheckpointUnreadable` when it takes longer than `timeout` s (a
    blocked read cannot be cancelled, only left behind)."""
    import threading

    box: dict[str, Any] = {}

    def run():
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise CheckpointUnreadable(f"{what}: reading took more than {timeout:.0f} s")
    if "err" in box:
        raise box["err"]
    return box.get("out")


def seal_checkpoints(mngr: ocp.CheckpointManager) -> None:
    """Writes the integrity manifest (SHA-256 of every file) of each committed step that lacks one.

    Call it after `wait_until_finished` (the steps are then complete); process 0 writes."""
    if jax.process_index() != 0:
        return
    for step in mngr.all_steps():
        d = storage.join(os.fspath(mngr.directory), str(step))
        path = storage.join(d, MANIFEST)
        if not storage.isdir(d) or storage.exists(path):
            continue
        digests = {f: _sha256(storage.join(d, f)) for f in _step_files(d)}
        storage.write_json(path, {"sha256": digests}, indent=1, sort_keys=True)


def verify_checkpoint(step_dir: str, timeout: float = READ_TIMEOUT_S) -> None:
    """Raises `CheckpointUnreadable` when a step's files are not regular, differ from its manifest
    (a step saved before manifests, or killed before its manifest was written, has none) or take
    longer than `timeout` s to read."""

    def check():
        files = _step_files(step_dir)
        path = storage.join(step_dir, MANIFEST)
        if not storage.exists(path):
            return
        want = json.loads(storage.read_text(path))["sha256"]
        missing = sorted(set(want) - set(files))
        if missing:
            raise CheckpointUnreadable(f"{step_dir}: missing {missing[:3]}")
        bad = [f for f in sorted(want) if _sha256(storage.join(step_dir, f)) != want[f]]
        if bad:
            raise CheckpointUnreadable(f"{step_dir}: {bad[:3]} differ from the checksum written at save")

    _with_timeout(check, step_dir, timeout)


def _key_str(path: tuple) -> str:
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "/".join(str(p) for p in parts)


def check_fits(step_dir: str, target: Any) -> None:
    """Raises `CheckpointMismatchError` naming the keys and shapes where the checkpoint's saved tree
    differs from `target`'s (missing, unexpected, other shape)."""
    try:
        meta = (
            ocp.StandardCheckpointer().metadata(storage.path(storage.join(step_dir, "state"))).item_metadata
        )
    except Exception as e:  # the metadata file itself is unreadable
        raise CheckpointUnreadable(f"{step_dir}: tree metadata: {_first_line(e)}") from e
    got = {_key_str(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(meta)}
    if not got:  # orbax reads damaged metadata as an empty tree (with a warning)
        raise CheckpointUnreadable(f"{step_dir}: no readable tree metadata")
    want = {_key_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    order = lambda keys: sorted(keys, key=lambda k: (not k.startswith("params/"), k))  # noqa: E731
    missing, unexpected = order(want.keys() - got.keys()), order(got.keys() - want.keys())
    shapes = [
        f"{k} checkpoint {got[k]}, model {want[k]}"
        for k in order(want.keys() & got.keys())
        if got[k] != want[k]
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{name} {len(keys)}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
            for name, keys in (("other shapes", shapes), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise CheckpointMismatchError(
            f"{step_dir} holds another model or optimizer than this run's ({'; '.join(parts)})"
        )


def stored_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Names of the step directories in a checkpoints directory, the set-aside (unreadable) ones too."""
    d = os.fspath(directory)
    if not storage.isdir(d):
        return []
    return sorted(
        n for n in storage.listdir(d) if n.isdigit() or (QUARANTINE in n and n.split(".")[0].isdigit())
    )


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> str:
    """Moves step `step` to `<step>.unreadable-<time>` beside it (orbax then no longer lists it, so the
    continuing run can save that step again); returns the new name."""
    bad = storage.join(os.fspath(mngr.directory), str(step))
    aside = f"{bad}{QUARANTINE}{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0 and storage.isdir(bad):
        storage.rename_dir(bad, aside)
    return storage.basename(aside)


def restore_latest(
    mngr: ocp.CheckpointManager, abstract_state: TrainState, warn: Callable[[str], None] | None = None
) -> tuple[TrainState, dict, int] | None:
    """The newest committed checkpoint that reads back, or None when there is none.

    A checkpoint that cannot be read (damaged, missing or non-regular files, a read past the time
    limit) is skipped for the previous one with a warning; only when an older one restores are the
    newer ones set aside to `<step>.unreadable-<time>` (kept, never deleted). When none can be read
    nothing is moved and `CheckpointReadError` is raised. A checkpoint of another model or optimizer
    raises `CheckpointMismatchError` (nothing moved).
    """
    warn = warn or log.warning
    skipped: list[tuple[int, Exception]] = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            out = restore_checkpoint(mngr, abstract_state, step)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # unreadable: try the previous one
            skipped.append((step, e))
            warn(f"warning: checkpoint step {step} in {mngr.directory} cannot be read ({_first_line(e)})")
            continue
        if skipped:
            names = [_set_aside(mngr, s) for s, _ in skipped]
            mngr.reload()
            warn(
                f"warning: falling back to step {step}; set aside (kept) in {mngr.directory}: "
                + ", ".join(names)
            )
        return out
    if skipped:
        raise CheckpointReadError(
            f"no checkpoint in {mngr.directory} can be read (nothing was moved; newest: "
            f"{_first_line(skipped[0][1])})"
        ) from skipped[0][1]
    return None


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, int | None]:
    """(checkpoints directory, step or None for the latest) for a `--resume_from_checkpoint` path.

    Accepts a step directory (`run/checkpoints/120`), a checkpoints directory or a run directory
    holding `checkpoints/`.
    """
    path = storage.abspath(path)
    if not storage.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such directory")
    base = storage.basename(path)
    if base.isdigit() and storage.isdir(storage.join(path, "state")):
        return storage.dirname(path), int(base)
    if storage.isdir(storage.join(path, "checkpoints")):
        path = storage.join(path, "checkpoints")
    steps = [int(n) for n in storage.listdir(path) if n.isdigit()]
    if not steps:
        raise FileNotFoundError(
            f"--resume_from_checkpoint {path}: no checkpoint here (expected a step directory such as "
            "run/checkpoints/100, a checkpoints/ directory, or a run directory)"
        )
    return path, None
