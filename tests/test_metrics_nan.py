"""NaN in, NaN out: a diverged model never gets a plausible score, and the evaluate job says so."""

from __future__ import annotations

import numpy as np
import pytest

from mobilebert_jax import MobileBertConfig, MobileBertForSequenceClassification, init_params, save_pretrained
from mobilebert_jax.jobs.config import JobConfig
from mobilebert_jax.jobs.evaluate import run_evaluate
from mobilebert_jax.tasks import get_task
from mobilebert_jax.tasks import metrics as M
from mobilebert_jax.text.tokenizer import MobileBertTokenizer

STSB = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n" + "".join(
    f"{i}\tmain\tMSRvid\t2012\t{i:04d}\tnone\tnone\tA plane {i}.\tAn air plane.\t{i % 5}.000\n"
    for i in range(6)
)


def test_nan_predictions_give_nan_metrics_as_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is the test reference")
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    x[7] = np.nan
    assert np.isnan(stats.spearmanr(x, y)[0]) and np.isnan(stats.pearsonr(x, y)[0])
    assert np.isnan(M.spearman(x, y)) and np.isnan(M.pearson(x, y))
    assert np.isnan(M.spearman(y, x)) and np.isnan(M.pearson(y, x))  # NaN references too
    assert np.all(np.isnan(M.rankdata(x))) and np.all(np.isnan(stats.rankdata(x)))
    labels = rng.integers(0, 2, 50)
    preds = labels.astype(np.float64)
    preds[3] = np.nan
    for fn in (M.accuracy, M.f1, M.matthews_corrcoef):
        assert np.isnan(fn(preds, labels)), fn.__name__
        assert not np.isnan(fn(labels, labels)), fn.__name__


def test_nan_logits_become_nan_predictions_and_metrics():
    logits = np.array([[0.1, 2.0], [np.nan, np.nan], [3.0, -1.0]], np.float32)
    assert np.argmax(logits[1]) == 0  # what a plain argmax would score as class 0
    preds = M.argmax(logits)
    assert np.isnan(preds[1]) and preds[0] == 1 and preds[2] == 0
    assert M.argmax(logits[[0, 2]]).dtype == np.int32
    task = get_task("sst2")
    metrics = task.metric(task.postprocess([], {}, {"logits": logits}), np.array([1, 0, 0]))
    assert np.isnan(metrics["accuracy"])
    with pytest.raises(
        ValueError, match=r"sst2 eval: model output logits has 2 NaN/inf values; metrics accuracy=nan"
    ):
        M.check_finite(metrics, "sst2 eval", {"logits": logits})
    M.check_finite({"accuracy": 0.5}, "fine", {"logits": logits[[0, 2]]})


def test_evaluate_job_reports_nan_metrics_as_an_error(tmp_path):
    config = MobileBertConfig.from_preset("mobilebert-test", num_labels=1, problem_type="regression")
    model = MobileBertForSequenceClassification(config)
    params = init_params(model)
    params["classifier"]["bias"] = np.full_like(params["classifier"]["bias"], np.nan)  # a diverged head
    save_pretrained(str(tmp_path / "model"), params, config, "MobileBertForSequenceClassification")
    vocab = MobileBertTokenizer.default().get_vocab()  # its first 1000 tokens fit the preset's vocab_size
    words = sorted(vocab, key=vocab.get)[: config.vocab_size]
    (tmp_path / "model" / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text(STSB, encoding="utf-8")
    job = JobConfig(
        task="stsb",
        model=str(tmp_path / "model"),
        validation_file=str(tmp_path / "dev.tsv"),
        output_dir=str(tmp_path / "out"),
        max_seq_length=16,
        per_device_eval_batch_size=4,
        progress=False,
    )
    with pytest.raises(
        ValueError,
        match=r"evaluation of stsb: model output logits has 6 NaN/inf values; "
        r"metrics pearson=nan, spearmanr=nan, combined_score=nan",
    ):
        run_evaluate(job)
    assert not (tmp_path / "out" / "eval_results.json").exists()
