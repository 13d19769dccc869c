"""Every task's `finetune` end to end on a tiny config (a few steps), the smoke main job, and CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SENTIMENT_SENTENCES

from mobilebert_jax.cli.main import main

TINY = [
    "--model",
    "mobilebert-test",
    "--model-config",
    '{"vocab_size": 30522}',
    "--max-steps",
    "2",
    "--per-device-train-batch-size",
    "4",
    "--per-device-eval-batch-size",
    "8",
    "--mesh-data",
    "1",
    "--max-seq-length",
    "48",
    "--no-progress",
    "--logging-steps",
    "1",
    "--save-steps",
    "2",
]

SENTS = SENTIMENT_SENTENCES


def _files(tmp_path, task: str) -> str:
    """A small training file in the task's usual format; returns its path."""
    if task == "sst2":
        p = tmp_path / "sst2.tsv"
        p.write_text(
            "sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(SENTS)), encoding="utf-8"
        )
    elif task == "stsb":
        p = tmp_path / "stsb.jsonl"
        p.write_text(
            "".join(
                json.dumps({"sentence1": s, "sentence2": SENTS[-1 - i], "label": i * 0.6}) + "\n"
                for i, s in enumerate(SENTS)
            ),
            encoding="utf-8",
        )
    elif task == "squad":
        ctxs = [f"{s} , said the critic in paris ." for s in SENTS]
        paras = [
            {
                "context": c,
                "qas": [
                    {
                        "id": f"q{i}",
                        "question": "where was the critic ?",
                        "answers": [{"text": "paris", "answer_start": c.index("paris")}],
                    }
                ],
            }
            for i, c in enumerate(ctxs)
        ]
        p = tmp_path / "squad.json"
        p.write_text(
            json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}), encoding="utf-8"
        )
    elif task == "ner":
        p = tmp_path / "ner.txt"
        p.write_text(
            "".join(
                f"John B-PER\nvisited O\n{w} B-LOC\n.\tO\n\n".replace("\t", " ")
                for w in ("Paris", "Rome", "Berlin", "Madrid")
            ),
            encoding="utf-8",
        )
    elif task == "swag":
        p = tmp_path / "swag.csv"
        rows = "".join(
            f'{i},x,0,"{s}.",He,He,gen,"runs.","sits.","eats.","waves.",{i % 4}\n'
            for i, s in enumerate(SENTS)
        )
        p.write_text(
            ",video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"
            + rows,
            encoding="utf-8",
        )
    elif task == "pretraining":
        p = tmp_path / "docs.txt"
        p.write_text("\n\n".join("\n".join(SENTS[i:] + SENTS[:i]) for i in range(4)) + "\n", encoding="utf-8")
    else:
        raise AssertionError(task)
    return str(p)


@pytest.mark.parametrize("task", ["sst2", "stsb", "squad", "ner", "swag", "pretraining"])
def test_finetune_each_task_end_to_end(tmp_path, task):
    f = _files(tmp_path, task)
    out = tmp_path / "run"
    cmd = "pretrain" if task == "pretraining" else "finetune"
    extra = ["--task-options", '{"doc_stride": 16, "max_query_length": 16}'] if task == "squad" else []
    args = [
        cmd,
        "--task",
        task,
        "--train-file",
        f,
        "--validation-file",
        f,
        "--output-dir",
        str(out),
        *TINY,
        *extra,
    ]
    assert main(args) == 0
    report = json.loads((out / "eval_results.json").read_text())
    assert report["steps"] == 2 and report["eval"]
    assert all(np.isfinite(v) for v in report["eval"].values() if isinstance(v, (int, float)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert os.path.isdir(out / "checkpoints" / "2")
    assert (out / "hf_model" / "model.safetensors").exists() and (out / "hf_model" / "vocab.txt").exists()
    if task != "pretraining":
        assert any(n.startswith("predictions") for n in os.listdir(out))


def test_evaluate_and_predict_from_exported_model(tmp_path):
    f = _files(tmp_path, "sst2")
    out = tmp_path / "run"
    main(
        [
            "finetune",
            "--task",
            "sst2",
            "--train-file",
            f,
            "--validation-file",
            f,
            "--output-dir",
            str(out),
            *TINY,
        ]
    )
    trained = json.loads((out / "eval_results.json").read_text())["eval"]
    common = ["--task", "sst2", "--model", str(out / "hf_model"), "--max-seq-length", "48"]
    main(["evaluate", *common, "--validation-file", f, "--output-dir", str(tmp_path / "ev")])
    again = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    assert again["accuracy"] == trained["accuracy"]  # the exported model is the trained one
    main(["predict", *common, "--test-file", f, "--output-dir", str(tmp_path / "pr")])
    lines = (tmp_path / "pr" / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == len(SENTS) + 1


def test_config_file_and_flag_override(tmp_path, capsys):
    f = _files(tmp_path, "sst2")
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps({"task": "sst2", "train_file": f, "validation_file": f, "max_steps": 1}))
    out = tmp_path / "run"
    main(["finetune", "--config-file", str(cfg), "--output-dir", str(out), *TINY])  # --max-steps 2 wins
    assert json.loads((out / "eval_results.json").read_text())["steps"] == 2
    cfg.write_text(json.dumps({"task": "sst2", "learning_rat": 1.0}))
    capsys.readouterr()
    assert main(["finetune", "--config-file", str(cfg), *TINY]) == 2
    assert "error: unknown job config field(s) ['learning_rat']" in capsys.readouterr().err
    cfg.write_text(json.dumps({"task": "sst2", "learning_rate": "3e-5"}))
    assert main(["finetune", "--config-file", str(cfg), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: field 'learning_rate' must be a number, got '3e-5' (a string)" in err


def test_clear_errors(tmp_path, capsys):
    f = _files(tmp_path, "sst2")
    rc = main(
        [
            "finetune",
            "--task",
            "sst2",
            "--model",
            "mobilebert-test",
            "--model-config",
            '{"vocab_size": 1000}',
            "--train-file",
            f,
            "--validation-file",
            f,
            "--output-dir",
            str(tmp_path / "x"),
            "--mesh-data",
            "1",
        ]
    )
    assert rc == 2
    assert "tokenizer has 30522 ids but the model's vocab_size is 1000" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood\t7\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        main(
            [
                "finetune",
                "--task",
                "sst2",
                "--train-file",
                str(bad),
                "--validation-file",
                f,
                "--output-dir",
                str(tmp_path / "y"),
                *TINY,
                "--debug",
            ]
        )


def test_main_job_smoke_mode(tmp_path):
    """The README's main job, reduced (CI): the console script, packaged data, every artefact."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilebert_jax.cli.main",
            "demo",
            "--smoke",
            "--output-dir",
            str(tmp_path / "main"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "majority-class baseline" in r.stdout
    for name in ("eval_results.json", "metrics.jsonl", "loss.png", "predictions.tsv", "hf_model/config.json"):
        assert (tmp_path / "main" / name).exists(), name
    # the deployment step: each LiteRT file is what its name says (dynamic-int8 once silently wrote fp32)
    deploy = json.loads((tmp_path / "main" / "deploy_results.json").read_text())
    for name, quantize in (("litert-fp32", "none"), ("litert-dynamic-int8", "dynamic-int8")):
        meta = json.loads((tmp_path / "main" / name / "export.json").read_text())
        assert meta["quantization"] == quantize, (name, meta["quantization"])
        assert 0 < deploy[name]["agreement_with_jax"] <= 1 and deploy[name]["rel_logit_error"] < 0.1
    fp32, int8 = deploy["litert-fp32"], deploy["litert-dynamic-int8"]
    assert fp32["rel_logit_error"] < 1e-5
    # int8 weights and word-embedding table: a smaller file and a larger error
    assert int8["size_mb"] < fp32["size_mb"] and int8["rel_logit_error"] > fp32["rel_logit_error"], deploy
