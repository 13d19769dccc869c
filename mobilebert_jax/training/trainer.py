"""Train/eval steps (jit with shardings, donation, exact gradient accumulation) and the `fit` loop.

Sections: steps · evaluation · fit (data iterators in `data.py`, logging in `metrics.py`). The steps
take a loss function of the form in `objectives.py` (`(params, batch, rng, deterministic) ->
(sums, (counts, aux))`), so accumulating micro-batches is exact under padding: gradients and sums
add, counts add, and the objective Σ sums/counts is divided by the totals of the whole batch.

Precision: pass `dtype=jnp.bfloat16` to the model for bf16 compute; params, gradients, optimizer
state and losses stay float32 (the model keeps softmax, norms and logits in float32).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mobilebert_jax import storage
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.data import ArrayIterator, DataIterator
from mobilebert_jax.training.metrics import MetricsWriter, plot_loss_curve
from mobilebert_jax.training.objectives import LossFn, objective
from mobilebert_jax.training.optim import Schedule, learning_rate_at
from mobilebert_jax.training.state import (
    CheckpointMismatchError,
    CheckpointReadError,
    TrainState,
    checkpoint_manager,
    resolve_checkpoint,
    restore_checkpoint,
    restore_latest,
    save_checkpoint,
    seal_checkpoints,
    stored_checkpoints,
)

log = logging.getLogger(__name__)
Metrics = dict[str, jax.Array]

__all__ = [
    "ArrayIterator",  # from training.data: the trainer's data API in one import
    "DataIterator",
    "FitConfig",
    "FitResult",
    "NonFiniteError",
    "evaluate",
    "finalize_eval",
    "fit",
    "loss_and_grads",
    "make_eval_step",
    "make_predict_step",
    "make_train_step",
    "plot_loss_curve",
    "to_host",
]

# ---------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------


def _as_terms(x: Any) -> dict[str, jax.Array]:
    return x if isinstance(x, dict) else {"loss": x}


def _split_micro(batch: dict, m: int) -> dict:
    """[B, ...] → [m, B/m, ...]; micro-batch j takes rows j, j+m, ... so each stays spread over devices."""

    def one(k, x):
        b = x.shape[0]
        if b % m:
            raise ValueError(f"batch[{k!r}] has batch size {b}, not divisible by num_micro_batches={m}")
        y = x.reshape((b // m, m) + x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(y, (None, "batch") + (None,) * (y.ndim - 2))

    return {k: one(k, v) for k, v in batch.items()}


def _num_tokens(batch: dict) -> jax.Array:
    if "attention_mask" in batch:
        return jnp.sum(batch["attention_mask"] > 0).astype(jnp.float32)
    return jnp.asarray(np.prod(batch["input_ids"].shape), jnp.float32)


def loss_and_grads(
    loss_fn: LossFn,
    params: Any,
    batch: dict,
    rng: jax.Array,
    num_micro_batches: int = 1,
    grad_shardings: Any = None,
) -> tuple[jax.Array, Any, Metrics]:
    """Objective, its gradient and per-term/aux metrics over a batch, accumulated in micro-batches.

    With `num_micro_batches > 1`, micro-batch i uses dropout key `fold_in(rng, i)` (else `rng`). With several loss terms the totals of each
    term's count are computed first (only from labels: XLA drops the forward pass that produced
    them), so each micro-batch's gradient is already scaled by the whole-batch totals.

    Returns:
        (loss, grads (float32, like params), metrics dict of scalars).
    """
    m = num_micro_batches

    def call(p, mb, r, det):
        sums, (counts, aux) = loss_fn(p, mb, r, det)
        return _as_terms(sums), _as_terms(counts), aux

    if m == 1:

        def f(p):
            sums, counts, aux = call(p, batch, rng, False)
            return objective(sums, counts), (sums, counts, aux)

        (loss, (sums, counts, aux)), grads = jax.value_and_grad(f, has_aux=True)(params)
    else:
        micro = _split_micro(batch, m)
        probe = jax.eval_shape(lambda: call(params, jax.tree.map(lambda x: x[0], micro), rng, True))
        multi = len(probe[0]) > 1
        if multi:  # whole-batch totals per term, from labels only (the forward pass is dead code)
            totals = jax.tree.map(jnp.sum, jax.lax.map(lambda mb: call(params, mb, None, True)[1], micro))
        else:
            totals = None

        def body(carry, xs):
            g_acc, s_acc, c_acc, a_acc = carry
            mb, i = xs

            def f(p):
                sums, counts, aux = call(p, mb, jax.random.fold_in(rng, i), False)
                scaled = sum(sums[k] / jnp.maximum(totals[k], 1) for k in sums) if multi else sums["loss"]
                return scaled, (sums, counts, aux)

            (_, (sums, counts, aux)), g = jax.value_and_grad(f, has_aux=True)(params)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            if grad_shardings is not None:
                g_acc = jax.lax.with_sharding_constraint(g_acc, grad_shardings)
            add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
            return (g_acc, add(s_acc, sums), add(c_acc, counts), add(a_acc, aux)), None

        zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), t)  # noqa: E731
        g0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        if grad_shardings is not None:
            g0 = jax.lax.with_sharding_constraint(g0, grad_shardings)
        init = (g0, zeros(probe[0]), zeros(probe[1]), zeros(probe[2]))
        (grads, sums, counts, aux), _ = jax.lax.scan(body, init, (micro, jnp.arange(m)))
        if not multi:
            grads = jax.tree.map(lambda g: g / jnp.maximum(counts["loss"], 1), grads)
        loss = objective(sums, counts)
    metrics = {"loss": loss}
    if len(sums) > 1:
        metrics.update({f"loss/{k}": sums[k] / jnp.maximum(counts[k], 1) for k in sums})
    metrics.update({k: s / jnp.maximum(n, 1) for k, (s, n) in aux.items()})
    return loss, grads, metrics


def make_train_step(
    loss_fn: LossFn,
    *,
    state_shardings: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | None = None,
    num_micro_batches: int = 1,
    learning_rate: float | Schedule | None = None,
    skip_nonfinite: bool = True,
    donate: bool = True,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, Metrics]]:
    """`step(state, batch, rng) -> (state, metrics)`, jitted with shardings and donated state.

    Args:
        loss_fn: see `objectives.py`.
        state_shardings: `create_train_state(...).shardings` (None without a mesh).
        mesh, rules: the mesh and logical rules (batches are sharded over data × fsdp).
        num_micro_batches: gradient-accumulation steps inside the step (batch size must divide).
        learning_rate: the schedule given to the optimizer, for the "learning_rate" metric.
        skip_nonfinite: leave the state unchanged when the loss or gradient norm is NaN/Inf (the
            "finite" metric is 0 then; `fit` stops and names the step).
        donate: donate the input state's buffers.
        compiler_options: XLA options for this compile (e.g. {"xla_backend_optimization_level": 0}).

    Metrics (device scalars): loss, loss/<term>, aux metrics, grad_norm (before clipping), param_norm,
    learning_rate, tokens (non-padding tokens in the batch), finite.
    """
    grad_shardings = None if (mesh is None or state_shardings is None) else state_shardings.params

    def step(state: TrainState, batch: dict, rng: jax.Array):
        return apply_update(
            loss_fn, state, batch, rng, num_micro_batches, grad_shardings, skip_nonfinite, learning_rate
        )

    return jit_step(
        step,
        mesh=mesh,
        rules=rules,
        in_shardings=(state_shardings, shd.batch_sharding(mesh), None),
        out_shardings=(state_shardings, None),
        donate=donate,
        compiler_options=compiler_options,
    )


def apply_update(
    loss_fn: LossFn,
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    num_micro_batches: int = 1,
    grad_shardings: Any = None,
    skip_nonfinite: bool = True,
    learning_rate: float | Schedule | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer update, traced inside a jitted step: grads (accumulated over micro-batches),
    the update, the non-finite guard and the step metrics (see `make_train_step`)."""
    rng = jax.random.fold_in(rng, state.step)
    loss, grads, metrics = loss_and_grads(
        loss_fn, state.params, batch, rng, num_micro_batches, grad_shardings
    )
    grad_norm = optax.tree.norm(grads)
    new = state.apply_gradients(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics.update(
        grad_norm=grad_norm,
        param_norm=optax.tree.norm(new.params),
        tokens=_num_tokens(batch),
        finite=finite.astype(jnp.float32),
    )
    if learning_rate is not None:
        metrics["learning_rate"] = learning_rate_at(learning_rate, state.step)
    return new, metrics


def jit_step(
    step: Callable,
    *,
    mesh: jax.sharding.Mesh | None,
    rules: shd.Rules | None,
    in_shardings: tuple,
    out_shardings: tuple,
    donate: bool = True,
    compiler_options: dict[str, Any] | None = None,
) -> Callable:
    """`jax.jit(step)` with the state (argument 0) donated and, on a mesh, the given shardings; the
    returned callable runs under the mesh and logical rules. `.jitted` is the jitted function (for
    `.lower(...)` in benchmarks and memory reports)."""
    kw: dict[str, Any] = {"donate_argnums": (0,) if donate else (), "compiler_options": compiler_options}
    if mesh is not None:
        kw.update(in_shardings=in_shardings, out_shardings=out_shardings)
    jitted = jax.jit(step, **kw)

    def run(*args):
        with shd.mesh_context(mesh, rules):
            return jitted(*args)

    run.jitted = jitted
    return run


def make_eval_step(
    loss_fn: LossFn,
    *,
    param_shardings: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[Any, dict], Metrics]:
    """`eval_step(params, batch) -> additive sums` (deterministic): "sum/<term>", "count/<term>",
    "aux_sum/<name>", "aux_count/<name>". Add them over batches and call `finalize_eval`."""

    def step(params, batch):
        sums, (counts, aux) = loss_fn(params, batch, None, True)
        out = {f"sum/{k}": v for k, v in _as_terms(sums).items()}
        out.update({f"count/{k}": v for k, v in _as_terms(counts).items()})
        for k, (s, n) in aux.items():
            out[f"aux_sum/{k}"], out[f"aux_count/{k}"] = s, n
        return out

    kw: dict[str, Any] = {"compiler_options": compiler_options}
    if mesh is not None:
        kw.update(in_shardings=(param_shardings, shd.batch_sharding(mesh)), out_shardings=None)
    jitted = jax.jit(step, **kw)

    def run(params, batch):
        with shd.mesh_context(mesh, rules):
            return jitted(params, batch)

    return run


def finalize_eval(totals: dict[str, Any]) -> dict[str, float]:
    """Summed eval outputs → {"loss", "loss/<term>" (several terms), aux ratios} as floats (NaN: no targets)."""
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    ratio = lambda s, n: s / n if n else float("nan")  # noqa: E731
    terms = sorted(k[4:] for k in totals if k.startswith("sum/"))
    out = {"loss": sum(ratio(totals[f"sum/{t}"], totals[f"count/{t}"]) for t in terms)}
    if len(terms) > 1:
        out.update({f"loss/{t}": ratio(totals[f"sum/{t}"], totals[f"count/{t}"]) for t in terms})
    for k in totals:
        if k.startswith("aux_sum/"):
            name = k[8:]
            out[name] = ratio(totals[k], totals[f"aux_count/{name}"])
    return out


def evaluate(eval_step: Callable, params: Any, batches: Any, sharding: Any = None) -> dict[str, float]:
    """Runs `eval_step` over host batches (dicts of numpy, this host's rows), sums on device, finalizes."""
    acc = None
    for b in batches:
        out = eval_step(params, shd.make_global_batch(b, sharding))
        acc = out if acc is None else jax.tree.map(jnp.add, acc, out)
    if acc is None:
        raise ValueError("evaluate got no batches")
    return finalize_eval(acc)


def make_predict_step(
    fn: Callable[[Any, dict], Any],
    *,
    param_shardings: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[Any, dict], Any]:
    """Jits `fn(params, batch) -> pytree of [B, ...]` (e.g. logits); call `to_host` on the result."""
    kw: dict[str, Any] = {"compiler_options": compiler_options}
    if mesh is not None:
        kw.update(in_shardings=(param_shardings, shd.batch_sharding(mesh)))
    jitted = jax.jit(fn, **kw)

    def run(params, batch):
        with shd.mesh_context(mesh, rules):
            return jitted(params, batch)

    return run


def to_host(tree: Any) -> Any:
    """Global arrays → numpy on every host (all-gathers across processes when multi-host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


# ---------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
    """A NaN/Inf loss or gradient; `step` is the 1-based update that produced it."""

    def __init__(self, step: int, metrics: dict[str, float], last_checkpoint: int | None):
        self.step, self.metrics, self.last_checkpoint = step, metrics, last_checkpoint
        super().__init__(
            f"non-finite loss or gradient at step {step} (loss={metrics.get('loss')}, "
            f"grad_norm={metrics.get('grad_norm')}); stopped without saving it; last good checkpoint: "
            f"{'none' if last_checkpoint is None else f'step {last_checkpoint}'}"
        )


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Loop settings (each with the reason it exists)."""

    num_steps: int  # total optimizer updates of the run (a resumed run continues up to this)
    workdir: str | None = None  # checkpoints/, metrics.jsonl, tensorboard/, loss.png; None: no files
    log_every: int = 50  # metrics leave the device (one sync) only every this many steps
    checkpoint_every: int = 1000  # async orbax save interval; the last step is always saved
    max_to_keep: int | None = 3  # committed checkpoints kept on disk
    async_checkpoint: bool = True  # write checkpoints in a background thread
    eval_every: int | None = None  # call eval_fn every this many steps (and at the end)
    progress: bool = True  # tqdm bar with loss, learning rate and tokens/s (host 0)
    # SIGTERM (Kubernetes/SLURM/Colab stop) and SIGINT (Ctrl-C) act as a preemption: save at the current
    # step and return; single-process runs only: with jax.distributed, JAX's own preemption service
    # catches SIGTERM and `reached_preemption` reports it on every host at the same step
    handle_sigterm: bool = True
    plot: bool = True  # loss.png at the end
    plot_metric: str | None = None  # the eval metric loss.png shows beside the loss (default: the first)
    # start from this checkpoint (a step directory, a checkpoints/ directory or a run directory) instead
    # of the workdir's latest; once it is restored, later checkpoints in the workdir are deleted (the
    # run branches here)
    resume_from: str | None = None


@dataclasses.dataclass
class FitResult:
    state: TrainState
    step: int
    stopped: str  # "done" or "preempted"
    history: list[dict[str, float]]
    signal: str | None = None  # "SIGTERM" / "SIGINT" when a signal stopped the run
    resumed_from: int | None = None  # the step restored at the start (None: a fresh start)


class _Signals:
    """SIGTERM and SIGINT set `hit` (the signal's name); a second SIGINT interrupts at once."""

    def __init__(self, enable: bool):
        self.hit: str | None = None
        self.old: dict[int, Any] = {}
        if enable and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._on)

    def _on(self, signum, frame):
        if self.hit == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.hit = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint at the end of this step, then stopping", self.hit)

    def restore(self):
        for sig, old in self.old.items():
            signal.signal(sig, old)


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _restore_from(path: str, state: TrainState) -> tuple[TrainState, dict, int]:
    """Restores the checkpoint `path` names (see `FitConfig.resume_from`), with an error naming it."""
    directory, step = resolve_checkpoint(path)
    mngr = checkpoint_manager(directory, async_save=False)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {path}: no committed checkpoint in {directory}"
            )
        try:
            return restore_checkpoint(mngr, state, step)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"--resume_from_checkpoint {path}: {e}") from None
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise CheckpointReadError(
                f"--resume_from_checkpoint {path}: step {step} cannot be read ({type(e).__name__}: {first})"
            ) from None
    finally:
        mngr.close()


def _resume(
    config: FitConfig, state: TrainState, data: DataIterator, before_write: Callable[[], None] | None = None
) -> tuple[Any, TrainState, int | None]:
    """Restores per `config`, then calls `before_write` and opens the workdir's checkpoint manager
    (None without a workdir): an explicit checkpoint is read before anything is written or removed.

    Returns (manager, state, the step restored or None for a fresh start); the data iterator is set to
    the restored position.
    """
    wd = config.workdir
    restored = _restore_from(config.resume_from, state) if config.resume_from else None
    if before_write is not None:
        before_write()
    mngr = None
    if wd is not None:
        mngr = checkpoint_manager(
            storage.join(wd, "checkpoints"),
            config.checkpoint_every,
            config.max_to_keep,
            config.async_checkpoint,
        )
    where = config.resume_from
    if config.resume_from:
        if mngr is not None:
            later = [t for t in mngr.all_steps() if t > restored[2]]
            for t in later:
                mngr.delete(t)
            if later:
                _say(f"deleted checkpoints {later} of {wd}: the run continues from step {restored[2]}")
    elif mngr is not None and mngr.all_steps():
        restored = restore_latest(mngr, state, warn=_say)
        where = wd
    elif mngr is not None and stored_checkpoints(mngr.directory):
        raise CheckpointReadError(
            f"{mngr.directory} holds only checkpoints set aside as unreadable "
            f"({', '.join(stored_checkpoints(mngr.directory))}); nothing was changed: rename one back to its step "
            "number to try it again, or start again with --overwrite_output_dir"
        )
    resumed_from = None
    if restored is not None:
        state, data_state, resumed_from = restored
        if data_state and hasattr(data, "set_state"):
            data.set_state(data_state)
        left = "" if resumed_from < config.num_steps else ": no steps left"
        _say(f"resuming from step {resumed_from} of {config.num_steps} ({where}){left}")
    return mngr, state, resumed_from


class _StepLog:
    """The metrics of the steps since the last log row, the history, and the last checkpointed step.

    Step metrics stay on device until `flush`, which fetches them in one transfer, raises
    `NonFiniteError` for the first non-finite step, and writes their mean as one row.
    """

    def __init__(self, writer: MetricsWriter, bar: Any, mngr: Any):
        self.writer, self.bar, self.mngr = writer, bar, mngr
        self.history: list[dict[str, float]] = []
        self.pending: list[tuple[int, Metrics]] = []
        self.last_saved = None if mngr is None else mngr.latest_step()
        self.t_last = time.perf_counter()

    def add(self, step: int, metrics: Metrics) -> None:
        self.pending.append((step, metrics))
        if self.bar is not None:
            self.bar.update(1)

    def flush(self) -> None:
        if not self.pending:
            return
        host = jax.device_get([m for _, m in self.pending])
        for (s, _), m in zip(self.pending, host):
            if m["finite"] < 1:
                if self.mngr is not None:
                    self.mngr.wait_until_finished()
                raise NonFiniteError(s, {k: float(v) for k, v in m.items()}, self.last_saved)
        now = time.perf_counter()
        row = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k not in ("finite", "tokens")}
        row["tokens_per_sec"] = float(sum(m["tokens"] for m in host)) / max(now - self.t_last, 1e-9)
        self.t_last = now
        s = self.pending[-1][0]
        self.pending.clear()
        self.history.append({"step": s, **row})
        self.writer.write(s, row)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['loss']:.4f}",
                lr=f"{row.get('learning_rate', float('nan')):.2e}",
                tok_s=f"{row['tokens_per_sec']:.0f}",
            )

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        ev = {f"eval/{k}": float(v) for k, v in metrics.items()}
        self.history.append({"step": step, **ev})
        self.writer.write(step, ev)

    def save(self, s: int, state: TrainState, data_state: dict | None, force: bool = False) -> None:
        self.flush()  # never save a state that followed a non-finite step
        if self.mngr is None or self.last_saved == s:
            return
        self.mngr.wait_until_finished()  # orbax waits for the previous save here anyway
        seal_checkpoints(self.mngr)
        if save_checkpoint(self.mngr, s, state, data_state, force=force):
            self.last_saved = s


def _progress_bar(num_steps: int, start: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=num_steps, initial=start, desc="train", dynamic_ncols=True)


def fit(
    config: FitConfig,
    state: TrainState,
    train_step: Callable[[TrainState, dict, jax.Array], tuple[TrainState, Metrics]],
    data: DataIterator,
    rng: jax.Array,
    *,
    batch_sharding: Any = None,
    eval_fn: Callable[[TrainState, int], dict[str, float]] | None = None,
    before_write: Callable[[], None] | None = None,
) -> FitResult:
    """Runs `train_step` up to `config.num_steps`, resuming from the latest checkpoint in the workdir.

    Resume restores the state onto `state`'s shardings and the data iterator's position, so the run
    sees exactly the batches an uninterrupted run would have. On preemption (orbax
    `reached_preemption`, or SIGTERM) it saves, waits for the write and returns `stopped="preempted"`.
    A non-finite step raises `NonFiniteError` naming it; nothing after the last good checkpoint is saved.

    Args:
        config: `FitConfig`.
        state: the initial state (fresh or loaded); its shardings are the restore target.
        train_step: from `make_train_step`.
        data: host batches (`ArrayIterator` or any `DataIterator`).
        rng: dropout base key; step s uses fold_in(rng, s) inside the step.
        batch_sharding: `sharding.batch_sharding(mesh)` (None: one device).
        eval_fn: optional `(state, step) -> metrics`, logged with an "eval/" prefix.
        before_write: called once `config.resume_from` (if any) restored, before the loop writes
            anything into the workdir (the caller then records or replaces the run there).
    """
    wd = config.workdir
    mngr, state, resumed_from = _resume(config, state, data, before_write)
    writer = MetricsWriter(wd)
    if resumed_from is not None:
        writer.truncate(resumed_from)  # rows past the checkpoint are recomputed: no duplicate steps
    start = int(jax.device_get(state.step))
    main = jax.process_index() == 0
    bar = _progress_bar(config.num_steps, start) if config.progress and main else None
    sig = _Signals(config.handle_sigterm and jax.process_count() == 1)
    steps = _StepLog(writer, bar, mngr)
    step, stopped = start, "done"
    try:
        data_state = data.get_state() if hasattr(data, "get_state") else None
        while step < config.num_steps:
            batch = shd.make_global_batch(next(data), batch_sharding)
            data_state = data.get_state() if hasattr(data, "get_state") else None
            state, metrics = train_step(state, batch, rng)
            step += 1
            steps.add(step, metrics)
            last = step == config.num_steps
            if step % config.log_every == 0 or last:
                steps.flush()
            if config.eval_every and eval_fn is not None and (step % config.eval_every == 0 or last):
                steps.flush()
                steps.evaluated(step, eval_fn(state, step))
            if sig.hit is not None or (mngr is not None and mngr.reached_preemption(step)):
                steps.save(step, state, data_state, force=True)
                stopped = "preempted"
                _say(f"{sig.hit or 'preempted'} at step {step}: checkpoint saved, stopping")
                break
            if mngr is not None and step % config.checkpoint_every == 0:
                steps.save(step, state, data_state)
        if stopped == "done" and step > start:
            steps.save(step, state, data_state, force=True)
        steps.flush()
    finally:
        sig.restore()
        if bar is not None:
            bar.close()
        if mngr is not None:
            mngr.wait_until_finished()
            seal_checkpoints(mngr)
            mngr.close()
        writer.close()
    if wd is not None and main and config.plot and writer.path is not None and stopped == "done":
        plot_loss_curve(writer.path, storage.join(wd, "loss.png"), config.plot_metric)
    return FitResult(
        state=state,
        step=step,
        stopped=stopped,
        history=steps.history,
        signal=sig.hit,
        resumed_from=resumed_from,
    )
