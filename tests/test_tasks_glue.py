"""GLUE: metrics vs scikit-learn / scipy, readers on the real dev files and on every layout, bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fixture_data, require_shared_data

from mobilebert_jax.tasks import DataError, get_task, glue
from mobilebert_jax.tasks import metrics as M
from mobilebert_jax.text.tokenizer import MobileBertTokenizer


@pytest.fixture(scope="module")
def tok():
    return MobileBertTokenizer.default()


# --- metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_sklearn_and_scipy(seed):
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the test reference")
    stats = pytest.importorskip("scipy.stats", reason="scipy is the test reference")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    k = 2 if seed < 3 else int(rng.integers(3, 6))
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.7, y, rng.integers(0, k, n))
    assert M.accuracy(p, y) == pytest.approx(sk.accuracy_score(y, p), rel=1e-12)
    assert M.matthews_corrcoef(p, y) == pytest.approx(sk.matthews_corrcoef(y, p), rel=1e-10, abs=1e-12)
    if k == 2:
        assert M.f1(p, y) == pytest.approx(sk.f1_score(y, p), rel=1e-12)
    x = rng.normal(size=n)
    z = 0.5 * x + rng.normal(size=n)
    if seed % 2:  # ties: rounded scores, as STS-B's 0.2 steps
        x, z = np.round(x, 1), np.round(z * 2) / 2
    assert M.pearson(x, z) == pytest.approx(stats.pearsonr(x, z)[0], rel=1e-10)
    assert M.spearman(x, z) == pytest.approx(stats.spearmanr(x, z)[0], rel=1e-10)
    assert np.array_equal(M.rankdata(z), stats.rankdata(z))


def test_metric_degenerate_cases():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the test reference")
    y = np.array([0, 1, 1, 0])
    for p in (np.zeros(4, int), np.ones(4, int)):  # constant predictions: MCC 0, F1 0 when no positive
        assert M.matthews_corrcoef(p, y) == sk.matthews_corrcoef(y, p) == 0.0
        assert M.f1(p, y) == sk.f1_score(y, p, zero_division=0.0)
    assert np.isnan(M.pearson([1, 1, 1], [1, 2, 3])) and np.isnan(M.spearman([1, 2, 3], [4, 4, 4]))
    assert M.matthews_corrcoef([2, 0, 1], [2, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        M.accuracy([1, 2], [1])


def test_task_metric_names_and_combined_score():
    assert set(get_task("cola").metric([1, 0, 1], [1, 0, 0])) == {"matthews_correlation"}
    m = get_task("mrpc").metric([1, 0, 1, 1], [1, 0, 0, 1])
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8)
    assert m["combined_score"] == pytest.approx((0.75 + 0.8) / 2)
    s = get_task("stsb").metric([0.1, 2.0, 4.0], [0.0, 2.5, 5.0])
    assert set(s) == {"pearson", "spearmanr", "combined_score"} and s["spearmanr"] == pytest.approx(1.0)
    assert get_task("mnli").main_metric == "accuracy" and get_task("qqp").main_metric == "combined_score"


# --- real dev files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, rel, n, counts",
    [
        ("sst2", "SST-2/dev.tsv", 872, {0: 428, 1: 444}),
        ("cola", "CoLA/dev.tsv", 1043, {0: 322, 1: 721}),
        ("mrpc", "MRPC/dev.tsv", 408, {0: 129, 1: 279}),
        ("mrpc", "MRPC/train.tsv", 3668, {0: 1194, 1: 2474}),
        ("qnli", "QNLI/dev.tsv", 5463, {0: 2702, 1: 2761}),
    ],
)
def test_real_dev_files(task, rel, n, counts):
    # QNLI dev ships with the tests; the other files' licenses keep them out of the project.
    path = fixture_data(f"glue/{rel}") if rel == "QNLI/dev.tsv" else require_shared_data(f"glue/{rel}")
    t = get_task(task)
    ex = t.read(path)
    assert len(ex) == n
    labels, freq = np.unique([e.label for e in ex], return_counts=True)
    assert dict(zip(labels.tolist(), freq.tolist())) == counts
    assert t.num_labels == 2 and len(t.labels) == 2
    assert all(isinstance(e.text_a, str) and e.text_a for e in ex)
    assert all((e.text_b is not None) == (task != "sst2" and task != "cola") for e in ex)


def test_real_files_keep_quotes_and_match_raw_text():
    path = require_shared_data("glue/MRPC/dev.tsv")
    ex = get_task("mrpc").read(path)
    # A leading double quote is text, not CSV quoting (csv.reader would swallow the tab after it).
    assert ex[0].text_b == '"The foodservice pie business does not fit our long-term growth strategy.'
    assert (
        ex[1].text_b
        == 'His wife said he was "100 percent behind George Bush" and looked forward to using his years of training in the war.'
    )
    with open(path, encoding="utf-8-sig") as f:
        raw = [line.rstrip("\n").split("\t") for line in f][1:]
    assert [(e.text_a, e.text_b) for e in ex] == [(r[3], r[4]) for r in raw]


def test_featurise_real_qnli(tok):
    path = fixture_data("glue/QNLI/dev.tsv")
    task = get_task("qnli")
    ex = task.read(path)[:64]
    f = task.featurise(ex, tok, 128)
    ref = tok(
        [e.text_a for e in ex],
        text_pair=[e.text_b for e in ex],
        max_length=128,
        truncation=True,
        padding="max_length",
    )
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        assert f[k].shape == (64, 128) and f[k].dtype == np.int32 and np.array_equal(f[k], ref[k])
    assert f["labels"].tolist() == [e.label for e in ex]


# --- all nine layouts ----------------------------------------------------------------------------

_MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse"
    "\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)
LAYOUT_FILES = {
    "cola": ('gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode the "breeze.\n', [1, 0]),
    "sst2": ("sentence\tlabel\nit 's \"good . \t1\nbad \t0\n", [1, 0]),
    "mrpc": ('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA "b.\tC d.\n', [1]),
    "stsb": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t5.000\n",
        [5.0],
    ),
    "qqp": ('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tWhy "x"?\tHow?\t0\n', [0]),
    "mnli": (
        _MNLI_HEADER
        + "\n"
        + "\t".join(
            [
                "0",
                "1",
                "1e",
                "fiction",
                "(",
                "(",
                "(",
                "(",
                'He said "hi".',
                "He spoke.",
                "entailment",
                "neutral",
                "entailment",
                "entailment",
                "entailment",
                "entailment",
            ]
        )
        + "\n"
        + "\t".join(["1"] * 8 + ["A", "B"] + ["contradiction"] * 6)
        + "\n",
        [0, 2],
    ),
    "qnli": ("index\tquestion\tsentence\tlabel\n0\tWho?\tHe.\tnot_entailment\n", [1]),
    "rte": ("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n", [0]),
    "wnli": ("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t1\n", [1]),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_FILES))
def test_every_task_layout_tsv_and_jsonl(tmp_path, tok, name):
    content, labels = LAYOUT_FILES[name]
    path = tmp_path / "dev.tsv"
    path.write_text(content, encoding="utf-8")
    task = get_task(name)
    ex = task.read(path)
    assert [e.label for e in ex] == labels
    assert '"' in "".join(e.text_a + (e.text_b or "") for e in ex) or name in ("rte", "wnli", "qnli", "stsb")
    # The same examples from JSONL / CSV with HF datasets column names and integer or named labels.
    cols = glue.LAYOUTS[name].hf
    recs = []
    for e in ex:
        r = {cols[0]: e.text_a, "label": e.label, "idx": 0}
        if cols[1]:
            r[cols[1]] = e.text_b
        recs.append(r)
    jl = tmp_path / "dev.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    assert [(e.text_a, e.text_b, e.label) for e in task.read(jl)] == [
        (e.text_a, e.text_b, e.label) for e in ex
    ]
    if task.labels:
        named = [{**r, "label": task.labels[r["label"]]} for r in recs]
        jl.write_text("".join(json.dumps(r) + "\n" for r in named), encoding="utf-8")
        assert [e.label for e in task.read(jl)] == labels
    f = task.featurise(ex, tok, 32)
    assert f["labels"].dtype == (np.float32 if name == "stsb" else np.int32)
    assert f["input_ids"].shape == (len(ex), 32)
    assert (f["token_type_ids"].max() == 1) == (cols[1] is not None)
    out = tmp_path / "pred.tsv"
    task.write_predictions(out, ex, f["labels"])
    written = [line.split("\t")[1] for line in out.read_text().splitlines()[1:]]
    if name == "stsb":
        assert written == ["5.000"]
    else:
        assert [glue.LAYOUTS[name].tsv_labels.index(w) for w in written] == labels


def test_csv_reader_and_unlabelled_rows(tmp_path, tok):
    path = tmp_path / "x.csv"
    path.write_text(
        'premise,hypothesis,label\n"A, with comma","B ""quoted""",neutral\nC,D,-1\n', encoding="utf-8"
    )
    ex = get_task("mnli_mismatched").read(path)
    assert (ex[0].text_a, ex[0].text_b, ex[0].label) == ("A, with comma", 'B "quoted"', 1)
    assert ex[1].label is None
    with pytest.raises(DataError, match="unlabelled example among labelled"):
        get_task("mnli").featurise(ex, tok, 16)
    f = get_task("mnli").featurise(ex[1:], tok, 16)
    assert "labels" not in f
    with pytest.raises(DataError, match="no label"):
        get_task("mnli").references(ex)


def test_test_split_without_label_column(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("index\tsentence\n0\tgood\n1\tbad\n", encoding="utf-8")
    assert [e.label for e in get_task("sst2").read(path)] == [None, None]
    path.write_text("index\tsentence\n0\tgood\n", encoding="utf-8")  # CoLA's test file has a header
    assert get_task("cola").read(path)[0].text_a == "good"


@pytest.mark.parametrize(
    "task, name, content, match",
    [
        ("sst2", "e.tsv", "", "empty file"),
        ("sst2", "h.tsv", "sentence\tlabel\n", "no examples"),
        ("sst2", "c.tsv", "text\tlabel\nx\t1\n", r"c\.tsv:1: missing column 'sentence'"),
        ("sst2", "l.tsv", "sentence\tlabel\nx\t1\ny\t2\n", r"l\.tsv:3: label '2' is not in the label set"),
        (
            "qnli",
            "q.tsv",
            "index\tquestion\tsentence\tlabel\n0\ta\tb\tneutral\n",
            r"q\.tsv:2: label 'neutral'",
        ),
        (
            "rte",
            "f.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tentailment\n",
            r"f\.tsv:2: expected 4 tab-separated",
        ),
        ("stsb", "s.csv", "sentence1,sentence2,label\na,b,5.5\n", r"s\.csv:2: score 5.5 outside"),
        ("stsb", "n.csv", "sentence1,sentence2,label\na,b,high\n", r"n\.csv:2: score 'high' is not a number"),
        ("mrpc", "m.csv", "sentence1,label\na,1\n", r"m\.csv:2: missing column 'sentence2'"),
        (
            "cola",
            "j.jsonl",
            '{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 3}\n',
            r"j\.jsonl:2: label 3",
        ),
        ("cola", "k.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": \n', r"k\.jsonl:2: invalid JSON"),
        ("wnli", "x.parquet", "x", "unknown file type"),
    ],
)
def test_bad_data_errors_name_file_and_line(tmp_path, task, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        get_task(task).read(path)


def test_unknown_task_and_hf_datasets_error():
    with pytest.raises(KeyError, match="unknown task"):
        get_task("glue-foo")
    with pytest.raises(TypeError, match="no option"):
        get_task("sst2", doc_stride=3)
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            glue.load_hf_glue("sst2")
    else:
        pytest.skip("HF datasets is installed; its hub is not reachable from the tests")


@pytest.mark.parametrize("name", ["sst2", "stsb", "mnli"])
def test_loss_equals_model_and_torch(name):
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    jnp = pytest.importorskip("jax.numpy")
    from mobilebert_jax import MobileBertConfig
    from mobilebert_jax.model.heads import sequence_classification_loss

    task = get_task(name)
    config = MobileBertConfig.from_preset("mobilebert-test").replace(**task.config_overrides())
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, task.num_labels)).astype(np.float32)
    if task.is_regression:
        labels = rng.uniform(0, 5, 5).astype(np.float32)
        ref = torch.nn.functional.mse_loss(torch.tensor(logits).squeeze(), torch.tensor(labels))
    else:
        labels = rng.integers(0, task.num_labels, 5).astype(np.int32)
        ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels, dtype=torch.long))
    ours = task.loss({"logits": jnp.asarray(logits)}, {"labels": labels})
    model = sequence_classification_loss(config, jnp.asarray(logits), jnp.asarray(labels))
    assert float(ours) == pytest.approx(float(ref), rel=1e-6) and float(model) == pytest.approx(
        float(ref), rel=1e-6
    )
    preds = task.postprocess([], {}, {"logits": logits})
    assert preds.shape == (5,) and (task.is_regression or (preds == logits.argmax(-1)).all())


def test_registry_specs():
    from mobilebert_jax.model.heads import MODEL_CLASSES
    from mobilebert_jax.tasks import TASK_NAMES

    for name in TASK_NAMES:
        task = get_task(name)
        assert task.model_cls() is MODEL_CLASSES[task.model_class], name
        assert set(task.input_keys) == {"input_ids", "token_type_ids", "attention_mask"}
        assert task.main_metric and task.label_keys and task.output_keys
    assert get_task("sst2").config_overrides() == {
        "num_labels": 2,
        "id2label": {0: "negative", 1: "positive"},
        "problem_type": "single_label_classification",
    }
    assert get_task("stsb").config_overrides() == {"num_labels": 1, "problem_type": "regression"}
    assert get_task("MNLI-MM").name == "mnli_mismatched" and get_task("conll2003").name == "ner"
    assert get_task("mnli_mismatched").default_file("validation") == "dev_mismatched.tsv"
