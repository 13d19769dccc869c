"""A new user's first hour (issue 36): defaults that say what they do, errors that point the way, files
as users expect. Each case through the command line where the command line is the point (subprocesses,
as a user runs them); a tiny `mobilebert-test` model with the packaged tokenizer."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args: str, cwd: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`mobilebert-jax ARGS` in a fresh process (the environment's PYTHONPATH, JAX_PLATFORMS carried)."""
    return subprocess.run(
        [sys.executable, "-m", "mobilebert_jax.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> str:
    """An HF directory of a random 2-label `mobilebert-test` classifier with the packaged tokenizer."""
    import mobilebert_jax as mbj

    folder = str(tmp_path_factory.mktemp("first_hour") / "clf")
    model, params = mbj.from_pretrained(
        "mobilebert-test", "MobileBertForSequenceClassification", num_labels=2
    )
    mbj.save_pretrained(folder, params, model.config, "MobileBertForSequenceClassification")
    mbj.MobileBertTokenizer.default().save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------- 5: errors, logs
def _error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr
    return lines[-1]


def test_no_prefix_matching_of_flags():
    r = cli("finetune", "--learning_rat", "1e-4")
    assert r.returncode == 2 and "--learning_rat" in _error_line(r)
    r = cli("export", "m", "out", "--form", "onnx")
    assert r.returncode == 2 and "--form" in _error_line(r)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from mobilebert_jax.cli.main import build_parser

    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return {"mobilebert-jax": ap, **sub.choices}


def test_every_parser_refuses_abbreviations_and_every_flag_has_a_description():
    missing = []
    for name, p in _parsers().items():
        assert p.allow_abbrev is False, name
        for a in p._actions:
            if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
                continue
            if not (a.help or "").strip():
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, missing


def test_error_form_is_one_line_naming_the_problem(tmp_path):
    """One form for every command: `error: ...`, no command-specific prefixes."""
    r = cli("convert", str(tmp_path / "nowhere"), str(tmp_path / "dst"))
    assert r.returncode == 1 and "nowhere: no such directory" in _error_line(r), r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = cli("convert", "mobilebert-test", str(tmp_path / "full"))
    assert r.returncode == 2 and "not empty; pass --overwrite" in _error_line(r)
    r = cli("export", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--format", "onnx")
    assert r.returncode == 1 and "nowhere" in _error_line(r) and "export failed" not in r.stderr
    r = cli("distill", "--config", "no-such-recipe", "--output-dir", str(tmp_path / "d"))
    assert r.returncode in (1, 2) and "no-such-recipe" in _error_line(r) and "distill:" not in r.stderr
    r = cli("prepare-pretraining-data", str(tmp_path / "none*.txt"), "--output-dir", str(tmp_path / "p"))
    assert r.returncode == 1 and "no file matches" in _error_line(r)


def test_model_config_with_bad_json_names_the_flag_and_the_json_error():
    r = cli("finetune", "--model_config", "{num_hidden_layers: 2}")
    line = _error_line(r)
    assert r.returncode == 2 and "--model_config" in line and "not valid JSON" in line
    assert "property name enclosed in double quotes" in line and "invalid loads value" not in line
    r = cli("pipeline", "fill-mask", "--model", "m", "--input", "x.txt", "--params", "[1]")
    assert r.returncode == 2 and "--params" in _error_line(r) and "JSON object" in _error_line(r)


def test_evaluate_names_a_mistyped_model_folder(tmp_path, classifier):
    typo = classifier + "-typo"
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\na fine film\t1\n", encoding="utf-8")
    r = cli("evaluate", "--model", typo, "--validation_file", str(data))
    line = _error_line(r)
    assert r.returncode == 1 and f"{typo}: no such directory" in line and "--task_name" not in line


def test_onnx_export_is_quiet_and_writes_0644(tmp_path, classifier):
    out = tmp_path / "onnx"
    r = cli("export", classifier, str(out), "--format", "onnx", "--seq-lengths", "16")
    assert r.returncode == 0, r.stderr
    assert "onnx_ir" not in r.stderr and "WARNING" not in r.stderr, r.stderr
    assert "wrote" in r.stdout
    umask = os.umask(0)
    os.umask(umask)
    for f in os.listdir(out):
        assert stat.S_IMODE(os.stat(out / f).st_mode) == 0o666 & ~umask, f


def test_litert_export_is_quiet_unless_verbose(tmp_path, classifier):
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "litert"
    args = ("export", classifier, str(out), "--format", "litert", "--seq-lengths", "16")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    for noise in ("absl::InitializeLog", "oneDNN", "XNNPACK"):
        assert noise not in r.stderr, r.stderr
    r = cli(*args, "--overwrite", "--verbose")
    assert r.returncode == 0 and "XNNPACK" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------- 1, 2: presets
def _sst2(path, n: int = 16) -> str:
    from conftest import SENTIMENT_SENTENCES as sents

    rows = "".join(f"{sents[i % len(sents)]}\t{i % 2}\n" for i in range(n))
    path.write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    return str(path)


def test_tiny_preset_works_with_the_packaged_tokenizer_in_python():
    import mobilebert_jax as mbj

    model, _ = mbj.from_pretrained("mobilebert-test")
    assert model.config.vocab_size == mbj.MobileBertTokenizer.default().vocab_size
    out = mbj.pipeline("fill-mask", "mobilebert-test")("paris is the [MASK] of france.", top_k=2)
    assert len(out) == 2 and all(isinstance(o["token_str"], str) for o in out)


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    """A fine-tune with default flags on the tiny preset (no --max_seq_length: the preset has 64
    positions), as a user's first command; the completed process and the run folder."""
    d = tmp_path_factory.mktemp("first_run")
    data = _sst2(d / "train.tsv")
    out = d / "run"
    r = cli(
        "finetune",
        "--task_name",
        "sst2",
        "--model",
        "mobilebert-test",
        "--train_file",
        data,
        "--validation_file",
        data,
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--mesh_data",
        "1",
        "--no-progress",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r, out, data


def test_a_job_on_a_preset_says_random_init_first_and_in_run_json(sst2_run):
    r, out, _ = sst2_run
    assert r.stdout.splitlines()[0].startswith("random init: --model mobilebert-test is a preset")
    assert json.load(open(out / "run.json"))["model"]["random_init"] is True
    assert "host allocator" not in r.stdout + r.stderr  # a detail, for --verbose


def test_default_length_fits_the_model_and_is_saved_for_evaluate_and_predict(sst2_run, tmp_path):
    r, out, data = sst2_run
    assert "max_seq_length 64 (the model's max_position_embeddings" in r.stdout
    saved = json.load(open(out / "hf_model" / "config.json"))
    assert saved["max_seq_length"] == 64 and saved["finetuning_task"] == "sst2"
    for cmd, flag in (("evaluate", "--validation_file"), ("predict", "--test_file")):
        r = cli(cmd, "--model", str(out / "hf_model"), flag, data, "--output_dir", str(tmp_path / cmd))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "max_seq_length 64 (the model's fine-tuning length, from its config.json" in r.stdout


def test_overwrite_output_dir_keeps_the_results_of_evaluate_and_predict(sst2_run, tmp_path):
    import shutil

    _, out, data = sst2_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    r = cli("evaluate", "--model", str(run / "hf_model"), "--validation_file", data)
    assert r.returncode == 0 and (run / "evaluate_train" / "eval_results.json").is_file(), r.stderr
    r = cli(
        "finetune",
        "--task_name",
        "sst2",
        "--model",
        "mobilebert-test",
        "--train_file",
        data,
        "--output_dir",
        str(run),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--mesh_data",
        "1",
        "--no-progress",
        "--overwrite_output_dir",
        "--do_train",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (run / "evaluate_train" / "eval_results.json").is_file()


# --------------------------------------------------------------------------------------- 6: convert
def test_convert_takes_a_run_folder_and_writes_tokenizer_files_0644(sst2_run, tmp_path):
    _, out, _ = sst2_run
    dst = tmp_path / "hf"
    r = cli("convert", str(out), str(dst))
    assert r.returncode == 0, r.stdout + r.stderr
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"} <= set(os.listdir(dst))
    umask = os.umask(0)
    os.umask(umask)
    for f in os.listdir(dst):
        assert stat.S_IMODE(os.stat(dst / f).st_mode) == 0o666 & ~umask, f


# --------------------------------------------------------------------------------------- 4: export folders
def test_a_pipeline_on_an_export_folder_picks_its_backend(tmp_path, classifier):
    import mobilebert_jax as mbj
    from mobilebert_jax.checkpoints.errors import CheckpointError
    from mobilebert_jax.checkpoints.loader import load_model

    out = tmp_path / "onnx"
    r = cli("export", classifier, str(out), "--format", "onnx", "--seq-lengths", "16")
    assert r.returncode == 0, r.stderr
    texts = ["a gripping film", "dull and far too long"]
    want = mbj.pipeline("text-classification", classifier)(texts, top_k=None)
    got = mbj.pipeline("text-classification", str(out))(texts, top_k=None)  # no backend=: export.json's
    for g, w in zip(got, want):
        assert [x["label"] for x in g] == [x["label"] for x in w]
        assert [x["score"] for x in g] == pytest.approx([x["score"] for x in w], rel=1e-4)
    with pytest.raises(CheckpointError, match="is an export folder \\(onnx"):
        load_model(str(out))
    lines = tmp_path / "in.txt"
    lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
    r = cli("pipeline", "text-classification", "--model", str(out), "--input", str(lines))
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["output"]["label"] for x in r.stdout.splitlines()] == [w[0]["label"] for w in want]


# --------------------------------------------------------------------------------------- 3: the model's settings
def test_qa_pipeline_answers_what_evaluate_answered(tmp_path):
    """A SQuAD fine-tune with non-default windows (doc_stride, max_query_length) and the preset's length:
    `evaluate` and the pipeline take all of them from the model's config.json and agree on every answer."""
    from conftest import fixture_data

    import mobilebert_jax as mbj

    squad = json.load(open(fixture_data("squad/dev-v1.1.json"), encoding="utf-8"))
    para = squad["data"][0]["paragraphs"][0]
    para["qas"] = para["qas"][:6]
    sample = {"version": "1.1", "data": [{"title": "t", "paragraphs": [para]}]}
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(sample), encoding="utf-8")
    out = tmp_path / "run"
    r = cli(
        "finetune",
        "--task_name",
        "squad",
        "--model",
        "mobilebert-test",
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--mesh_data",
        "1",
        "--no-progress",
        "--do_train",
        "--doc_stride",
        "24",
        "--max_query_length",
        "12",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    model = out / "hf_model"
    r = cli(
        "evaluate",
        "--model",
        str(model),
        "--validation_file",
        str(data),
        "--output_dir",
        str(tmp_path / "ev"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    predicted = json.load(open(tmp_path / "ev" / "predictions.json", encoding="utf-8"))
    qa = mbj.pipeline("question-answering", str(model))
    assert qa.defaults["doc_stride"] == 24 and qa.defaults["max_question_len"] == 12
    assert qa.defaults["max_seq_len"] == 64
    answers = qa([{"question": q["question"], "context": para["context"]} for q in para["qas"]])
    assert {q["id"]: a["answer"] for q, a in zip(para["qas"], answers)} == predicted


def test_a_pipeline_cuts_inputs_at_the_fine_tunes_saved_length(tmp_path):
    """Item 3: a text-classification pipeline truncates where the fine-tune's evaluation did (its
    `max_seq_length` in config.json), so it scores as HF PyTorch scores that truncation."""
    import numpy as np
    import torch
    from conftest import TINY, perturbed_hf_model

    import mobilebert_jax as mbj
    from mobilebert_jax.checkpoints.pytorch import from_pytorch

    tok = mbj.MobileBertTokenizer.default()
    config = mbj.MobileBertConfig(**{**TINY, "vocab_size": tok.vocab_size, "num_labels": 2})
    hf = perturbed_hf_model(config, "MobileBertForSequenceClassification")
    params = from_pytorch(
        {k: v.numpy() for k, v in hf.state_dict().items()}, config, "MobileBertForSequenceClassification"
    )
    text = (
        "a gripping , funny and moving film that never once loses its nerve or its heart , whatever happens"
    )
    scores = {}
    for saved in (None, 12):
        cfg = config if saved is None else config.replace(extra={**config.extra, "max_seq_length": saved})
        folder = str(tmp_path / f"clf-{saved}")
        mbj.save_pretrained(folder, params, cfg, "MobileBertForSequenceClassification")
        tok.save_pretrained(folder)
        out = mbj.pipeline("text-classification", folder)(text, top_k=None)
        scores[saved] = np.array([d["score"] for d in sorted(out, key=lambda d: d["label"])])
    enc = tok([text], truncation=True, max_length=12)
    assert len(tok([text])["input_ids"][0]) > 12  # the text is longer than the saved length
    with torch.no_grad():
        logits = hf(**{k: torch.tensor(np.asarray(v)) for k, v in enc.items()}).logits
    ref = torch.softmax(logits, -1).numpy()[0]
    np.testing.assert_allclose(scores[12], ref, rtol=1e-5, atol=1e-6)
    assert np.abs(scores[None] - ref).max() > 1e-4  # without the saved length the whole text is read
