"""A fine-tuning run equals HF's, step for step: ours vs the PyTorch loop HF `Trainer` runs.

A small full-width model (MobileBERT's real widths and vocab, 2 layers) is fine-tuned for 30 steps on
real SST-2 sentences from the same HF weights, with the same batches in the same order and dropout off:

- ours: `from_pretrained`, the finetune job's schedule (`make_schedule`), `optim.adamw` as the job
  builds it, `make_train_step` (the trainer's step);
- HF: `MobileBertForSequenceClassification.from_pretrained`, `torch.optim.AdamW` over Trainer's two
  param groups (`Trainer.get_decay_parameter_names`: decay on all but biases and norm params),
  `get_linear_schedule_with_warmup`, `clip_grad_norm_(1.0)`; gradient accumulation as Trainer does it
  (each micro-batch's mean loss / number of micro-batches, summed by `backward`).

Asserted per step: the loss; at the end: every param. Both within float32 noise, relative
(loss: |a - b| / |b|; params: `rel_err`, max|a - b| / max|b| per tensor). Measured on CPU, one batch
and two micro-batches alike: loss <= 5.6e-7, params <= 2.4e-6 (the word embeddings); HF's own float32
run is 1.3e-6 from the same run in float64 (`.double()`). Bounds: 2e-6 and 1e-5. The only known difference in
the math: torch's clip divides by (norm + 1e-6), optax's by norm (1e-6 relative on clipped steps).
"""

from __future__ import annotations

import csv
import math
import os
import types

import jax
import numpy as np
import pytest
import safetensors.numpy
from conftest import SHARED_DATA, perturbed_hf_model, rel_err

from mobilebert_jax import MobileBertConfig
from mobilebert_jax.checkpoints.hub import from_pretrained
from mobilebert_jax.checkpoints.pytorch import flax_to_pt_name, to_pytorch
from mobilebert_jax.jobs.config import JobConfig
from mobilebert_jax.jobs.finetune import make_schedule
from mobilebert_jax.text.tokenizer import MobileBertTokenizer
from mobilebert_jax.training import optim
from mobilebert_jax.training.objectives import loss_fn_for
from mobilebert_jax.training.state import TrainState
from mobilebert_jax.training.trainer import make_train_step

torch = pytest.importorskip("torch", reason="torch is the test reference")
transformers = pytest.importorskip("transformers", reason="transformers is the test reference")

SST2 = os.path.join(SHARED_DATA, "glue", "SST-2", "dev.tsv")
CLASS = "MobileBertForSequenceClassification"
STEPS, BATCH, MAX_LEN = 30, 8, 32
# HF TrainingArguments names; adam_epsilon is Trainer's default (our job's default is 1e-6)
JOB = JobConfig(learning_rate=1e-4, warmup_ratio=0.1, weight_decay=0.01, adam_epsilon=1e-8, max_grad_norm=1.0)
# gelu, not MobileBERT's relu: at a ReLU kink float32 noise decides whether a token's gradient counts,
# and Adam turns that into a step of size ~lr (measured with relu: one such flip at step 11 of 30 left a
# mostly-dead FFN unit's bias 3.6e-4 (relative) apart, every other tensor within 2.2e-6). ReLU's forward
# and gradient are compared with HF in test_parity.py.
CONFIG = MobileBertConfig(
    num_hidden_layers=2,
    num_labels=2,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
LOSS_TOL = 2e-6
PARAM_TOL = 1e-5


@pytest.fixture(scope="module")
def batches() -> list[dict[str, np.ndarray]]:
    return sst2_batches()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> str:
    """HF weights (perturbed: NoNorm weights != 1, biases != 0) saved by HF's own `save_pretrained`."""
    folder = str(tmp_path_factory.mktemp("hf_sst2"))
    perturbed_hf_model(CONFIG, CLASS, seed=0, scale=0.02).save_pretrained(folder)
    return folder


def sst2_batches() -> list[dict[str, np.ndarray]]:
    """STEPS batches of BATCH SST-2 dev sentences, in file order, padded to MAX_LEN."""
    if not os.path.exists(SST2):
        pytest.skip(f"SST-2 data missing: {os.path.abspath(SST2)} (see /work/shared/data/README.md)")
    with open(SST2, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[: STEPS * BATCH]
    enc = MobileBertTokenizer.default()(
        [r["sentence"] for r in rows], padding="max_length", truncation=True, max_length=MAX_LEN
    )
    labels = np.array([int(r["label"]) for r in rows])
    arrays = {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    arrays["labels"] = labels.astype(np.int32)
    assert (arrays["attention_mask"] == 0).any(), "the batches should have padding"
    return [{k: v[i * BATCH : (i + 1) * BATCH] for k, v in arrays.items()} for i in range(STEPS)]


def train_hf(folder: str, batches, micro: int) -> tuple[list[float], dict[str, np.ndarray], set[str]]:
    """The loop HF Trainer runs; micro-batch j of a batch is rows j, j+micro, ... (as our step splits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside XLA's threads on a small CPU, torch's thread pool is 10-30x slower
    try:
        return _train_hf(folder, batches, micro)
    finally:
        torch.set_num_threads(threads)


def _train_hf(folder: str, batches, micro: int) -> tuple[list[float], dict[str, np.ndarray], set[str]]:
    torch.manual_seed(0)
    cls = transformers.MobileBertForSequenceClassification
    model = cls.from_pretrained(folder, attn_implementation="eager").train()
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": JOB.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=JOB.learning_rate, eps=JOB.adam_epsilon)
    warmup = math.ceil(STEPS * JOB.warmup_ratio)  # TrainingArguments.get_warmup_steps
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, STEPS)
    losses = []
    for batch in batches:
        total = 0.0
        for j in range(micro):
            mb = {k: torch.tensor(v[j::micro], dtype=torch.long) for k, v in batch.items()}
            loss = model(**mb).loss / micro
            loss.backward()
            total += loss.item()
        missing = [n for n, p in named if p.grad is None]
        assert not missing, f"params without a gradient (AdamW would skip them, optax would not): {missing}"
        torch.nn.utils.clip_grad_norm_(model.parameters(), JOB.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total)
    return losses, {k: v.detach().numpy() for k, v in model.state_dict().items()}, decay


def train_ours(folder: str, batches, micro: int) -> tuple[list[float], dict[str, np.ndarray], set[str]]:
    """The finetune job's optimizer and step on the same batches."""
    model, params = from_pretrained(folder, CLASS, strict=True)
    schedule = make_schedule(JOB, STEPS)
    tx = optim.adamw(
        schedule, weight_decay=JOB.weight_decay, eps=JOB.adam_epsilon, clip_norm=JOB.max_grad_norm
    )
    flat_mask = jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))
    decay = {flax_to_pt_name(tuple(str(k.key) for k in path))[0] for path, d in flat_mask if d}
    step = make_train_step(loss_fn_for(model), num_micro_batches=micro, learning_rate=schedule)
    state = TrainState.create(params, tx)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch, jax.random.key(0))
        assert float(metrics["finite"]) == 1.0
        losses.append(float(metrics["loss"]))
    return losses, to_pytorch(state.params, model.config), decay


@pytest.mark.parametrize("micro", [1, 2], ids=["one_batch", "accumulate_2"])
def test_training_trajectory_equals_hf(batches, hf_folder, micro):
    ref_losses, ref_params, ref_decay = train_hf(hf_folder, batches, micro)
    losses, params, decay = train_ours(hf_folder, batches, micro)
    assert decay == ref_decay, (
        f"weight-decay sets differ: only ours {sorted(decay - ref_decay)}, "
        f"only HF {sorted(ref_decay - decay)}"
    )
    loss_errs = [abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)]
    assert max(loss_errs) <= LOSS_TOL, f"per-step loss, relative: {loss_errs}"
    assert set(params) == set(ref_params)
    param_errs = {k: rel_err(params[k], ref_params[k]) for k in ref_params}
    worst = sorted(param_errs.items(), key=lambda kv: -kv[1])[:5]
    assert worst[0][1] <= PARAM_TOL, f"final params, relative, worst: {worst}"
    init = safetensors.numpy.load_file(os.path.join(hf_folder, "model.safetensors"))
    moved = max(rel_err(ref_params[k], v) for k, v in init.items())
    assert moved > 100 * PARAM_TOL, f"the params should move well beyond the tolerance: {moved}"


@pytest.mark.parametrize("ratio, steps", [(0.1, 25), (0.06, 110), (0.15, 7)])
def test_warmup_steps_round_up_as_hf(ratio, steps):
    """The job's schedule at every step equals HF's for `--warmup_ratio`: HF's own `get_warmup_steps`
    rounds the warmup up (ceil(0.1 * 25) = 3 steps; int() would give 2)."""
    warmup = transformers.TrainingArguments.get_warmup_steps(types.SimpleNamespace(warmup_steps=ratio), steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, steps)
    ref = []
    for _ in range(steps):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = make_schedule(JobConfig(learning_rate=1.0, warmup_ratio=ratio), steps)
    np.testing.assert_allclose([float(ours(t)) for t in range(steps)], ref, rtol=1e-6, atol=1e-7)
