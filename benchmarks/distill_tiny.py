"""Does the teacher help? A tiny IB-BERT → tiny MobileBERT run on real text, on CPU, in minutes.

    python benchmarks/distill_tiny.py [--out runs/distill_tiny] [--teacher-steps 500] [--steps-per-stage 40]
                                      [--distill-steps 240]

Text: the QNLI sentences shipped in the package (`mobilebert_jax/data/qnli_demo`, from SQuAD
articles): each row (question, sentence) is a two-sentence document; train.tsv is the training
text, dev.tsv the held-out text. Pre-training instances are BERT's (MLM 80/10/10 + NSP, 48 tokens).

1. teacher: the `tiny` preset's IB-BERT (LayerNorm, GELU, I=128 > H=64) pre-trained with MLM+NSP;
2. distilled student: embeddings and heads copied from the teacher, 4 layer-wise transfer stages
   (feature map, attention, mean, variance), then pre-training distillation (MLM targets
   0.5·one-hot + 0.5·teacher);
3. baseline: the same student from random init, MLM+NSP without a teacher, for the same total
   number of steps on the same batches in the same order, same LAMB recipe.

Reported: the transfer losses per stage (first → last logged), the distillation-phase MLM, and the
held-out MLM cross-entropy / accuracy of the teacher, the distilled student (after the transfer
phase and at the end) and the baseline. Results go to OUT/results.json.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from mobilebert_jax import MobileBertForPreTraining  # noqa: E402
from mobilebert_jax.distill import objectives as D  # noqa: E402
from mobilebert_jax.distill import run as R  # noqa: E402
from mobilebert_jax.jobs.config import PACKAGE_DATA  # noqa: E402
from mobilebert_jax.tasks.pretraining import PretrainingTask  # noqa: E402
from mobilebert_jax.text.tokenizer import MobileBertTokenizer  # noqa: E402
from mobilebert_jax.training.trainer import ArrayIterator, evaluate, make_eval_step  # noqa: E402


def qnli_documents(path: str) -> list[list[str]]:
    """[[question, sentence], ...] from a QNLI tsv (header row; quotes are literal text)."""
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    head = rows[0]
    qi, si = head.index("question"), head.index("sentence")
    return [[r[qi], r[si]] for r in rows[1:] if len(r) == len(head)]


def compact_vocabulary(train_docs: list[list[str]], tok, *feature_sets: dict) -> int:
    """Renumbers token ids (in place) to the wordpieces of the training text; returns the new vocab size.

    On a CPU the MLM head over all 30522 wordpieces is ~3/4 of a tiny model's step; the training text
    uses ~1/3 of them. Specials keep ids 0..4 in vocab order; a held-out wordpiece that the training
    text lacks becomes [UNK] (input and label); BERT's 10% random replacements, drawn from the full
    vocabulary by the data code, are redrawn from the compact one. Labels are never random.
    """
    specials = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id]
    seen = set(specials)
    for doc in train_docs:
        for ids in tok(doc, add_special_tokens=False, truncation=False, return_tensors=None)["input_ids"]:
            seen.update(ids)
    order = specials + sorted(seen - set(specials))
    table = np.full(len(tok), -1, np.int64)
    table[order] = np.arange(len(order))
    rng = np.random.default_rng(0)
    for f in feature_sets:
        for key in ("input_ids", "labels", "masked_lm_ids"):
            x = f[key]
            keep = x >= 0 if key != "labels" else x != -100
            new = np.where(keep, table[np.where(keep, x, 0)], x)
            unseen = keep & (new < 0)
            if key == "input_ids":  # a random replacement or an unseen held-out wordpiece
                is_label = np.zeros_like(unseen)
                rows, cols = np.nonzero(unseen)
                is_label[rows, cols] = f["labels"][rows, cols] != -100
                new = np.where(unseen & is_label, rng.integers(len(specials), len(order), x.shape), new)
            f[key] = np.where(new < 0, order.index(tok.unk_token_id), new).astype(x.dtype)
    return len(order)


def held_out_mlm(model, params, arrays, max_predictions: int, batch_size: int = 50) -> dict[str, float]:
    """MLM (true tokens) and NSP cross-entropy and accuracy on every held-out instance."""
    step = make_eval_step(
        D.bind_teacher(D.pretraining_distill_loss(model, None, max_predictions=max_predictions))
    )
    n = len(arrays["input_ids"]) // batch_size * batch_size
    batches = [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]
    return evaluate(step, params, batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/distill_tiny")
    ap.add_argument("--teacher-steps", type=int, default=None)
    ap.add_argument("--steps-per-stage", type=int, default=None)
    ap.add_argument("--distill-steps", type=int, default=None)
    ap.add_argument("--dupe-factor", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="reuse OUT (resume) instead of starting afresh")
    ap.add_argument("--full-vocab", action="store_true", help="keep all 30522 wordpieces (about 3x slower)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if os.path.isdir(args.out) and not args.keep:
        shutil.rmtree(args.out)
    sc, tc, cfg = R.preset_configs("tiny")
    over = {
        k: v
        for k, v in (("steps_per_stage", args.steps_per_stage), ("distill_steps", args.distill_steps))
        if v is not None
    }
    cfg = dataclasses.replace(cfg, **over)
    teacher_steps = args.teacher_steps or R.PRESETS["tiny"]["teacher_pretrain_steps"]
    total = sc.num_hidden_layers * cfg.steps_per_stage + cfg.distill_steps
    P = cfg.max_predictions_per_seq

    tok = MobileBertTokenizer.default()
    data_dir = os.path.join(PACKAGE_DATA, "qnli_demo")
    task = PretrainingTask(dupe_factor=args.dupe_factor, max_predictions_per_seq=P, seed=12345)
    train_docs = qnli_documents(os.path.join(data_dir, "train.tsv"))
    train = task.featurise(train_docs, tok, cfg.max_seq_length)
    held = dataclasses.replace(task, dupe_factor=1, seed=54321).featurise(
        qnli_documents(os.path.join(data_dir, "dev.tsv")), tok, cfg.max_seq_length
    )
    if not args.full_vocab:
        vocab = compact_vocabulary(train_docs, tok, train, held)
        sc, tc = sc.replace(vocab_size=vocab), tc.replace(vocab_size=vocab)
    print(
        f"text: {len(train['input_ids'])} training / {len(held['input_ids'])} held-out instances of "
        f"{cfg.max_seq_length} tokens (QNLI sentences, packaged); batch {cfg.batch_size}; "
        f"vocabulary {sc.vocab_size}",
        flush=True,
    )

    teacher, student = MobileBertForPreTraining(tc), MobileBertForPreTraining(sc)

    def n_par(m) -> int:
        shapes = jax.eval_shape(
            lambda: nn.meta.unbox(m.init(jax.random.key(0), **R.example_batch()))["params"]
        )
        return sum(x.size for x in jax.tree.leaves(shapes))

    print(
        f"teacher {n_par(teacher):,} params (I={tc.intra_bottleneck_size}, LayerNorm, GELU); student "
        f"{n_par(student):,} params (I={sc.intra_bottleneck_size}, NoNorm, ReLU, F={sc.num_feedforward_networks}); "
        f"{sc.num_hidden_layers} layers each",
        flush=True,
    )

    timings = {}
    t0 = time.perf_counter()
    print(f"\n[1] teacher pre-training: {teacher_steps} steps", flush=True)
    t_params, t_hist = R.pretrain(
        teacher,
        ArrayIterator(train, cfg.batch_size, seed=7),
        teacher_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=teacher_steps // 20,
        max_predictions=P,
        log_every=100,
        progress=False,
    )
    timings["teacher"] = time.perf_counter() - t0
    print("    mlm " + " ".join(f"{h['mlm_true']:.2f}" for h in t_hist), flush=True)

    t0 = time.perf_counter()
    print(
        f"\n[2] distillation: {sc.num_hidden_layers} x {cfg.steps_per_stage} transfer + {cfg.distill_steps} "
        "distillation steps",
        flush=True,
    )
    run_dir = os.path.join(args.out, "distill")
    data = ArrayIterator(train, cfg.batch_size, seed=0)
    kw = dict(progress=False, plot=False, say=lambda m: print("    " + m, flush=True))
    transfer_end = sc.num_hidden_layers * cfg.steps_per_stage
    mid = R.run_distillation(student, teacher, t_params, data, cfg, run_dir, stop_at_step=transfer_end, **kw)
    after_transfer = held_out_mlm(student, mid.params, held, P)
    res = R.run_distillation(student, teacher, t_params, data, cfg, run_dir, **kw)
    timings["distill"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"\n[3] baseline: the same student, no teacher, {total} steps on the same batches", flush=True)
    b_params, b_hist = R.pretrain(
        student,
        ArrayIterator(train, cfg.batch_size, seed=0),
        total,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        max_predictions=P,
        log_every=60,
        progress=False,
    )
    timings["baseline"] = time.perf_counter() - t0
    print("    mlm " + " ".join(f"{h['mlm_true']:.2f}" for h in b_hist), flush=True)

    evals = {
        "teacher": held_out_mlm(teacher, t_params, held, P),
        "distilled (after transfer, before distillation)": after_transfer,
        "distilled": held_out_mlm(student, res.params, held, P),
        "baseline (no teacher)": held_out_mlm(student, b_params, held, P),
    }
    histories = {**mid.histories, **res.histories}
    print("\ntransfer losses per stage (first -> last logged step; unweighted per-token values):")
    for name, hist in histories.items():
        keys = (
            "feature_map_mse",
            "attention_kl",
            "mean_sq_diff",
            "variance_abs_diff",
            "mlm_true",
            "loss/mlm",
        )
        print(
            f"  {name:12s} "
            + ", ".join(f"{k} {hist[0][k]:.4g} -> {hist[-1][k]:.4g}" for k in keys if k in hist[0])
        )
    print(
        f"\nheld-out ({len(held['input_ids'])} instances), MLM cross-entropy on the true tokens / accuracy:"
    )
    for name, e in evals.items():
        print(f"  {name:48s} mlm {e['loss/mlm']:.3f}  acc {e['mlm_accuracy']:.3f}   nsp {e['loss/nsp']:.3f}")
    d, b = evals["distilled"]["loss/mlm"], evals["baseline (no teacher)"]["loss/mlm"]
    print(
        f"\ndistilled - baseline held-out MLM: {d - b:+.3f} ({'teacher helps' if d < b else 'teacher does not help'}); "
        f"{total} student steps each"
    )
    timings["total"] = time.perf_counter() - t_start
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "config": cfg.to_dict(),
                "teacher_steps": teacher_steps,
                "student_steps": total,
                "eval": evals,
                "teacher_history": t_hist,
                "distill_histories": histories,
                "baseline_history": b_hist,
                "seconds": timings,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
