"""Every recipe of `train/configs/` runs to completion in its smoke form and writes its metrics.

The smoke form (`train/smoke.py`) keeps each recipe's task, head, optimizer and schedule and shrinks the model,
data and steps; it reads the real files of ../shared/data where they exist (SQuAD v1.1 dev, GLUE dev sets,
CoNLL-2003) and writes small files for the rest.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
RECIPES = sorted(glob.glob(os.path.join(ROOT, "train", "configs", "*.json")))

_spec = importlib.util.spec_from_file_location("train_smoke", os.path.join(ROOT, "train", "smoke.py"))
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)


def _recipe(name: str) -> dict:
    with open(os.path.join(ROOT, "train", "configs", name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def test_every_task_has_a_recipe():
    names = {os.path.basename(p)[:-5] for p in RECIPES}
    glue = {f"glue_{t}" for t in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")}
    assert {"squad_v1", "squad_v2", "conll2003", "swag", "pretraining", "distillation", *glue} <= names


def test_recipes_carry_the_papers_hyperparameters():
    """google-research mobilebert README (run_squad.py, run_pretraining.py flags); REFERENCE.md §5."""
    for name, task in (("squad_v1", "squad"), ("squad_v2", "squad_v2")):
        r = _recipe(name)
        assert (r["task"], r["learning_rate"], r["num_train_epochs"], r["per_device_train_batch_size"]) == (
            task,
            4e-5,
            5.0,
            32,
        )
        assert (r["max_seq_length"], r["warmup_ratio"], r["optimizer"]) == (384, 0.1, "adamw")
        opts = r["task_options"]
        assert (
            opts["doc_stride"],
            opts["max_query_length"],
            opts["n_best_size"],
            opts["max_answer_length"],
        ) == (128, 64, 20, 30)
    pre = _recipe("pretraining")
    assert (pre["optimizer"], pre["learning_rate"], pre["max_steps"], pre["max_seq_length"]) == (
        "lamb",
        1.5e-3,
        500_000,
        512,
    )
    assert pre["task_options"]["max_predictions_per_seq"] == 20
    kd = _recipe("distillation")["distill"]
    assert (kd["steps_per_stage"] * 24, kd["distill_steps"], kd["batch_size"], kd["max_seq_length"]) == (
        240_000,
        500_000,
        2048,
        512,
    )
    assert (kd["learning_rate"], kd["warmup_steps"], kd["ground_truth_ratio"], kd["temperature"]) == (
        1.5e-3,
        10_000,
        0.5,
        1.0,
    )
    f = kd["factors"]
    assert (
        f["hidden_distill_factor"],
        f["attention_distill_factor"],
        f["beta_distill_factor"],
        f["gamma_distill_factor"],
    ) == (100.0, 1.0, 5000.0, 5.0)


def test_distill_recipe_loads_with_the_paper_configs():
    from mobilebert_jax.distill import run as R

    student, teacher, cfg = R.preset_configs(os.path.join(ROOT, "train", "configs", "distillation.json"))
    paper_s, paper_t, _ = R.preset_configs("paper")
    assert (student, teacher) == (paper_s, paper_t)
    assert R.stage_plan(cfg, student.num_hidden_layers)[-1].name == "distill"
    assert len(R.stage_plan(cfg, student.num_hidden_layers)) == 25  # 24 transfer stages, then distillation
    with pytest.raises(ValueError, match="neither a preset"):
        R.load_recipe("no/such/recipe.json")


def smoke_run(tmp_path, path: str) -> None:
    """Runs one recipe in its smoke form and checks what it wrote (the recipe test files call this)."""
    from mobilebert_jax.cli.main import main

    out = tmp_path / "run"
    argv = smoke.smoke_argv(path, str(out), DATA if os.path.isdir(DATA) else None)
    assert main(argv) == 0
    if argv[0] == "distill":
        report = json.loads((out / "distill_results.json").read_text())
        assert report["stopped"] == "done"
        stages = sorted(
            d.name for d in out.iterdir() if d.is_dir() and d.name.startswith(("transfer_", "distill"))
        )
        assert stages == ["distill", "transfer_00", "transfer_01"]
        assert math.isfinite(report["eval_student"]["loss"])
        return
    report = json.loads((out / "eval_results.json").read_text())
    assert report["steps"] == 3
    values = [v for v in report["eval"].values() if isinstance(v, (int, float))]
    assert values and all(math.isfinite(v) for v in values), report["eval"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert (out / "hf_model" / "config.json").exists()


def recipes(*names: str) -> list:
    """`pytest.param`s of these recipes (the smoke runs are split over files: each file is one unit of
    work for the test workers)."""
    paths = [os.path.join(ROOT, "train", "configs", n + ".json") for n in names]
    return [pytest.param(p, id=os.path.basename(p)[:-5]) for p in paths]


GLUE = [os.path.basename(p)[:-5] for p in RECIPES if os.path.basename(p).startswith("glue_")]
TASKS = ("squad_v1", "squad_v2", "conll2003", "swag", "pretraining")


def test_every_recipe_has_a_smoke_run():
    names = {os.path.basename(p)[:-5] for p in RECIPES}
    assert names == {*GLUE, *TASKS, "distillation"}, "a recipe without a smoke run: add it to a test file"


@pytest.mark.parametrize("path", recipes(*GLUE))
def test_recipe_smoke_run(tmp_path, path):
    smoke_run(tmp_path, path)
