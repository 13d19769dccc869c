"""Multiple choice (SWAG format): reader, [N, C, T] features as HF run_swag, loss, bad data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import mobilebert_jax
from mobilebert_jax.tasks import DataError, get_task
from mobilebert_jax.tasks.multiple_choice import read_swag
from mobilebert_jax.text.tokenizer import MobileBertTokenizer

# The vocab shipped in the package (the same file as ../shared/data/vocab/vocab.txt).
PACKAGED_VOCAB = os.path.join(os.path.dirname(mobilebert_jax.__file__), "data", "vocab.txt")

# The header of SWAG's train.csv / val.csv (an unnamed index column first).
HEADER = ",video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"
ROWS = (
    '0,lsmdc3001,19,"Students lower their eyes nervously. She","Students lower their eyes nervously.",She,gold,'
    '"pats her shoulder, then saunters toward someone.","turns with two students.","walks slowly towards someone.",'
    '"wheels around as her dog thunders out.",2\n'
    '1,anetv_x,5,"He rides a ""bike"". He","He rides a ""bike"", fast.",He,gen,"falls.","stops.","waves.","jumps.",0\n'
)


@pytest.fixture(scope="module")
def tok():
    return MobileBertTokenizer.default()


@pytest.fixture()
def swag_csv(tmp_path):
    path = tmp_path / "val.csv"
    path.write_text(HEADER + ROWS, encoding="utf-8")
    return path


def test_read_and_featurise_like_run_swag(swag_csv, tok):
    task = get_task("swag")
    ex = task.read(swag_csv)
    assert [e.label for e in ex] == [2, 0]
    assert (
        ex[1].context == 'He rides a "bike", fast.'
        and ex[0].endings[3] == "wheels around as her dog thunders out."
    )
    f = task.featurise(ex, tok, 40)
    assert f["input_ids"].shape == f["attention_mask"].shape == f["token_type_ids"].shape == (2, 4, 40)
    assert f["labels"].tolist() == [2, 0]
    # HF run_swag: first = [sent1] * 4, second = [f"{sent2} {ending_i}"], truncation + max_length padding.
    transformers = pytest.importorskip("transformers", reason="transformers is the test reference")
    from mobilebert_jax.text.vocab import load_vocab

    hf = transformers.BertTokenizer(vocab=load_vocab(PACKAGED_VOCAB))
    first = [e.context for e in ex for _ in range(4)]
    second = [f"{e.start} {end}" for e in ex for end in e.endings]
    ref = hf(first, second, truncation=True, max_length=40, padding="max_length")
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        assert np.array_equal(f[k].reshape(8, 40), np.asarray(ref[k])), k
    decoded = tok.decode(f["input_ids"][0, 2][f["attention_mask"][0, 2] == 1].tolist())
    assert (
        decoded == "[CLS] students lower their eyes nervously. [SEP] she walks slowly towards someone. [SEP]"
    )


def test_jsonl_unlabelled_and_predictions(tmp_path, tok):
    rows = [
        {
            "sent1": "A.",
            "sent2": "B",
            "ending0": "x",
            "ending1": "y",
            "ending2": "z",
            "ending3": "w",
            "label": -1,
        }
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = get_task("swag")
    ex = task.read(path)
    assert ex[0].label is None and "labels" not in task.featurise(ex, tok, 16)
    with pytest.raises(DataError, match="no label"):
        task.references(ex)
    logits = np.array([[0.1, 0.9, 0.3, -1.0]])
    pred = task.postprocess(ex, {}, {"logits": logits})
    assert pred.tolist() == [1] and task.metric(pred, [1]) == {"accuracy": 1.0}
    out = tmp_path / "pred.tsv"
    task.write_predictions(out, ex, pred)
    assert out.read_text() == "index\tprediction\n0\t1\n"
    # Two-choice data via the num_choices option.
    two = tmp_path / "two.csv"
    two.write_text("sent1,sent2,ending0,ending1,label\nA.,B,x,y,1\n", encoding="utf-8")
    t2 = get_task("swag", num_choices=2)
    assert t2.featurise(t2.read(two), tok, 8)["input_ids"].shape == (1, 2, 8) and t2.num_labels == 2


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty file"),
        ("sent1,sent2,ending0,ending1,ending2,ending3,label\n", "no examples"),
        ("sent1,ending0,ending1,ending2,ending3,label\nA,x,y,z,w,1\n", r":2: missing column 'sent2'"),
        ("sent1,sent2,ending0,ending1,ending2,ending3,label\nA,B,x,y,z,w,4\n", r":2: label 4 outside 0..3"),
        (
            "sent1,sent2,ending0,ending1,ending2,ending3,label\nA,B,x,y,z,w,one\n",
            r":2: label 'one' is not an integer",
        ),
        ("sent1,sent2,ending0,ending1,ending2,label\nA,B,x,y,z,1\n", r":2: 3 endings, but 4 expected"),
        ("sent1,sent2,ending0,ending1,ending2,ending3,label\nA,B,x,y,z,w,1\nA,B,x,y\n", r":3: fewer fields"),
    ],
)
def test_bad_swag_files(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as err:
        read_swag(path, 4)
    assert str(path) in str(err.value)


def test_loss_equals_torch():
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 6).astype(np.int32)
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels).long())
    task = get_task("swag")
    assert float(task.loss({"logits": jnp.asarray(logits)}, {"labels": labels})) == pytest.approx(
        float(ref), rel=1e-6
    )
    assert task.model_class == "MobileBertForMultipleChoice" and task.config_overrides() == {}
