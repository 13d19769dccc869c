"""Jobs that cannot silently do the wrong thing (issue 14): run identity, preemption, evaluate/predict,
validation before work, HF flags. Tiny model (the `mobilebert-test` preset with the packaged tokenizer),
8-row files; one fine-tune is shared by the tests that only read its output dir (or a copy). The jobs
compile the same steps again and again, so this module uses JAX's persistent compilation cache (in a
temporary folder, for this module and its subprocess only)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import jax
import pytest
from conftest import SENTIMENT_SENTENCES
from jax.experimental.compilation_cache import compilation_cache

from mobilebert_jax.cli.main import main

SENTS = SENTIMENT_SENTENCES
SMALL = [
    "--mesh_data",
    "1",
    "--max_seq_length",
    "32",
    "--per_device_eval_batch_size",
    "8",
    "--no-progress",
    "--model_config",
    '{"num_hidden_layers": 1}',
]


def _sst2(path, labels: bool = True) -> str:
    rows = "".join(f"{s}\t{i % 2}\n" if labels else f"{s}\n" for i, s in enumerate(SENTS))
    path.write_text(("sentence\tlabel\n" if labels else "sentence\n") + rows, encoding="utf-8")
    return str(path)


def _mrpc(path) -> str:
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = "".join(f"{i % 2}\t{i}\t{i + 100}\t{s}\t{SENTS[-1 - i]}\n" for i, s in enumerate(SENTS))
    path.write_text(head + rows, encoding="utf-8")
    return str(path)


def _train_args(train: str, out, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model_name_or_path",
        "mobilebert-test",
        "--train_file",
        train,
        "--validation_file",
        train,
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        *SMALL,
        *extra,
    ]


def _snapshot(d) -> dict:
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, d)] = (st.st_size, st.st_mtime_ns)
    return out


def _sha(p) -> str:
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# The HF-style command line of issue 14, with periodic eval and the best model kept.
HF_RUN = [
    "--task_name",
    "sst2",
    "--do_train",
    "--do_eval",
    "--learning_rate",
    "3e-5",
    "--overwrite_output_dir",
    "--max_steps",
    "4",
    "--save_steps",
    "2",
    "--logging_steps",
    "1",
    "--eval_steps",
    "2",
    "--load_best_model_at_end",
    "--warmup_steps",
    "1",
    "--lr_scheduler_type",
    "constant_with_warmup",
]
# Long runs to interrupt; the same learning-rate schedule as HF_RUN, so the steps compile to the same
# programs (the compilation cache then serves them).
LONG = [
    "--task_name",
    "sst2",
    "--learning_rate",
    "3e-5",
    "--warmup_steps",
    "1",
    "--lr_scheduler_type",
    "constant_with_warmup",
    "--save_steps",
    "1000",
    "--logging_steps",
    "1",
    "--max_steps",
]


_CACHE_KEYS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("jax_cache"))
    old = [getattr(jax.config, k) for k in _CACHE_KEYS]
    for k, v in zip(_CACHE_KEYS, (d, 0.0, 0)):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield d
    for k, v in zip(_CACHE_KEYS, old):
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    """The HF command line, run into a dir that holds the files of another run (--overwrite_output_dir)."""
    d = tmp_path_factory.mktemp("sst2")
    train = _sst2(d / "sst2.tsv")
    out = d / "run"
    (out / "checkpoints" / "7" / "state").mkdir(parents=True)
    (out / "hf_model").mkdir()
    (out / "run.json").write_text(json.dumps({"task": "mrpc"}))
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(1, 8))
    )
    (out / "notes.txt").write_text("not ours")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(_train_args(train, out, *HF_RUN))
    return rc, train, out, text.getvalue()


def test_hf_command_line_end_to_end_with_periodic_eval_and_best_model(sst2_run):
    rc, train, out, text = sst2_run
    assert rc == 0, text
    # --overwrite_output_dir removed the other run's files (only those) and started clean
    assert "removed the earlier run's checkpoints, hf_model, metrics.jsonl, run.json" in text
    assert "resuming" not in text and (out / "notes.txt").exists()
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "4"]
    report = json.loads((out / "eval_results.json").read_text())
    assert report["stopped"] == "done" and report["steps"] == 4 and report["task"] == "sst2"
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "accuracy" and best["step"] in (2, 4) and report["model_step"] == best["step"]
    rows = _rows(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [2, 4]
    # loss.png has the eval metric panel beside the loss (a 12-inch-wide figure at 100 dpi)
    width = struct.unpack(">I", (out / "loss.png").read_bytes()[16:20])[0]
    assert width == 1200
    identity = json.loads((out / "run.json").read_text())
    assert identity["train_file"]["sha256"] == _sha(train) and identity["labels"] == ["negative", "positive"]
    assert identity["hyperparameters"]["learning_rate"] == 3e-5
    assert identity["config"]["vocab_size"] == 30522  # the preset follows the packaged tokenizer
    for name in ("hf_model/model.safetensors", "best_model/model.safetensors"):
        assert os.stat(out / name).st_mode & 0o777 == 0o644, name
    cfg = json.loads((out / "hf_model" / "config.json").read_text())
    assert cfg["finetuning_task"] == "sst2"


def test_other_run_or_changed_hyperparameter_is_refused_before_touching_anything(sst2_run, tmp_path, capsys):
    _, _, src, _ = sst2_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = _snapshot(out)
    mrpc = _mrpc(tmp_path / "mrpc.tsv")
    capsys.readouterr()
    rc = main(_train_args(mrpc, out, "--task_name", "mrpc", "--max_steps", "2", "--save_steps", "2"))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {out} holds another run")
    for diff in ("task: 'sst2' -> 'mrpc'", "labels: ", "train_file.sha256", "learning_rate: 3e-05 -> 5e-05"):
        assert diff in err, diff
    assert "--overwrite_output_dir" in err and "--resume_from_checkpoint" in err
    assert _snapshot(out) == before  # nothing written, nothing removed
    # the same model and data with one changed hyperparameter is refused too (not a silent no-op)
    rc = main(
        _train_args(_sst2(tmp_path / "s.tsv"), out, *HF_RUN[:4], "--learning_rate", "1e-4", *HF_RUN[7:])
    )
    err = capsys.readouterr().err
    assert rc == 2 and "(1 difference: hyperparameters.learning_rate: 3e-05 -> 0.0001)" in err, err
    assert _snapshot(out) == before


def test_same_run_resumes_past_a_corrupted_checkpoint_without_duplicate_metric_rows(
    sst2_run, tmp_path, capsys
):
    _, train, src, _ = sst2_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "4"]
    for root, _, files in os.walk(out / "checkpoints" / "4" / "state"):  # the latest checkpoint is corrupt
        for f in files:
            if "ocdbt" not in f and not f.startswith("_") and "commit" not in f:
                open(os.path.join(root, f), "wb").write(b"garbage")
    capsys.readouterr()
    rc = main(_train_args(train, out, *[a for a in HF_RUN if a != "--overwrite_output_dir"]))
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "warning: checkpoint step 4" in text and "falling back to step 2" in text
    assert "resuming from step 2 of 4" in text
    rows = _rows(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # rows 3-4 truncated, then rewritten
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [2, 4]
    assert sorted(n for n in os.listdir(out / "checkpoints") if n.isdigit()) == ["2", "4"]
    assert any(n.startswith("4.unreadable-") for n in os.listdir(out / "checkpoints"))  # kept


def test_evaluate_and_predict_write_their_own_dirs_from_the_model_alone(sst2_run, capsys):
    _, train, out, _ = sst2_run
    mine = {n: _sha(out / n) for n in ("eval_results.json", "predictions.tsv")}
    trained = json.loads((out / "eval_results.json").read_text())["eval"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "hf_model"), "--validation_file", train, *SMALL[:4]]) == 0
    text = capsys.readouterr().out
    where = out / "evaluate_sst2"
    assert f"wrote {where / 'eval_results.json'}" in text
    assert json.loads((where / "eval_results.json").read_text())["accuracy"] == trained["accuracy"]
    # an --output_dir holding the fine-tune gets a subfolder, never the fine-tune's files
    assert (
        main(
            [
                "predict",
                "--model",
                str(out / "hf_model"),
                "--test_file",
                train,
                "--output_dir",
                str(out),
                *SMALL[:4],
            ]
        )
        == 0
    )
    assert f"to {out / 'predict_sst2' / 'predictions.tsv'}" in capsys.readouterr().out
    assert len((out / "predict_sst2" / "predictions.tsv").read_text().splitlines()) == len(SENTS) + 1
    assert {n: _sha(out / n) for n in mine} == mine


def test_ner_with_a_custom_entity_type_is_evaluated_from_the_model_alone(tmp_path, capsys):
    ner = tmp_path / "ner.txt"
    ner.write_text(
        "".join(
            f"John B-PER\nate O\n{w} B-FOOD\nin O\n{c} B-LOC\n\n"
            for w, c in (("pasta", "Rome"), ("sushi", "Tokyo"), ("tacos", "Puebla"), ("paella", "Valencia"))
        ),
        encoding="utf-8",
    )
    out = tmp_path / "run"
    assert (
        main(_train_args(str(ner), out, "--task_name", "ner", "--max_steps", "2", "--save_steps", "2")) == 0
    )
    labels = json.loads((out / "hf_model" / "config.json").read_text())["id2label"]
    assert len(labels) == 11 and "B-FOOD" in labels.values()
    capsys.readouterr()
    rc = main(["evaluate", "--model", str(out / "hf_model"), "--validation_file", str(ner), *SMALL[:4]])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    metrics = json.loads((out / f"evaluate_{ner.stem}" / "eval_results.json").read_text())
    assert "FOOD_f1" in metrics and "f1" in metrics


def _wait_for(path, proc=None, timeout=300.0):
    t = time.time()
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(proc.stdout.read()[-3000:])
        if time.time() - t > timeout:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def test_sigterm_saves_at_the_step_skips_eval_and_export_and_exits_143(tmp_path, compile_cache):
    train = _sst2(tmp_path / "sst2.tsv")
    out = tmp_path / "run"
    args = _train_args(train, out, *LONG, "100000")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobilebert_jax.cli.main", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(out / "metrics.jsonl", proc)
        t = time.time()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        took = time.time() - t
    finally:
        proc.kill()
    text = proc.stdout.read()
    assert rc == 143, text[-3000:]
    assert took < 5, f"exit took {took:.1f} s after SIGTERM"
    report = json.loads((out / "eval_results.json").read_text())
    assert report["stopped"] == "preempted" and report["signal"] == "SIGTERM" and "eval" not in report
    step = report["steps"]
    assert 1 <= step < 100000 and os.path.isdir(out / "checkpoints" / str(step))
    assert not (out / "hf_model").exists() and not (out / "predictions.tsv").exists()


def test_sigint_stops_with_130_and_the_checkpoint_resumes(tmp_path, capsys):
    train = _sst2(tmp_path / "sst2.tsv")
    out = tmp_path / "run"
    args = _train_args(train, out, *LONG, "100000")

    def interrupt():
        _wait_for(out / "metrics.jsonl")
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert main(args) == 130
    report = json.loads((out / "eval_results.json").read_text())
    assert report["stopped"] == "preempted" and report["signal"] == "SIGINT"
    step = report["steps"]
    assert not (out / "hf_model").exists()
    ck = str(out / "checkpoints" / str(step))
    # the stopped run's checkpoint converts without --config: the model config is in run.json
    assert main(["convert", ck, str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    run_config = json.loads((out / "run.json").read_text())["config"]
    assert config["architectures"] == ["MobileBertForSequenceClassification"], config
    assert {k: config[k] for k in run_config if k != "architectures"} == {
        k: v for k, v in run_config.items() if k != "architectures"
    }
    # an explicit checkpoint runs on from it, with other settings (here --max_steps)
    capsys.readouterr()
    rc = main([*args[:-1], str(step + 1), "--resume_from_checkpoint", ck])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"resuming from step {step} of {step + 1}" in text and "max_steps: 100000 ->" in text
    assert json.loads((out / "eval_results.json").read_text())["steps"] == step + 1
    assert [r["step"] for r in _rows(out)] == list(range(1, step + 2))


def _err(capsys, argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return rc, err


def test_every_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    good = _sst2(tmp_path / "good.tsv")
    out = tmp_path / "never"
    base = lambda train=good, *x: _train_args(train, out, "--task_name", "sst2", *x)  # noqa: E731
    cases = [
        (["--per_device_train_batch_size", "0"], 2, "--per_device_train_batch_size must be >= 1, got 0"),
        (["--gradient_accumulation_steps", "0"], 2, "--gradient_accumulation_steps must be >= 1, got 0"),
        (["--learning_rate", "-0.001"], 2, "--learning_rate must be a finite number >= 0, got -0.001"),
        (["--load_best_model_at_end"], 2, "--load_best_model_at_end needs --eval_steps"),
        (["--eval_steps", "2", "--metric_for_best_model", "f1"], 2, "'f1' is not a metric of task sst2"),
    ]
    for extra, code, msg in cases:
        rc, err = _err(capsys, base(good, *extra))
        assert rc == code and msg in err, (extra, err)
    unlabelled = _sst2(tmp_path / "unlabelled.tsv", labels=False)
    rc, err = _err(capsys, [*base(good), "--validation_file", unlabelled])
    assert rc == 1 and f"--validation_file {unlabelled} is unlabelled and evaluation needs labels" in err
    rc, err = _err(capsys, base(unlabelled))
    assert rc == 1 and "--train_file" in err and "its label in the 'label' column" in err
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("sentence\tlabel\ngood\t1\ncaf\xe9 au lait\t0\n".encode("latin-1"))
    rc, err = _err(capsys, base(str(bad)))
    assert rc == 1 and f"{bad}:3: not UTF-8 text: byte 0xe9 at column 4" in err
    for field, value, want in (
        ("trigram_input", "false", "true or false"),
        ("hidden_dropout_prob", "0.1", "a number"),
    ):
        model = tmp_path / f"model_{field}"
        model.mkdir()
        cfg = {"model_type": "mobilebert", field: value}
        (model / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        rc, err = _err(
            capsys, ["evaluate", "--task_name", "sst2", "--model", str(model), "--validation_file", good]
        )
        assert rc == 1 and f"config field {field!r} must be {want}, got '{value}' (a string)" in err, err
    assert not out.exists()  # nothing was written by any of them
    with pytest.raises(ValueError, match="--learning_rate must be"):
        main([*base(good, "--learning_rate", "-1"), "--debug"])
    with pytest.raises(SystemExit) as e:
        main(base(good, "--learning_rate", "abc"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --learning_rate") and "'abc'" in err


HF_FLAGS = (
    "--learning_rate",
    "--task_name",
    "--model_name_or_path",
    "--output_dir",
    "--train_file",
    "--per_device_train_batch_size",
    "--do_train",
    "--do_eval",
    "--do_predict",
    "--overwrite_output_dir",
    "--resume_from_checkpoint",
    "--warmup_steps",
    "--lr_scheduler_type",
    "--doc_stride",
    "--max_answer_length",
    "--n_best_size",
    "--max_train_samples",
    "--max_eval_samples",
    "--max_predict_samples",
    "--eval_steps",
    "--save_steps",
    "--logging_steps",
    "--metric_for_best_model",
    "--load_best_model_at_end",
)


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_hf_flags_both_spellings_help_with_defaults_and_per_command_flags(capsys):
    from mobilebert_jax.cli.main import _job_from_args, build_parser

    text = _help(capsys, "finetune")
    for flag in HF_FLAGS:
        assert flag in text and flag.replace("_", "-") in text, flag
    assert "peak learning rate (default: 5e-05)" in text
    assert "training examples per device per micro-batch (default: 32)" in text
    ev = _help(capsys, "evaluate")
    assert "--validation_file" in ev and "--model_name_or_path" in ev and "--doc_stride" in ev
    for flag in ("--learning_rate", "--train_file", "--save_steps", "--do_train", "--test_file"):
        assert flag not in ev, flag
    assert "--test_file" in _help(capsys, "predict") and "--validation_file" not in _help(capsys, "predict")
    hf = [
        "finetune",
        "--task_name",
        "squad",
        "--model_name_or_path",
        "m",
        "--learning_rate",
        "3e-5",
        "--per_device_train_batch_size",
        "12",
        "--doc_stride",
        "64",
        "--do_train",
        "--bf16",
        "false",
    ]
    ours = [
        "finetune",
        "--task",
        "squad",
        "--model",
        "m",
        "--learning-rate",
        "3e-5",
        "--per-device-train-batch-size",
        "12",
        "--doc-stride",
        "64",
        "--do-train",
        "--no-bf16",
    ]
    a, b = (_job_from_args(build_parser().parse_args(x)) for x in (hf, ours))
    assert a == b and a.task == "squad" and a.learning_rate == 3e-5 and a.task_options == {"doc_stride": 64}
    assert a.do_train is True and a.bf16 is False
