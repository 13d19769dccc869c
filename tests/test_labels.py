"""Evaluation reads the model's labels by name (issue 33): an MNLI model whose `id2label` is ordered
otherwise (as many hub MNLI models: CONTRADICTION, ENTAILMENT, NEUTRAL) scores as its twin in the
task's order; generic `LABEL_i` names are read positionally; names that do not match are refused. And
`predict`, which pads every row, answers as HF PyTorch on each pair alone, unpadded (`pad_invariant`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import TINY, fixture_data, perturbed_hf_model
from test_pipelines import _tsv_column

import mobilebert_jax as mbj
from mobilebert_jax.checkpoints.pytorch import from_pytorch
from mobilebert_jax.jobs.config import JobConfig
from mobilebert_jax.jobs.evaluate import run_evaluate, run_predict
from mobilebert_jax.tasks import DataError, get_task
from mobilebert_jax.tasks.labels import generic_note, model_label_order

torch = pytest.importorskip("torch", reason="torch is the test reference")
MNLI = ("entailment", "neutral", "contradiction")
CLASS = "MobileBertForSequenceClassification"


def test_model_label_order_by_name():
    assert model_label_order(["CONTRADICTION", "ENTAILMENT", "NEUTRAL"], MNLI) == (2, 0, 1)
    assert model_label_order(["Entailment", "Neutral", "Contradiction"], MNLI) == (0, 1, 2)
    assert model_label_order(["not entailment", "Entailment"], ("entailment", "not_entailment")) == (1, 0)
    sst2 = get_task("sst2")  # GLUE's TSV tokens are spellings of its labels
    assert model_label_order(["1", "0"], sst2.labels, sst2.label_spellings()) == (1, 0)
    assert model_label_order(["LABEL_0", "LABEL_1", "LABEL_2"], MNLI) == (0, 1, 2)
    assert "LABEL_1=neutral" in generic_note(["LABEL_0", "LABEL_1", "LABEL_2"], MNLI)
    assert generic_note(["a", "b", "c"], MNLI) is None
    with pytest.raises(
        ValueError, match=r"\['yes', 'maybe', 'no'\] do not match .*\['entailment', 'neutral'"
    ):
        model_label_order(["yes", "maybe", "no"], MNLI)
    with pytest.raises(ValueError, match=r"do not match"):  # two columns for one label
        model_label_order(["entailment", "ENTAILMENT", "neutral"], MNLI)
    with pytest.raises(ValueError, match=r"2 labels \['entailment', 'neutral'\], the task has 3"):
        model_label_order(["entailment", "neutral"], MNLI)


def _mnli_file(path) -> str:
    """A GLUE MNLI-format TSV: real QNLI question/sentence pairs, the three labels in turn."""
    qnli = fixture_data("glue/QNLI/dev.tsv")
    rows = zip(_tsv_column(qnli, 24, 1), _tsv_column(qnli, 24, 2))
    body = "".join(f"{i}\t{a}\t{b}\t{MNLI[i % 3]}\n" for i, (a, b) in enumerate(rows))
    path.write_text("index\tsentence1\tsentence2\tgold_label\n" + body, encoding="utf-8")
    return str(path)


def _save(folder, params, config) -> str:
    mbj.save_pretrained(str(folder), params, config, CLASS)
    mbj.MobileBertTokenizer.default().save_pretrained(str(folder))
    return str(folder)


def _centred(params, config, data: str):
    """The params with the classifier bias shifted so that each class wins on some rows of `data`."""
    task = get_task("mnli")
    feats = task.featurise(task.read(data), mbj.MobileBertTokenizer.default(), 64)
    model = mbj.MobileBertForSequenceClassification(config)
    logits = np.asarray(model.apply({"params": params}, **{k: feats[k] for k in task.input_keys}).logits)
    bias = np.asarray(params["classifier"]["bias"]) - logits.mean(0)
    return {**params, "classifier": {**params["classifier"], "bias": bias}}


def _job(model, data, out, **kw) -> JobConfig:
    return JobConfig(
        model=model,
        validation_file=data,
        test_file=data,
        output_dir=str(out),
        max_seq_length=64,
        per_device_eval_batch_size=8,
        mesh_data=1,
        progress=False,
        **kw,
    )


def _mnli_model(tmp_path):
    """(HF model, our params, config, MNLI file): perturbed weights ([PAD] row not zero), the classifier
    bias centred on the file."""
    config = mbj.MobileBertConfig(**{**TINY, "vocab_size": 30522, "max_position_embeddings": 64}).replace(
        id2label=dict(enumerate(MNLI)), extra={"finetuning_task": "mnli"}
    )
    pt = perturbed_hf_model(config, CLASS, scale=0.2)
    params = from_pytorch({k: v.numpy() for k, v in pt.state_dict().items()}, config, CLASS)
    data = _mnli_file(tmp_path / "dev_matched.tsv")
    params = _centred(params, config, data)
    with torch.no_grad():
        pt.classifier.bias.copy_(torch.from_numpy(np.asarray(params["classifier"]["bias"])))
    return pt, params, config, data


def test_permuted_id2label_evaluates_as_its_twin(tmp_path):
    _, params, config, data = _mnli_model(tmp_path)
    perm = [2, 0, 1]  # the twin's column i is the original's column perm[i]
    twin = {**params, "classifier": {k: np.asarray(v)[..., perm] for k, v in params["classifier"].items()}}
    names = ["CONTRADICTION", "ENTAILMENT", "NEUTRAL"]  # as hub MNLI models name them
    twin_cfg = config.replace(id2label=dict(enumerate(names)))
    original = _save(tmp_path / "original", params, config)
    permuted = _save(tmp_path / "permuted", twin, twin_cfg)
    results = [
        run_evaluate(_job(m, data, tmp_path / f"eval_{i}")) for i, m in enumerate((original, permuted))
    ]
    assert results[0] == results[1]
    preds = [(tmp_path / f"eval_{i}" / "predictions.tsv").read_text().splitlines()[1:] for i in (0, 1)]
    assert preds[0] == preds[1]
    assert len({p.split("\t")[1] for p in preds[0]}) >= 2, "a permutation must be able to change the answers"
    written = run_predict(_job(permuted, data, tmp_path / "predict"))
    assert open(written, encoding="utf-8").read().splitlines()[1:] == preds[0]

    generic = _save(
        tmp_path / "generic", params, config.replace(id2label={i: f"LABEL_{i}" for i in range(3)})
    )
    assert run_evaluate(_job(generic, data, tmp_path / "eval_generic")) == results[0]  # positional

    other = _save(tmp_path / "other", params, config.replace(id2label={0: "yes", 1: "maybe", 2: "no"}))
    with pytest.raises(
        DataError, match=r"\['yes', 'maybe', 'no'\] do not match the task's labels \['entailment'"
    ):
        run_evaluate(_job(other, data, tmp_path / "eval_other"))
    assert not os.path.exists(tmp_path / "eval_other" / "eval_results.json")
    assert json.loads((tmp_path / "permuted" / "config.json").read_text())["id2label"]["0"] == "CONTRADICTION"


def test_predict_is_pad_invariant_by_default(tmp_path):
    """`predict` pads every row to --max_seq_length; its answers are HF's on each pair alone, unpadded."""
    pt, params, config, data = _mnli_model(tmp_path)
    model = _save(tmp_path / "model", params, config)
    task = get_task("mnli")
    feats = task.featurise(task.read(data), mbj.MobileBertTokenizer.default(), 64)
    with torch.no_grad():
        ref = [
            MNLI[
                int(
                    pt(
                        **{k: torch.tensor(feats[k][i : i + 1, :n]).long() for k in task.input_keys}
                    ).logits.argmax()
                )
            ]
            for i, n in enumerate(feats["attention_mask"].sum(1))
        ]
    got = []
    for on in (True, False):
        written = run_predict(_job(model, data, tmp_path / f"predict_{on}", pad_invariant=on))
        got.append([line.split("\t")[1] for line in open(written, encoding="utf-8").read().splitlines()[1:]])
    assert got[0] == ref
    assert got[1] != ref, "the control: without the option the padding changes some answers"


def test_a_checkpoint_without_tokenizer_files_on_another_vocab_is_refused(tmp_path):
    """Issue 33 item 4: the packaged uncased vocab stands in for missing tokenizer files only when the
    model was trained on a vocabulary of its size; otherwise its ids would mean other words. The same
    rule for the pipelines, the jobs and the export (`checkpoints.loader.check_vocab`)."""
    from mobilebert_jax.checkpoints.errors import CheckpointError
    from mobilebert_jax.cli.main import main
    from mobilebert_jax.jobs.config import UsageError

    packaged = mbj.MobileBertTokenizer.default().vocab_size
    for vocab, refused in ((packaged + 7, True), (packaged, False)):
        config = mbj.MobileBertConfig(**{**TINY, "vocab_size": vocab})
        model = mbj.MobileBertForSequenceClassification(config)
        folder = str(tmp_path / f"v{vocab}")
        mbj.save_pretrained(folder, mbj.init_params(model, 0), config, CLASS)  # no tokenizer files
        data = _mnli_file(tmp_path / "mnli.tsv")
        if not refused:
            mbj.pipeline("text-classification", folder)("a film")
            continue
        with pytest.raises(CheckpointError, match=f"no tokenizer files .* vocab_size {vocab} .* {packaged}"):
            mbj.pipeline("text-classification", folder)
        with pytest.raises(UsageError, match="no tokenizer files"):
            run_evaluate(_job(folder, data, str(tmp_path / "ev"), task="mnli"))
        out = str(tmp_path / "exp")
        assert main(["export", folder, out, "--format", "onnx", "--calibration-file", data]) == 1
        assert not os.path.exists(out)
