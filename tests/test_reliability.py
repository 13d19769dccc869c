"""A run cannot be lost (issue 31): each case of the fault trial, run through the real command line on a
1-layer model and 8-row SST-2 files. Two reference runs are shared: `full` (4 steps, uninterrupted) and
`half` (the same command with --max_steps 2); every run that continues is compared byte for byte with
`full`'s exported weights. The steps compile once (the persistent compilation cache of test_jobs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_jobs import _rows, _snapshot, _sst2, _train_args, _wait_for, compile_cache  # noqa: F401

from mobilebert_jax.cli.main import main

# Constant learning rate after one warmup step: a run continued to 4 steps computes what a 4-step run does.
RUN = [
    "--task_name",
    "sst2",
    "--learning_rate",
    "3e-5",
    "--warmup_steps",
    "1",
    "--lr_scheduler_type",
    "constant_with_warmup",
    "--save_steps",
    "2",
    "--logging_steps",
    "1",
    "--max_steps",
]
WEIGHTS = os.path.join("hf_model", "model.safetensors")


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _cli(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _env(cache: str) -> dict[str, str]:
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def _popen(args, cache: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mobilebert_jax.cli.main", *args],
        env=_env(cache),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compile_cache):  # noqa: F811 (the fixture imported above)
    d = tmp_path_factory.mktemp("runs")
    train = _sst2(d / "sst2.tsv")
    args = lambda out, steps, *x: _train_args(train, out, *RUN, str(steps), *x)  # noqa: E731
    for name, steps in (("full", 4), ("half", 2)):
        assert main(args(d / name, steps)) == 0
    return d, train, args, compile_cache


def _copy(runs, name, to):
    shutil.copytree(runs[0] / name, to)
    return to


def test_case1_a_finished_run_resumed_into_itself_continues_and_loses_nothing(runs, tmp_path, capsys):
    d, train, args, cache = runs
    out = _copy(runs, "half", tmp_path / "run")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = {"pid": int(gone.stdout), "host": os.uname().nodename, "started": "earlier"}
    (out / ".lock").write_text(json.dumps(stale))  # left by a killed job on this host: taken over
    rc, text, err = _cli([*args(out, 4), "--resume_from_checkpoint", str(out)], capsys)
    assert rc == 0, err
    assert "removed" not in text and "resuming from step 2 of 4" in text
    assert sorted(n for n in os.listdir(out / "checkpoints") if n.isdigit()) == ["2", "4"]
    assert [r["step"] for r in _rows(out) if "loss" in r] == [1, 2, 3, 4]
    assert _sha(out / WEIGHTS) == _sha(d / "full" / WEIGHTS)
    assert json.loads((out / "run.json").read_text())["hyperparameters"]["max_steps"] == 4
    assert not (out / ".lock").exists()


def test_case2_a_checkpoint_of_another_model_is_an_error_that_moves_nothing(runs, tmp_path, capsys):
    d, train, args, cache = runs
    out = _copy(runs, "full", tmp_path / "other")
    before = _snapshot(out)
    two = [
        *args(out, 4),
        "--resume_from_checkpoint",
        str(d / "half"),
        "--model_config",
        '{"num_hidden_layers": 2}',
    ]
    rc, text, err = _cli(two, capsys)
    assert rc == 1 and err.count("\n") == 1, err
    assert f"--resume_from_checkpoint {d / 'half'}" in err and "another model or optimizer" in err
    assert "missing" in err and "layer/1/" in err, err  # the second layer's keys are named
    assert _snapshot(out) == before  # nothing removed, run.json as it was
    # so the original command is still that run's: it resumes (nothing left to train)
    rc, text, err = _cli(args(out, 4), capsys)
    assert rc == 0 and "resuming from step 4 of 4" in text, err


def _replace_with_fifo(step_dir) -> str:
    """The largest data file of a step replaced by a FIFO (a read of it would block for ever)."""
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs]
    big = max(files, key=os.path.getsize)
    os.remove(big)
    os.mkfifo(big)
    return big


def test_case3_an_unreadable_checkpoint_is_skipped_kept_and_never_a_new_run(runs, tmp_path, capsys):
    d, train, args, cache = runs
    # the newest checkpoint unreadable (a FIFO: refused, not read): step 2 is used, step 4 kept aside
    out = _copy(runs, "full", tmp_path / "fifo")
    _replace_with_fifo(out / "checkpoints" / "4")
    proc = _popen(args(out, 4), cache)
    try:
        text = proc.communicate(timeout=240)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, text[-3000:]
    assert (
        "checkpoint step 4" in text and "not a regular file" in text and "resuming from step 2 of 4" in text
    )
    aside = [n for n in os.listdir(out / "checkpoints") if n.startswith("4.unreadable-")]
    assert len(aside) == 1 and sorted(n for n in os.listdir(out / "checkpoints") if n.isdigit()) == ["2", "4"]
    assert _sha(out / WEIGHTS) == _sha(d / "full" / WEIGHTS)
    # every checkpoint unreadable: an error, nothing moved; readable again, the run resumes (not step 0)
    out = _copy(runs, "full", tmp_path / "none")
    fifos = {step: _replace_with_fifo(out / "checkpoints" / step) for step in ("2", "4")}
    before = _snapshot(out)
    rc, text, err = _cli(args(out, 4), capsys)
    assert rc == 1 and "can be read (nothing was moved" in err, err
    assert _snapshot(out) == before
    for path in fifos.values():
        os.remove(path)
        shutil.copy(d / "full" / os.path.relpath(path, out), path)
    rc, text, err = _cli(args(out, 4), capsys)
    assert rc == 0 and "resuming from step 4 of 4" in text and "new run" not in text, err
    # only checkpoints set aside: never a new run from step 0
    for step in ("2", "4"):
        os.rename(out / "checkpoints" / step, out / "checkpoints" / f"{step}.unreadable-x")
    rc, text, err = _cli(args(out, 4), capsys)
    assert rc == 1 and "set aside as unreadable" in err and "new run" not in text, err


def test_case4_flipped_bytes_are_found_and_the_previous_checkpoint_used(runs, tmp_path, capsys):
    d, train, args, cache = runs
    for step in ("2", "4"):
        assert os.path.isfile(d / "full" / "checkpoints" / step / "integrity.json")
    out = _copy(runs, "full", tmp_path / "flipped")
    files = [os.path.join(r, f) for r, _, fs in os.walk(out / "checkpoints" / "4" / "state") for f in fs]
    big = max(files, key=os.path.getsize)
    data = bytearray(open(big, "rb").read())
    at = len(data) // 2
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    open(big, "wb").write(bytes(data))
    rc, text, err = _cli(args(out, 4), capsys)
    assert rc == 0, err
    assert "differ from the checksum written at save" in text and "resuming from step 2 of 4" in text, text
    assert _sha(out / WEIGHTS) == _sha(d / "full" / WEIGHTS)


def test_case5_a_second_job_on_the_output_dir_is_refused_naming_the_holder(runs, tmp_path, capsys):
    d, train, args, cache = runs
    out = tmp_path / "busy"
    proc = _popen(_train_args(train, out, *RUN, "100000"), cache)
    try:
        _wait_for(out / "metrics.jsonl", proc)
        rc, text, err = _cli(args(out, 4), capsys)
        assert rc == 2 and err.count("\n") == 1, err
        assert f"{out} is in use by another job (pid {proc.pid} on {os.uname().nodename}" in err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
    steps = [r["step"] for r in _rows(out) if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one writer
    assert not (out / ".lock").exists()


def test_case6_sigterm_in_the_final_evaluation_ends_as_in_training_and_the_export_is_whole(
    runs, tmp_path, capsys
):
    d, train, args, cache = runs
    big = tmp_path / "dev.tsv"
    lines = open(train, encoding="utf-8").read().splitlines()
    big.write_text("\n".join([lines[0], *lines[1:] * 400]) + "\n", encoding="utf-8")  # 3200 rows
    out = tmp_path / "run"
    cmd = [*args(out, 4), "--validation_file", str(big)]
    proc = _popen(cmd, cache)
    text = ""
    try:
        for line in proc.stdout:
            text += line
            if line.startswith("final evaluation"):
                proc.send_signal(signal.SIGTERM)
                break
        rc = proc.wait(timeout=120)
        text += proc.stdout.read()
    finally:
        proc.kill()
    assert rc == 143, text[-3000:]
    report = json.loads((out / "eval_results.json").read_text())
    assert report["stopped"] == "preempted" and report["signal"] == "SIGTERM" and "eval" not in report
    assert report["steps"] == 4 and os.path.isdir(out / "checkpoints" / "4")
    assert not (out / "hf_model").exists() and not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    # the same command finishes the run: the export is that of the uninterrupted run
    rc, text, err = _cli(cmd, capsys)
    assert rc == 0 and "resuming from step 4 of 4" in text, err
    assert json.loads((out / "eval_results.json").read_text())["stopped"] == "done"
    assert _sha(out / WEIGHTS) == _sha(d / "full" / WEIGHTS)
    assert os.stat(out / "eval_results.json").st_mtime_ns >= os.stat(out / WEIGHTS).st_mtime_ns


def test_case7_truncation_is_counted_metric_names_are_checked_and_errors_are_one_line(runs, tmp_path, capsys):
    d, train, args, cache = runs
    report = json.loads((d / "full" / "eval_results.json").read_text())
    assert report["truncated"] == {
        "training": {"examples": 0, "of": 8},
        "evaluation": {"examples": 0, "of": 8},
    }
    out = tmp_path / "run"
    # a misspelt metric is refused without --eval_steps too, after the truncation is reported
    rc, text, err = _cli(
        [*args(out, 2), "--max_seq_length", "8", "--metric_for_best_model", "acuracy"], capsys
    )
    assert rc == 2 and "'acuracy' is not a metric of task sst2: ['accuracy', 'loss']" in err, err
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    tok = MobileBertTokenizer.default()
    sentences = [line.split("\t")[0] for line in open(train, encoding="utf-8").read().splitlines()[1:]]
    long = sum(len(tok.tokenize(s, add_special_tokens=True)) > 8 for s in sentences)
    assert 0 < long < 8
    assert f"warning: {long} of 8 training examples are longer than --max_seq_length 8 and cut" in text, text
    assert f"warning: {long} of 8 evaluation examples are longer" in text and not out.exists()
    # HF's eval_loss picks the best model
    rc, text, err = _cli([*args(out, 2), "--eval_steps", "2", "--metric_for_best_model", "eval_loss"], capsys)
    assert rc == 0, err
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "loss" and best["step"] == 2 and best["value"] > 0
    # damaged checkpoints (no manifest): orbax's warnings and tracebacks stay out of the one error line
    out = _copy(runs, "full", tmp_path / "damaged")
    for step in ("2", "4"):
        os.remove(out / "checkpoints" / step / "integrity.json")
        for root, _, files in os.walk(out / "checkpoints" / step / "state"):
            for f in files:
                open(os.path.join(root, f), "wb").write(b"garbage")
    rc, text, err = _cli(args(out, 4), capsys)
    assert rc == 1 and err.count("\n") == 1 and "no checkpoint in" in err, err


def test_case7_ner_words_past_the_limit_are_counted():
    from mobilebert_jax.tasks import get_task
    from mobilebert_jax.tasks.ner import NerExample
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    task = get_task("ner")
    tok = MobileBertTokenizer.default()
    words = ("John", "ate", "pasta", "in", "Rome", "with", "Mary")
    ex = [
        NerExample(words, ("B-PER", "O", "O", "O", "B-LOC", "O", "B-PER"), "a:1"),
        NerExample(words[:2], ("B-PER", "O"), "b:1"),
    ]
    feats = task.featurise(ex, tok, 6)  # [CLS] + 4 words + [SEP]
    assert task.truncation(ex, feats, tok, 6) == {"examples": 1, "of": 2, "words": 3}


def test_an_export_is_written_aside_and_renamed_so_a_failed_overwrite_keeps_the_old_one(
    runs, tmp_path, monkeypatch
):
    """Exports are final artifacts too: a reader of OUT_DIR sees the old export or the new one, whole."""
    from mobilebert_jax import export as ex
    from mobilebert_jax.jobs.export import ExportConfig, run_export

    out = tmp_path / "onnx"
    config = ExportConfig(
        model=str(runs[0] / "full" / "hf_model"), out_dir=str(out), format="onnx", seq_lengths=(16,)
    )
    manifest = run_export(config)
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(manifest))
    assert ".tmp-" not in json.dumps(manifest)
    before = {p.name: _sha(p) for p in out.iterdir()}
    with pytest.raises(ex.ExportError, match="not empty"):
        run_export(config)

    def broken(model, params, out_dir, **kw):  # the new export dies half-way through writing
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "model.onnx").write_bytes(b"half")
        raise ex.ExportError("conversion failed")

    monkeypatch.setattr(ex, "export", broken)
    with pytest.raises(ex.ExportError, match="conversion failed"):
        run_export(dataclasses.replace(config, overwrite=True))
    assert {p.name: _sha(p) for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
