"""The distillation job: IB-BERT teacher → MobileBERT student (progressive transfer + distillation).

    report = run_distill(DistillJobConfig(recipe="tiny", output_dir="runs/tiny", train_file="corpus.txt"))

The recipe (`distill.run.DistillConfig`) comes from a preset ("paper", "tiny") or a JSON recipe file,
with `recipe_overrides` on top. Teacher and student checkpoints are read by the one loader
(`checkpoints.loader.load_model`); without a teacher, the tiny recipe first pre-trains its own.
Rerunning the same config resumes where it stopped (`distill.run.run_distillation`); a dir holding
a run of other settings is refused, and a second job on the dir is refused by its `.lock`
(`jobs.run_dir.locked`). Every path (recipe, configs, checkpoints, data, output dir) may be a gs:// URL
(`mobilebert_jax.storage`): orbax writes the stage checkpoints to the bucket, the model folders are put in
place whole (`storage.replace_dir`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mobilebert_jax import storage
from mobilebert_jax.checkpoints.formats import has_teacher_model
from mobilebert_jax.checkpoints.hub import save_pretrained
from mobilebert_jax.checkpoints.loader import load_model, model_folder
from mobilebert_jax.checkpoints.tensorflow import load_config
from mobilebert_jax.distill.objectives import bind_teacher, pretraining_distill_loss
from mobilebert_jax.distill.run import (
    DistillConfig,
    check_run_file,
    compile_report,
    load_recipe,
    place_params,
    preset_configs,
    pretrain,
    run_distillation,
    run_record,
    stage_plan,
)
from mobilebert_jax.jobs.run_dir import file_fingerprint, locked
from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.heads import MobileBertForPreTraining
from mobilebert_jax.tasks import pretraining_data
from mobilebert_jax.tasks.pretraining import PretrainingTask, is_prepared, read_documents
from mobilebert_jax.text.tokenizer import MobileBertTokenizer
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training.grain_data import prepared_iterator
from mobilebert_jax.training.trainer import ArrayIterator, evaluate, make_eval_step, to_host

_FACTORS = ("hidden", "attention", "beta", "gamma")


@dataclasses.dataclass(frozen=True)
class DistillJobConfig:
    """What `run_distill` runs (the `mobilebert-jax distill` flags)."""

    # the recipe: a preset (paper, tiny) or a JSON recipe file such as train/configs/distillation.json
    recipe: str
    # stage checkpoints, metrics, final_model/, distill_results.json
    output_dir: str
    # teacher checkpoint (anything load_model reads; a TF1 distillation checkpoint gives its teacher/)
    teacher: str | None = None
    # config json or preset name for a teacher without config.json (or the pre-trained teacher's)
    teacher_config: str | None = None
    # student config json or preset name (default: the recipe's student)
    student_config: str | None = None
    # initial student checkpoint (default: random init)
    student: str | None = None
    # plain text (one sentence a line, a blank line between documents) or a prepared folder (Grain)
    train_file: str | None = None
    # reading processes for a prepared folder
    dataloader_num_workers: int = 0
    # plain text for a held-out MLM/NSP evaluation at the end
    validation_file: str | None = None
    # tokenizer folder or hub id (default: the packaged uncased vocab)
    tokenizer: str | None = None
    # recipe fields to change (DistillConfig's, plus {hidden,attention,beta,gamma}_distill_factor)
    recipe_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # steps to pre-train a teacher when `teacher` is None (default: the recipe's)
    teacher_pretrain_steps: int | None = None
    # masked copies of each document (BERT's dupe_factor)
    dupe_factor: int = 5
    # teacher compute/storage dtype: "float32" | "bfloat16"
    teacher_dtype: str = "float32"
    # mesh axes (-1: the remaining devices) and logical-axis rules (default: the recipe's)
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    sharding_rules: str | None = None
    # stop at this global step (rerun to continue)
    stop_at_step: int | None = None
    # compile the steps on abstract inputs and report memory per device; no data, no training
    compile_only: bool = False
    progress: bool = True


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _model_config(spec: str | None, default: MobileBertConfig) -> MobileBertConfig:
    """A preset name or a config json; `default` when None."""
    if spec is None:
        return default
    if spec in PRESETS:
        return MobileBertConfig.from_preset(spec)
    return load_config(spec)


def load_teacher(path: str, config_file: str | None = None) -> tuple[MobileBertConfig, Any]:
    """(config, params of MobileBertForPreTraining) from anything `load_model` reads.

    A run folder (`final_model/` or `hf_model/` inside) is followed; a TF1 checkpoint with
    `teacher/...` variables gives its teacher, one without gives its only model.
    """
    teacher = has_teacher_model(model_folder(path) or path)  # a gs:// checkpoint: its local copy
    loaded = load_model(path, "MobileBertForPreTraining", config_file=config_file, teacher=teacher)
    print(loaded.report.summary(), flush=True)
    return loaded.config, loaded.params


def _recipe(config: DistillJobConfig) -> tuple[dict, MobileBertConfig, MobileBertConfig, DistillConfig]:
    """(recipe dict, student config, teacher config, DistillConfig with the overrides)."""
    preset = load_recipe(config.recipe)
    sc, tc, cfg = preset_configs(config.recipe)
    sc = _model_config(config.student_config, sc)
    tc = _model_config(config.teacher_config, tc) if not config.teacher else tc
    over = dict(config.recipe_overrides)
    factors = {
        f"{k}_distill_factor": over.pop(f"{k}_distill_factor")
        for k in _FACTORS
        if f"{k}_distill_factor" in over
    }
    if factors:
        over["factors"] = dataclasses.replace(cfg.factors, **factors)
    return preset, sc, tc, dataclasses.replace(cfg, **over)


def _compile_only(config, sc, tc, cfg, mesh, rules, teacher_dtype) -> dict[str, Any]:
    """Memory per device of the last transfer stage and the distillation stage, compiled on abstract inputs."""
    if config.teacher:
        tc = load_teacher(config.teacher, config.teacher_config)[0]
    _say(
        f"compiling on mesh {dict(mesh.shape)}, batch {cfg.batch_size} x {cfg.max_seq_length}, "
        f"{cfg.num_micro_batches} micro-batches"
    )
    last = f"transfer_{sc.num_hidden_layers - 1:02d}"
    stages = tuple(s.name for s in stage_plan(cfg, sc.num_hidden_layers) if s.name in (last, "distill"))
    report = compile_report(sc, tc, cfg, mesh, rules, stages=stages, teacher_dtype=teacher_dtype)
    for name, row in report.items():
        _say(f"{name}: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in row.items()) + " per device")
    return {"compile_report": report}


def _training_data(config: DistillJobConfig, task: PretrainingTask, tok, cfg: DistillConfig):
    """(data(seed) -> a batch iterator, number of instances): plain text in memory, or a prepared folder."""
    path = config.train_file
    if not is_prepared(path):
        arrays = task.featurise(read_documents(path), tok, cfg.max_seq_length)
        return (lambda seed: ArrayIterator(arrays, cfg.batch_size, seed=seed)), len(arrays["input_ids"])

    def data(seed: int):  # ArrayRecord shards, streamed by Grain
        return prepared_iterator(
            path,
            cfg.batch_size,
            seed=seed,
            tokenizer=tok,
            num_workers=config.dataloader_num_workers,
            max_seq_length=cfg.max_seq_length,
            max_predictions_per_seq=task.max_predictions_per_seq,
        )

    data(cfg.seed).close()  # the folder's checks (tokens, masked positions, vocabulary) before anything runs
    return data, pretraining_data.num_instances(path)


def _close(data: Any) -> None:
    if hasattr(data, "close"):
        data.close()  # Grain's reading processes


def _pretrained_teacher(
    config, preset, sc, tc, cfg, data, data_id, mesh, rules, teacher_dtype
) -> tuple[Any, Any]:
    """(teacher model, params): the given checkpoint, else one pre-trained here on the training data
    (in `teacher/` of the output dir, once the dir's `distill_run.json` is known to match)."""
    if config.teacher:
        tc, params = load_teacher(config.teacher, config.teacher_config)
        return MobileBertForPreTraining(tc, dtype=teacher_dtype, param_dtype=teacher_dtype), params
    steps = config.teacher_pretrain_steps or preset.get("teacher_pretrain_steps")
    if not steps:
        raise ValueError(
            "--teacher is required for --config paper (pre-train IB-BERT with `mobilebert-jax "
            "pretrain` first), or pass --teacher-pretrain-steps"
        )
    # before teacher/ is written
    check_run_file(config.output_dir, run_record(cfg, sc, tc, data_id))
    teacher = MobileBertForPreTraining(tc, dtype=teacher_dtype, param_dtype=teacher_dtype)
    tdir = storage.join(config.output_dir, "teacher")
    _say(
        f"pre-training a teacher ({tc.num_hidden_layers} layers, I={tc.intra_bottleneck_size}) for {steps} steps"
    )
    t_data = data(cfg.seed + 1)
    params, hist = pretrain(
        teacher,
        t_data,
        steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=max(steps // 20, 1),
        max_predictions=cfg.max_predictions_per_seq,
        workdir=tdir,
        mesh=mesh,
        rules=rules,
        seed=cfg.seed + 1,
        progress=config.progress,
    )
    _close(t_data)
    if hist:
        _say(f"teacher: mlm_true {hist[0]['mlm_true']:.3f} -> {hist[-1]['mlm_true']:.3f}")
    host_params = to_host(params)  # every process: gathers FSDP/tensor shards
    if jax.process_index() == 0:
        write = lambda tmp: save_pretrained(tmp, host_params, tc, "MobileBertForPreTraining")  # noqa: E731
        storage.replace_dir(storage.join(tdir, "hf_model"), write)
    return teacher, params


def _held_out(config, task, tok, cfg, mesh, rules, models: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """MLM/NSP metrics of each (model, params) on the validation text (whole batches only)."""
    once = dataclasses.replace(task, dupe_factor=1)
    ev = once.featurise(read_documents(config.validation_file), tok, cfg.max_seq_length)
    rows, n_dev = len(ev["input_ids"]), mesh.devices.size
    bs = min(cfg.batch_size, rows) // n_dev * n_dev
    if bs == 0:
        raise ValueError(f"{config.validation_file}: {rows} instances, fewer than the {n_dev} devices")
    # every device gets rows; the dropped tail is < one batch
    batches = [{k: v[i : i + bs] for k, v in ev.items()} for i in range(0, rows - bs + 1, bs)]
    report: dict[str, Any] = {"eval_instances": len(batches) * bs}
    for name, (model, params) in models.items():
        p_shard = place_params(model, params, mesh, rules)[1]
        loss = bind_teacher(
            pretraining_distill_loss(model, None, max_predictions=cfg.max_predictions_per_seq)
        )
        step = make_eval_step(loss, param_shardings=p_shard, mesh=mesh, rules=rules)
        report[f"eval_{name}"] = evaluate(step, params, batches, shd.batch_sharding(mesh))
        _say(f"held-out {name}: {json.dumps(report[f'eval_{name}'])}")
    return report


def _tokenizer_and_task(config: DistillJobConfig, cfg: DistillConfig) -> tuple[Any, PretrainingTask]:
    tok = (
        MobileBertTokenizer.from_pretrained(config.tokenizer)
        if config.tokenizer
        else MobileBertTokenizer.default()
    )
    task = PretrainingTask(
        dupe_factor=config.dupe_factor,
        max_predictions_per_seq=cfg.max_predictions_per_seq or 20,
        seed=cfg.seed,
    )
    return tok, task


def run_distill(config: DistillJobConfig) -> dict[str, Any]:
    """Runs (or resumes) the distillation; returns the report also written to `distill_results.json`."""
    t0 = time.perf_counter()
    preset, sc, tc, cfg = _recipe(config)
    mesh = shd.make_mesh(config.mesh_data, config.mesh_fsdp, config.mesh_tensor)
    rules = shd.logical_rules(config.sharding_rules or preset["sharding_rules"], mesh, sc)
    teacher_dtype = jnp.bfloat16 if config.teacher_dtype == "bfloat16" else jnp.float32
    if config.compile_only:
        return _compile_only(config, sc, tc, cfg, mesh, rules, teacher_dtype)
    if not config.train_file:
        raise ValueError("--train-file is required (plain text, one sentence per line)")
    tok, task = _tokenizer_and_task(config, cfg)
    data, n = _training_data(config, task, tok, cfg)
    _say(f"{n} training instances of {cfg.max_seq_length} tokens from {config.train_file}")
    out = config.output_dir
    data_id = file_fingerprint(config.train_file)  # in distill_run.json: a resume on other data is refused
    with locked(out):  # a second job on the dir (local or gs://) is refused, naming the holder
        teacher, t_params = _pretrained_teacher(
            config, preset, sc, tc, cfg, data, data_id, mesh, rules, teacher_dtype
        )
        student = MobileBertForPreTraining(sc)
        s_params = load_model(config.student, "MobileBertForPreTraining").params if config.student else None
        s_data = data(cfg.seed)
        result = run_distillation(
            student,
            teacher,
            t_params,
            s_data,
            cfg,
            out,
            student_params=s_params,
            mesh=mesh,
            rules=rules,
            stop_at_step=config.stop_at_step,
            progress=config.progress,
            say=_say,
            data_identity=data_id,
        )
        _close(s_data)
        report: dict[str, Any] = {
            "stopped": result.stopped,
            "step": result.step,
            "seconds": time.perf_counter() - t0,
        }
        if config.validation_file and result.stopped == "done":
            models = {"student": (student, result.params), "teacher": (teacher, t_params)}
            report.update(_held_out(config, task, tok, cfg, mesh, rules, models))
        if jax.process_index() == 0:
            storage.write_json(storage.join(out, "distill_results.json"), report)  # whole, last
    _say(f"distill: {result.stopped} at global step {result.step} in {report['seconds']:.0f} s")
    return report


__all__ = ["DistillJobConfig", "load_teacher", "run_distill"]
