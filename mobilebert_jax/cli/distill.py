"""`mobilebert-jax distill`: IB-BERT teacher → MobileBERT student (progressive transfer + distillation).

    mobilebert-jax distill --config paper --teacher runs/ibbert/hf_model --train-file corpus.txt \\
        --output-dir runs/distill --mesh-fsdp 8
    mobilebert-jax distill --config tiny --train-file corpus.txt --output-dir runs/tiny   # CPU, minutes
    mobilebert-jax distill --config paper --compile-only --mesh-fsdp 8    # memory per device, no data

`--config paper` is the paper's recipe (24 stages x 10k steps of layer-wise transfer, then 500k
steps of pre-training distillation, batch 2048 x 512, LAMB lr 1.5e-3); `--config tiny` is a 4-layer
pair that runs on a CPU and, without `--teacher`, first pre-trains its own small teacher on the
training text. Flags override the preset. Rerunning the same command resumes where it stopped.

`--teacher` takes an HF-format folder (ours or transformers'), a folder written by
`mobilebert-jax pretrain|distill` (its `hf_model/` or `final_model/`), an orbax checkpoint, or a
google TF1 checkpoint (a distillation checkpoint's `teacher/` variables when it has them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

__all__ = ["add_distill_arguments", "run_distill", "load_teacher"]


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `distill` flags to `parser`."""
    a = parser.add_argument
    a(
        "--config",
        required=True,
        help="recipe: a preset (paper, tiny) or a JSON recipe file such as train/configs/distillation.json",
    )
    a(
        "--teacher",
        help="teacher checkpoint (HF folder, run folder, orbax, TF1); tiny pre-trains one if absent",
    )
    a("--teacher-config", help="config json or preset name for a teacher checkpoint without config.json")
    a("--student-config", help="student config json or preset name (default: the preset's student)")
    a("--student", help="initial student checkpoint (HF folder); default: random init")
    a(
        "--train-file",
        help="plain text (one sentence per line, a blank line between documents) or a "
        "prepare-pretraining-data folder (read through Grain)",
    )
    a("--dataloader-num-workers", type=int, default=0, help="reading processes for a prepared folder")
    a("--validation-file", help="plain text for a held-out MLM/NSP evaluation at the end")
    a("--output-dir", required=True, help="stage checkpoints, metrics, final_model/, distill_results.json")
    a("--tokenizer", help="tokenizer folder or hub id (default: the packaged uncased vocab)")
    for name, typ, what in (
        ("steps-per-stage", int, "layer-wise transfer steps per layer (0: skip the phase)"),
        ("distill-steps", int, "pre-training distillation steps (0: skip the phase)"),
        ("learning-rate", float, "peak lr of the distillation phase"),
        ("transfer-learning-rate", float, "base lr of the transfer phase (x3 and the per-stage warmup)"),
        ("warmup-steps", int, "linear warmup of the distillation phase"),
        ("batch-size", int, "global batch size"),
        ("max-seq-length", int, "tokens per example"),
        ("max-predictions-per-seq", int, "masked positions per example"),
        ("num-micro-batches", int, "gradient accumulation inside a step"),
        ("ground-truth-ratio", float, "weight of the one-hot MLM target (1 - teacher's)"),
        ("temperature", float, "teacher softmax temperature"),
        ("checkpoint-every", int, "steps between checkpoints"),
        ("log-every", int, "steps between logged metrics"),
        ("seed", int, "init, data order and dropout seed"),
    ):
        a("--" + name, type=typ, default=None, help=what)
    for name in ("hidden", "attention", "beta", "gamma"):
        a(f"--{name}-distill-factor", type=float, default=None, help=f"weight of the {name} transfer loss")
    a(
        "--teacher-pretrain-steps",
        type=int,
        default=None,
        help="steps to pre-train a teacher when --teacher is absent",
    )
    a("--dupe-factor", type=int, default=5, help="masked copies of each document (BERT's dupe_factor)")
    a(
        "--teacher-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="teacher compute/storage dtype",
    )
    a("--mesh-data", type=int, default=-1, help="data-parallel mesh axis (-1: the remaining devices)")
    a("--mesh-fsdp", type=int, default=1, help="FSDP mesh axis (params and optimizer state sharded)")
    a("--mesh-tensor", type=int, default=1, help="tensor-parallel mesh axis")
    a(
        "--sharding-rules",
        choices=("dp", "fsdp", "tensor", "fsdp_tensor"),
        default=None,
        help="logical-axis rules (default: the preset's)",
    )
    a("--stop-at-step", type=int, default=None, help="stop at this global step (rerun to continue)")
    a(
        "--compile-only",
        action="store_true",
        help="compile the steps on abstract inputs, print memory per device",
    )
    a("--no-progress", action="store_true", help="no progress bars")
    from mobilebert_jax.cli.distributed import add_distributed_arguments

    add_distributed_arguments(parser)


def _model_config(spec: str | None, default: Any) -> Any:
    from mobilebert_jax.checkpoints.tensorflow import load_config
    from mobilebert_jax.model.config import PRESETS, MobileBertConfig

    if spec is None:
        return default
    if spec in PRESETS:
        return MobileBertConfig.from_preset(spec)
    return load_config(spec)


def load_teacher(path: str, config: str | None = None) -> tuple[Any, Any]:
    """(config, params of MobileBertForPreTraining) from any checkpoint `mobilebert-jax convert` reads.

    A run folder (`hf_model/` or `final_model/` inside) is followed; a TF1 checkpoint with
    `teacher/...` variables gives its teacher, one without gives its only model.
    """
    from mobilebert_jax.checkpoints.tf_bundle import BundleReader
    from mobilebert_jax.cli.convert import _READERS, detect_source

    for sub in ("final_model", "hf_model"):
        if os.path.isfile(os.path.join(path, sub, "config.json")):
            path = os.path.join(path, sub)
            break
    fmt = detect_source(path)
    teacher = fmt == "tf1" and any(n.startswith("teacher/") for n in BundleReader(path).keys())
    ns = argparse.Namespace(src=path, config=config, model_class="MobileBertForPreTraining", teacher=teacher,
                            strict=False)  # fmt: skip
    params, cfg, _, report = _READERS[fmt](ns)
    print(report.summary(), flush=True)
    return cfg, params


def _read_arrays(task: Any, path: str, tok: Any, max_len: int) -> dict:
    from mobilebert_jax.tasks.pretraining import read_documents

    return task.featurise(read_documents(path), tok, max_len)


def run_distill(args: argparse.Namespace) -> int:
    """Runs `distill` with parsed `args`; returns the exit status."""
    from mobilebert_jax.cli.distributed import initialize_distributed

    initialize_distributed(args)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        sys.exit(f"distill: {str(e).strip() or type(e).__name__}")


def _run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from mobilebert_jax.distill import objectives as D
    from mobilebert_jax.distill import run as R
    from mobilebert_jax.model.heads import MobileBertForPreTraining
    from mobilebert_jax.tasks.pretraining import PretrainingTask
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer
    from mobilebert_jax.training import sharding as shd
    from mobilebert_jax.training.trainer import ArrayIterator, evaluate, make_eval_step

    t0 = time.perf_counter()
    preset = R.load_recipe(args.config)
    sc, tc, cfg = R.preset_configs(args.config)
    sc = _model_config(args.student_config, sc)
    tc = _model_config(args.teacher_config, tc) if not args.teacher else tc
    over = {f.name: getattr(args, f.name) for f in dataclasses.fields(R.DistillConfig)
            if getattr(args, f.name, None) is not None}  # fmt: skip
    fac = {f"{k}_distill_factor": getattr(args, f"{k}_distill_factor") for k in ("hidden", "attention", "beta", "gamma")
           if getattr(args, f"{k}_distill_factor") is not None}  # fmt: skip
    if fac:
        over["factors"] = dataclasses.replace(cfg.factors, **fac)
    cfg = dataclasses.replace(cfg, **over)
    mesh = shd.make_mesh(args.mesh_data, args.mesh_fsdp, args.mesh_tensor)
    rules = shd.logical_rules(args.sharding_rules or preset["sharding_rules"], mesh, sc)
    tdtype = jnp.bfloat16 if args.teacher_dtype == "bfloat16" else jnp.float32
    say = lambda m: print(m, flush=True) if jax.process_index() == 0 else None  # noqa: E731

    if args.compile_only:
        if args.teacher:
            tc = load_teacher(args.teacher, args.teacher_config)[0]
        say(f"compiling on mesh {dict(mesh.shape)}, batch {cfg.batch_size} x {cfg.max_seq_length}, "
            f"{cfg.num_micro_batches} micro-batches")  # fmt: skip
        last = f"transfer_{sc.num_hidden_layers - 1:02d}"
        stages = tuple(s.name for s in R.stage_plan(cfg, sc.num_hidden_layers) if s.name in (last, "distill"))
        report = R.compile_report(sc, tc, cfg, mesh, rules, stages=stages, teacher_dtype=tdtype)
        for name, row in report.items():
            say(f"{name}: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in row.items()) + " per device")
        return 0
    if not args.train_file:
        raise ValueError("--train-file is required (plain text, one sentence per line)")
    tok = (
        MobileBertTokenizer.from_pretrained(args.tokenizer)
        if args.tokenizer
        else MobileBertTokenizer.default()
    )
    task = PretrainingTask(dupe_factor=args.dupe_factor, max_predictions_per_seq=cfg.max_predictions_per_seq or 20,
                           seed=cfg.seed)  # fmt: skip
    from mobilebert_jax.tasks import pretraining_data as PD
    from mobilebert_jax.tasks.pretraining import is_prepared
    from mobilebert_jax.training.grain_data import prepared_iterator

    prepared = is_prepared(args.train_file)  # ArrayRecord shards, streamed by Grain
    if prepared:
        n = PD.num_instances(args.train_file)
    else:
        arrays = _read_arrays(task, args.train_file, tok, cfg.max_seq_length)
        n = len(arrays["input_ids"])

    def data(seed: int):
        if not prepared:
            return ArrayIterator(arrays, cfg.batch_size, seed=seed)
        return prepared_iterator(args.train_file, cfg.batch_size, seed=seed, tokenizer=tok,
                                    num_workers=args.dataloader_num_workers, max_seq_length=cfg.max_seq_length,
                                    max_predictions_per_seq=task.max_predictions_per_seq)  # fmt: skip

    if prepared:  # the folder's checks (tokens, masked positions, vocabulary) before anything runs
        data(cfg.seed).close()
    say(f"{n} training instances of {cfg.max_seq_length} tokens from {args.train_file}")
    os.makedirs(args.output_dir, exist_ok=True)

    if args.teacher:
        tc, t_params = load_teacher(args.teacher, args.teacher_config)
        teacher = MobileBertForPreTraining(tc, dtype=tdtype, param_dtype=tdtype)
    else:
        steps = args.teacher_pretrain_steps or preset.get("teacher_pretrain_steps")
        if not steps:
            raise ValueError("--teacher is required for --config paper (pre-train IB-BERT with `mobilebert-jax "
                             "pretrain` first), or pass --teacher-pretrain-steps")  # fmt: skip
        teacher = MobileBertForPreTraining(tc, dtype=tdtype, param_dtype=tdtype)
        tdir = os.path.join(args.output_dir, "teacher")
        say(
            f"pre-training a teacher ({tc.num_hidden_layers} layers, I={tc.intra_bottleneck_size}) for {steps} steps"
        )
        t_data = data(cfg.seed + 1)
        t_params, hist = R.pretrain(teacher, t_data, steps,
                                    learning_rate=cfg.learning_rate, warmup_steps=max(steps // 20, 1),
                                    max_predictions=cfg.max_predictions_per_seq, workdir=tdir, mesh=mesh, rules=rules,
                                    seed=cfg.seed + 1, progress=not args.no_progress)  # fmt: skip
        if hasattr(t_data, "close"):
            t_data.close()  # Grain's reading processes
        if hist:
            say(f"teacher: mlm_true {hist[0]['mlm_true']:.3f} -> {hist[-1]['mlm_true']:.3f}")
        from mobilebert_jax.checkpoints.hub import save_pretrained
        from mobilebert_jax.training.trainer import to_host

        host_t_params = to_host(t_params)  # every process: gathers FSDP/tensor shards
        if jax.process_index() == 0:
            save_pretrained(os.path.join(tdir, "hf_model"), host_t_params, tc, "MobileBertForPreTraining")
    student = MobileBertForPreTraining(sc)
    s_params = None
    if args.student:
        from mobilebert_jax.checkpoints.hub import from_pretrained

        _, s_params = from_pretrained(args.student, MobileBertForPreTraining)
    s_data = data(cfg.seed)
    result = R.run_distillation(student, teacher, t_params, s_data, cfg,
                                args.output_dir, student_params=s_params, mesh=mesh, rules=rules,
                                stop_at_step=args.stop_at_step, progress=not args.no_progress, say=say)  # fmt: skip
    if hasattr(s_data, "close"):
        s_data.close()
    report: dict[str, Any] = {
        "stopped": result.stopped,
        "step": result.step,
        "seconds": time.perf_counter() - t0,
    }
    if args.validation_file and result.stopped == "done":
        ev = _read_arrays(
            dataclasses.replace(task, dupe_factor=1), args.validation_file, tok, cfg.max_seq_length
        )
        rows, n_dev = len(ev["input_ids"]), mesh.devices.size
        bs = min(cfg.batch_size, rows) // n_dev * n_dev
        if bs == 0:
            raise ValueError(f"{args.validation_file}: {rows} instances, fewer than the {n_dev} devices")
        # whole batches only (every device gets rows); the dropped tail is < one batch
        batches = [{k: v[i : i + bs] for k, v in ev.items()} for i in range(0, rows - bs + 1, bs)]
        report["eval_instances"] = len(batches) * bs
        for name, model, params in (("student", student, result.params), ("teacher", teacher, t_params)):
            p_shard = R.place_params(model, params, mesh, rules)[1]
            step = make_eval_step(D.bind_teacher(D.pretraining_distill_loss(model, None,
                                  max_predictions=cfg.max_predictions_per_seq)),
                                  param_shardings=p_shard, mesh=mesh, rules=rules)  # fmt: skip
            report[f"eval_{name}"] = evaluate(step, params, batches, shd.batch_sharding(mesh))
            say(f"held-out {name}: {json.dumps(report[f'eval_{name}'])}")
    if jax.process_index() == 0:
        with open(os.path.join(args.output_dir, "distill_results.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    say(f"distill: {result.stopped} at global step {result.step} in {report['seconds']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m mobilebert_jax.cli.distill ...`)."""
    parser = argparse.ArgumentParser(prog="mobilebert-jax distill", description=__doc__.split("\n")[0])
    add_distill_arguments(parser)
    return run_distill(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
