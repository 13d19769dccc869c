"""Knowledge transfer from an IB-BERT teacher (MobileBERT paper §3-4): losses, loss functions, the step.

The recipe is google-research `mobilebert/run_pretraining.py` (REFERENCE §5 "Training recipe"):

- Progressive knowledge transfer, stage k (one per encoder layer): only layer k is trained, with
  - feature-map transfer: MSE between the parameter-free LayerNorm of the teacher's and the
    student's output of layer k, factor `hidden_distill_factor` (100);
  - attention transfer: KL(teacher ‖ student) of the attention distributions of layer k, per head
    and query, factor `attention_distill_factor` (1);
  - mean / variance transfer: (μ_t − μ_s)² and |σ²_t − σ²_s| of each token's hidden vector,
    factors `beta_distill_factor` (5000) and `gamma_distill_factor` (5).
  As in TF1 each term is the active layer's loss times `factor / num_layers` (the code gates the
  sum over layers and divides by the layer count).
- Pre-training distillation: MLM against `ratio·one_hot + (1 − ratio)·softmax(teacher_logits / T)`
  (ratio 0.5, T 1) at the masked positions, plus NSP on the hard labels.

Every loss returns `(sum, count)` so the trainer's micro-batch accumulation stays exact under padding
(`training/objectives.py`). Our models return post-softmax attention probabilities (the TF1 code compares
pre-softmax scores with softmax/log_softmax; the distributions are the same). Masked keys have
probability exactly 0 in both models; they add nothing to the KL and produce no NaN.

Deliberate differences from the TF1 code, each for a reason:
- Padding tokens (attention_mask 0) are left out of every average; TF1 averaged over all positions.
- The mean/variance losses compare layer k with teacher layer k; TF1 compares the student layer
  with the stack of *all* teacher layers (it passes `teacher_hiddens` instead of `teacher_hidden`),
  a bug that the per-layer definition in the paper does not have.
- Lower layers are frozen during stage k, as the paper says; TF1's gate keeps them training at 0.1×.
  Frozen params are wrapped in `stop_gradient`, so no backward pass is spent on them and the
  global-norm clip sees only the trained layer's gradient.
- Temperature divides the teacher logits (standard KD); TF1 multiplies the teacher's last hidden
  state by T before the MLM head. Both are the identity at the paper's T = 1.

Shapes: B batch, T length, H hidden, N heads, P masked positions per row, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.model import losses
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import MobileBertLMPredictionHead, MobileBertModel
from mobilebert_jax.model.losses import IGNORE_INDEX, SumCount
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.objectives import model_inputs, split_terms
from mobilebert_jax.training.optim import FROZEN, Schedule, path_str
from mobilebert_jax.training.state import TrainState
from mobilebert_jax.training.trainer import apply_update, jit_step

Array = jax.Array
# (student params, teacher params, batch, rng, deterministic) -> (sums, (counts, aux))
DistillLossFn = Callable[[Any, Any, dict, Any, bool], tuple[Any, tuple[Any, dict]]]

# ---------------------------------------------------------------------------------------------------
# Losses: each returns (sum, count); the loss is sum / count
# ---------------------------------------------------------------------------------------------------


def _token_weights(shape: tuple[int, int], mask: Array | None) -> Array:
    """[B, T] float32 weights: attention_mask (1 = real token) or all ones."""
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    return (jnp.asarray(mask) > 0).astype(jnp.float32)


def normalize(x: Array, eps: float = 1e-12) -> Array:
    """LayerNorm over the last axis with no parameters (TF1's `layer_norm(trainable=False)`), float32."""
    x = x.astype(jnp.float32)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps)


def feature_map_transfer(
    teacher: Array, student: Array, mask: Array | None = None, eps: float = 1e-12
) -> SumCount:
    """Squared error between the normalised teacher and student hidden states of one layer.

    Args:
        teacher, student: [B, T, H] hidden states (the teacher's gets no gradient).
        mask: [B, T] attention mask; padded tokens do not count.
        eps: LayerNorm epsilon (TF1's layer_norm: 1e-12).

    Returns:
        (Σ over real tokens and H of (LN(t) − LN(s))², real tokens × H).
    """
    if teacher.shape != student.shape:
        raise ValueError(
            f"feature-map transfer needs equal shapes, teacher {teacher.shape} vs student {student.shape}"
        )
    w = _token_weights(teacher.shape[:2], mask)
    d = normalize(jax.lax.stop_gradient(teacher), eps) - normalize(student, eps)
    return jnp.sum(jnp.square(d) * w[..., None]), jnp.sum(w) * teacher.shape[-1]


def attention_transfer(
    teacher_probs: Array, student_probs: Array, mask: Array | None = None, form: str = "kl"
) -> SumCount:
    """KL(teacher ‖ student) of attention distributions, summed over keys, per head and query.

    Args:
        teacher_probs, student_probs: [B, N, T, T] post-softmax probabilities (rows sum to 1; masked
            keys are exactly 0).
        mask: [B, T] attention mask; padded *queries* do not count (padded keys carry 0 mass already).
        form: "kl" = Σ p_t (log p_t − log p_s) (0 when equal); "cross_entropy" = −Σ p_t log p_s as
            in TF1 (the KL plus the teacher's entropy; same gradient).

    Returns:
        (Σ over real queries and heads of the per-row divergence, real queries × N).
    """
    if teacher_probs.shape != student_probs.shape:
        raise ValueError(
            f"attention transfer needs equal shapes [batch, heads, query, key], teacher {teacher_probs.shape} "
            f"vs student {student_probs.shape}"
        )
    if form not in ("kl", "cross_entropy"):
        raise ValueError(f"form must be 'kl' or 'cross_entropy', got {form!r}")
    t = jax.lax.stop_gradient(teacher_probs).astype(jnp.float32)
    s = student_probs.astype(jnp.float32)
    live = t > 0
    # Where the teacher has no mass the term is 0; the double `where` keeps log(0) out of the
    # forward and the backward pass. A student underflow at a live key is clamped to the tiniest
    # normal float instead of giving inf.
    log_s = jnp.log(jnp.where(live, jnp.maximum(s, jnp.finfo(jnp.float32).tiny), 1.0))
    inner = -log_s
    if form == "kl":
        inner = inner + jnp.log(jnp.where(live, t, 1.0))
    per_row = jnp.sum(jnp.where(live, t * inner, 0.0), axis=-1)  # [B, N, T]
    w = _token_weights((t.shape[0], t.shape[2]), mask)[:, None, :]
    return jnp.sum(per_row * w), jnp.sum(w) * t.shape[1]


def _moments(x: Array) -> tuple[Array, Array]:
    x = x.astype(jnp.float32)
    mu = jnp.mean(x, axis=-1)
    return mu, jnp.mean(jnp.square(x - mu[..., None]), axis=-1)


def mean_transfer(teacher: Array, student: Array, mask: Array | None = None) -> SumCount:
    """Σ over real tokens of (mean_H(teacher) − mean_H(student))²; count = real tokens. [B, T, H] inputs."""
    w = _token_weights(teacher.shape[:2], mask)
    mt, _ = _moments(jax.lax.stop_gradient(teacher))
    ms, _ = _moments(student)
    return jnp.sum(jnp.square(mt - ms) * w), jnp.sum(w)


def variance_transfer(teacher: Array, student: Array, mask: Array | None = None) -> SumCount:
    """Σ over real tokens of |var_H(teacher) − var_H(student)|; count = real tokens. [B, T, H] inputs."""
    w = _token_weights(teacher.shape[:2], mask)
    _, vt = _moments(jax.lax.stop_gradient(teacher))
    _, vs = _moments(student)
    return jnp.sum(jnp.abs(vt - vs) * w), jnp.sum(w)


def distill_mlm(
    student_logits: Array,
    labels: Array,
    teacher_logits: Array | None = None,
    ground_truth_ratio: float = 0.5,
    temperature: float = 1.0,
) -> SumCount:
    """Cross-entropy of the student against `ratio·one_hot(label) + (1 − ratio)·softmax(teacher / T)`.

    Args:
        student_logits: [..., V] (float32 math).
        labels: [...] token ids, IGNORE_INDEX (-100) where nothing is predicted.
        teacher_logits: [..., V] or None (then the targets are the one-hot labels).
        ground_truth_ratio: weight of the one-hot part (TF1 `distill_ground_truth_ratio`).
        temperature: the teacher's softmax temperature.

    Returns:
        (Σ over counted positions of −Σ_v target_v log p_v, counted positions).
    """
    q = teacher_targets(teacher_logits, temperature)
    return losses.cross_entropy_sum_and_count(
        student_logits, labels, soft_targets=q, label_weight=ground_truth_ratio
    )


def teacher_targets(teacher_logits: Array | None, temperature: float = 1.0) -> Array | None:
    """softmax(teacher_logits / T) in float32, without gradient (None without a teacher)."""
    if teacher_logits is None:
        return None
    return jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1)


# ---------------------------------------------------------------------------------------------------
# Pieces of the models
# ---------------------------------------------------------------------------------------------------


def encoder_of(model: nn.Module) -> MobileBertModel:
    """The `mobilebert` submodule of a head model, as a standalone `MobileBertModel` (with pooler)."""
    return MobileBertModel(
        model.config,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
        precision=model.precision,
        scan_layers=getattr(model, "scan_layers", False),
        remat=getattr(model, "remat", False),
        add_pooling_layer=True,
    )


def check_compatible(student: MobileBertConfig, teacher: MobileBertConfig) -> None:
    """Raises ValueError naming every field that stops layer-to-layer transfer or the head copy."""
    fields = (
        "vocab_size",
        "embedding_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "type_vocab_size",
        "max_position_embeddings",
        "trigram_input",
        "tie_word_embeddings",
        "classifier_activation",
    )
    bad = [
        f"{f}: student {getattr(student, f)} vs teacher {getattr(teacher, f)}"
        for f in fields
        if getattr(student, f) != getattr(teacher, f)
    ]
    if bad:
        raise ValueError(
            "student and teacher must share these fields for layer-wise transfer and the copied embeddings/heads: "
            + "; ".join(bad)
        )


@dataclasses.dataclass
class CopyReport:
    """What `copy_non_encoder` did: copied paths, student paths kept, teacher paths unused."""

    copied: list[str]
    kept: list[str]
    unused: list[str]


def copy_non_encoder(
    student_params: Any, teacher_params: Any, student: MobileBertConfig, teacher: MobileBertConfig
) -> tuple[Any, CopyReport]:
    """Student params with every non-encoder param (embeddings, pooler, heads) taken from the teacher.

    This is TF1's `init_embedding` (every variable outside `bert/encoder` whose name exists in both).
    The embedding norm is the one exception: when the normalization types differ (NoNorm student,
    LayerNorm teacher) its params mean different things and keep the student's init, as in TF1 where
    the scopes (`FakeLayerNorm` vs `LayerNorm`) do not match.

    Raises:
        ValueError: a student param outside the encoder that the teacher lacks or has in another shape.
    """
    check_compatible(student, teacher)
    flat_t = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(teacher_params)}
    norm_differs = student.normalization_type != teacher.normalization_type
    copied, kept, problems = [], [], []

    def pick(path, x):
        name = path_str(path)
        if "/encoder/" in f"/{name}/":
            return x
        if norm_differs and "embeddings/LayerNorm/" in name:
            kept.append(name)
            return x
        if name not in flat_t:
            problems.append(f"{name}: not in the teacher")
            return x
        if tuple(flat_t[name].shape) != tuple(x.shape):
            problems.append(f"{name}: teacher {tuple(flat_t[name].shape)} vs student {tuple(x.shape)}")
            return x
        copied.append(name)
        return jnp.asarray(flat_t[name], dtype=x.dtype)

    out = jax.tree_util.tree_map_with_path(pick, student_params)
    if problems:
        raise ValueError("cannot copy the teacher's embeddings and heads: " + "; ".join(problems))
    unused = sorted(n for n in flat_t if "/encoder/" not in f"/{n}/" and n not in set(copied))
    return out, CopyReport(copied=copied, kept=kept, unused=unused)


def freeze(params: Any, labels: Any) -> Any:
    """`stop_gradient` on every param labelled "frozen" (no gradient, no backward pass for them)."""
    return jax.tree.map(lambda p, lab: jax.lax.stop_gradient(p) if lab == FROZEN else p, params, labels)


# ---------------------------------------------------------------------------------------------------
# Loss functions for the trainer
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransferFactors:
    """Weights of the layer-wise transfer losses (TF1 flag names; the README's values)."""

    hidden_distill_factor: float = 100.0  # feature-map MSE
    attention_distill_factor: float = 1.0  # attention KL
    beta_distill_factor: float = 5000.0  # per-token mean; 0 disables
    gamma_distill_factor: float = 5.0  # per-token variance; 0 disables
    attention_form: str = "kl"  # "kl" or TF1's "cross_entropy" (same gradient)


def layer_transfer_terms(
    teacher_out: Any,
    student_out: Any,
    mask: Array | None,
    layers: Sequence[int],
    num_layers: int,
    factors: TransferFactors,
) -> tuple[dict, dict, dict]:
    """(sums, counts, aux) of the transfer losses over `layers`, each times factor / num_layers.

    `teacher_out`/`student_out` are `MobileBertModelOutput`s with hidden_states (L+1, embeddings
    first: layer l's output is index l+1) and attentions (L). With `layers=[k]` this is TF1's gated
    stage-k loss; with all layers it is the average over layers. `aux` holds the unweighted
    per-token values ("feature_map_mse", "attention_kl", ...) for logging.
    """
    sums: dict[str, Array] = {}
    counts: dict[str, Array] = {}
    aux: dict[str, tuple[Array, Array]] = {}
    specs = [
        (
            "feature_map",
            "feature_map_mse",
            factors.hidden_distill_factor,
            "hidden",
            lambda t, s: feature_map_transfer(t, s, mask),
        ),
        (
            "attention",
            f"attention_{'kl' if factors.attention_form == 'kl' else 'ce'}",
            factors.attention_distill_factor,
            "attn",
            lambda t, s: attention_transfer(t, s, mask, factors.attention_form),
        ),
        (
            "mean",
            "mean_sq_diff",
            factors.beta_distill_factor,
            "hidden",
            lambda t, s: mean_transfer(t, s, mask),
        ),
        (
            "variance",
            "variance_abs_diff",
            factors.gamma_distill_factor,
            "hidden",
            lambda t, s: variance_transfer(t, s, mask),
        ),
    ]
    for term, metric, factor, kind, fn in specs:
        if factor == 0:
            continue
        total, count = 0.0, None
        for k in layers:
            if kind == "hidden":
                s, n = fn(teacher_out.hidden_states[k + 1], student_out.hidden_states[k + 1])
            else:
                s, n = fn(teacher_out.attentions[k], student_out.attentions[k])
            total, count = total + s, n
        sums[term], counts[term] = (factor / num_layers) * total, count
        aux[metric] = (total / len(layers), count)
    return sums, counts, aux


def transfer_loss(
    student_model: nn.Module,
    teacher_model: nn.Module,
    layer: int,
    factors: TransferFactors = TransferFactors(),
    trainable_labels: Any = None,
) -> DistillLossFn:
    """Stage `layer` of progressive knowledge transfer: the transfer losses of that layer only.

    Both models run deterministically (TF1 builds the student with is_training=False here); XLA
    drops the layers above `layer` and the MLM head from the compiled step. Params labelled frozen
    in `trainable_labels` (from `optim.layer_labels`) get `stop_gradient`.
    """
    check_compatible(student_model.config, teacher_model.config)
    s_enc, t_enc = encoder_of(student_model), encoder_of(teacher_model)
    num_layers = student_model.config.num_hidden_layers
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range [0, {num_layers})")

    def loss_fn(params, teacher_params, batch, rng, deterministic):
        del rng, deterministic
        if trainable_labels is not None:
            params = freeze(params, trainable_labels)
        inputs = model_inputs(batch)
        kw = dict(deterministic=True, output_hidden_states=True, output_attentions=True)
        s = s_enc.apply({"params": params["mobilebert"]}, **inputs, **kw)
        t = t_enc.apply({"params": teacher_params["mobilebert"]}, **inputs, **kw)
        sums, counts, aux = layer_transfer_terms(
            t, s, batch.get("attention_mask"), [layer], num_layers, factors
        )
        return sums, (counts, aux)

    return loss_fn


def masked_positions(batch: dict, max_predictions: int | None) -> tuple[Array | None, Array]:
    """(positions [B, P] or None, labels [B, P] or [B, T]) of the MLM targets.

    Uses BERT's `masked_lm_positions`/`masked_lm_ids`/`masked_lm_weights` when the batch has them;
    else takes the first `max_predictions` positions with labels != -100 (None: all positions).
    """
    if "masked_lm_positions" in batch:
        pos = jnp.asarray(batch["masked_lm_positions"], jnp.int32)
        ids = jnp.asarray(batch["masked_lm_ids"], jnp.int32)
        w = jnp.asarray(batch["masked_lm_weights"])
        return pos, jnp.where(w > 0, ids, IGNORE_INDEX)
    labels = jnp.asarray(batch["labels"], jnp.int32)
    if max_predictions is None:
        return None, labels
    order = jnp.argsort(labels == IGNORE_INDEX, axis=1, stable=True)[:, :max_predictions]
    return order, jnp.take_along_axis(labels, order, axis=1)


def _mlm_nsp_logits(model: nn.Module, enc: MobileBertModel, params: Any, batch: dict, positions, det, rng):
    rngs = {} if det or rng is None else {"dropout": rng}
    out = enc.apply({"params": params["mobilebert"]}, **model_inputs(batch), deterministic=det, rngs=rngs)
    h = out.last_hidden_state
    if positions is not None:
        h = jnp.take_along_axis(h, positions[..., None], axis=1)  # [B, P, H]
    cfg = model.config
    head = MobileBertLMPredictionHead(
        cfg, dtype=model.dtype, param_dtype=model.param_dtype, precision=model.precision
    )
    table = params["mobilebert"]["embeddings"]["word_embeddings"]["embedding"]
    mlm = head.apply({"params": params["cls"]["predictions"]}, h, table)
    sr = params["cls"]["seq_relationship"]
    nsp = out.pooler_output.astype(jnp.float32) @ sr["kernel"].astype(jnp.float32) + sr["bias"].astype(
        jnp.float32
    )
    return mlm, nsp


def pretraining_distill_loss(
    student_model: nn.Module,
    teacher_model: nn.Module | None = None,
    ground_truth_ratio: float = 0.5,
    temperature: float = 1.0,
    max_predictions: int | None = 20,
    student_dropout: bool = False,
) -> DistillLossFn:
    """MLM against the mixed targets at the masked positions + NSP (hard labels); terms "mlm", "nsp".

    With `teacher_model=None` (or ratio 1) it is plain MLM + NSP, computed at the masked positions
    only (the no-teacher baseline and teacher pre-training use it). `aux` reports "mlm_true" (the
    student's cross-entropy on the true tokens, comparable across runs) and accuracies.
    `student_dropout=False` is TF1 (the student is built with is_training=False under distillation).
    """
    if teacher_model is not None:
        check_compatible(student_model.config, teacher_model.config)
    s_enc = encoder_of(student_model)
    t_enc = None if teacher_model is None or ground_truth_ratio == 1.0 else encoder_of(teacher_model)

    def loss_fn(params, teacher_params, batch, rng, deterministic):
        for k in ("next_sentence_label",):
            if k not in batch:
                raise KeyError(f"batch is missing {k!r}; it has {sorted(batch)}")
        positions, labels = masked_positions(batch, max_predictions)
        det = deterministic or not student_dropout
        s_mlm, s_nsp = _mlm_nsp_logits(student_model, s_enc, params, batch, positions, det, rng)
        t_mlm = None
        if t_enc is not None:
            t_mlm, _ = _mlm_nsp_logits(teacher_model, t_enc, teacher_params, batch, positions, True, None)
        q = teacher_targets(t_mlm, temperature)
        nsp_labels = batch["next_sentence_label"]
        terms = losses.pretraining_terms(
            s_mlm, s_nsp, labels, nsp_labels, mlm_soft_targets=q, label_weight=ground_truth_ratio
        )
        nsp_labels = jnp.reshape(jnp.asarray(nsp_labels, jnp.int32), (-1,))
        aux = {
            "mlm_true": losses.cross_entropy_sum_and_count(s_mlm, labels),
            "mlm_accuracy": losses.accuracy_sum_and_count(s_mlm, labels),
            "nsp_accuracy": losses.accuracy_sum_and_count(s_nsp, nsp_labels),
        }
        sums, counts = split_terms(terms)
        return sums, (counts, aux)

    return loss_fn


def bind_teacher(loss_fn: DistillLossFn, teacher_params: Any = None) -> Callable:
    """A trainer `LossFn` `(params, batch, rng, deterministic)` with the teacher params fixed.

    For teacher-free losses (`pretraining_distill_loss(model)`) and for eval; a jitted step should
    take the teacher as an argument instead (`make_distill_step`), not capture it as a constant.
    """
    return lambda params, batch, rng, deterministic: loss_fn(
        params, teacher_params, batch, rng, deterministic
    )


# ---------------------------------------------------------------------------------------------------
# The step: teacher and student in one jitted program
# ---------------------------------------------------------------------------------------------------


def make_distill_step(
    loss_fn: DistillLossFn,
    *,
    state_shardings: Any = None,
    teacher_shardings: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | None = None,
    num_micro_batches: int = 1,
    learning_rate: float | Schedule | None = None,
    skip_nonfinite: bool = True,
    donate: bool = True,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[TrainState, Any, dict, Array], tuple[TrainState, dict]]:
    """`step(state, teacher_params, batch, rng) -> (state, metrics)`, jitted with shardings.

    The teacher is an argument (sharded by the same logical rules as the student, never a baked-in
    constant) under `stop_gradient`; only `state.params` is differentiated. Micro-batching, the
    non-finite guard, the metrics and `compiler_options` are those of `trainer.make_train_step`.
    """
    grad_shardings = None if (mesh is None or state_shardings is None) else state_shardings.params

    def step(state: TrainState, teacher_params: Any, batch: dict, rng: Array):
        teacher_params = jax.lax.stop_gradient(teacher_params)

        def lf(p, b, r, det):
            return loss_fn(p, teacher_params, b, r, det)

        return apply_update(
            lf, state, batch, rng, num_micro_batches, grad_shardings, skip_nonfinite, learning_rate
        )

    return jit_step(
        step,
        mesh=mesh,
        rules=rules,
        in_shardings=(state_shardings, teacher_shardings, shd.batch_sharding(mesh), None),
        out_shardings=(state_shardings, None),
        donate=donate,
        compiler_options=compiler_options,
    )


# ---------------------------------------------------------------------------------------------------
# Schedules (TF1 optimization.py / distill_util.py)
# ---------------------------------------------------------------------------------------------------


def transfer_schedule(learning_rate: float, steps_per_stage: int, multiplier: float = 3.0) -> Schedule:
    """The active layer's learning rate during one stage (the count restarts each stage).

    TF1 trains the warm-up at a constant `learning_rate` (end_lr_rate=1) times the layer gate's
    `3 · background(t)`, background = min(0.9 + 0.1·sqrt(1 − t/S), 10·t/S): a warmup over the first
    ~10% of the stage, then a slow decay to 0.9.
    """
    if steps_per_stage <= 0:
        raise ValueError(f"steps_per_stage must be positive, got {steps_per_stage}")

    def schedule(count):
        t = jnp.clip(jnp.asarray(count, jnp.float32), 0.0, steps_per_stage)
        frac = t / steps_per_stage
        decay = 0.9 + 0.1 * jnp.sqrt(1.0 - frac)
        warm = 10.0 * frac
        background = jnp.minimum(decay, warm) if steps_per_stage > 1 else 1.0
        return learning_rate * multiplier * background

    return schedule
