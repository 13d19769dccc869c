"""MobileBertTokenizer: equal to HF's fast BERT tokenizer (transformers 5.x) on real and hard text.

References: `transformers.BertTokenizer(vocab=...)` (the v5 fast tokenizer; `BertTokenizerFast(vocab_file=)`
silently ignores the file in v5), HF's pure-Python `BertTokenizerLegacy` (an implementation independent
of the `tokenizers` library), REFERENCE §6, and tests/fixtures/tokenizer/hf_reference.json (HF outputs
committed so that parity coverage remains without transformers; regenerate with make_fixture.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, fixture_data, require_shared_data

from mobilebert_jax.text.tokenizer import MobileBertTokenizer

ROOT = Path(__file__).resolve().parent.parent
VOCAB = ROOT / "mobilebert_jax" / "data" / "vocab.txt"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "tokenizer"
FIXTURE = json.loads((FIXTURE_DIR / "hf_reference.json").read_text(encoding="utf-8"))
DATA = Path(SHARED_DATA)
EXTRAS = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
KEYS = ("input_ids", "token_type_ids", "attention_mask", "offset_mapping", "special_tokens_mask")

_spec = importlib.util.spec_from_file_location("tokenizer_fixture", FIXTURE_DIR / "make_fixture.py")
make_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixture)
HARD_TEXTS, HARD_PAIRS = make_fixture.HARD_TEXTS, make_fixture.HARD_PAIRS


@pytest.fixture(scope="module")
def tok() -> MobileBertTokenizer:
    return MobileBertTokenizer.default()


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the tokenizer reference")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"the reference is transformers 5.x, found {transformers.__version__}")
    return transformers.BertTokenizer(vocab=str(VOCAB))


def rows(value) -> list:
    """Our arrays, lists of arrays, or HF's lists (offsets as tuples) as nested Python lists."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value.tolist()
    return [np.asarray(r).tolist() for r in value]


def assert_same(ours: dict, ref, keys=KEYS, what: str = "") -> None:
    for key in keys:
        a, b = rows(ours[key]), rows(ref[key])
        if a != b:
            assert len(a) == len(b), f"{what} {key}: {len(a)} rows, reference {len(b)}"
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            raise AssertionError(f"{what} {key} row {i} differs:\nours {a[i]}\nref  {b[i]}")


def hf_call(hf, text, pair=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf(text, pair, **kwargs)


# ------------------------------------------------------------------------------ offline: vocab, §6.3
def test_packaged_vocab_and_license():
    data = VOCAB.read_bytes()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    assert data.count(b"\n") == 30522
    assert VOCAB_SHA256 in (VOCAB.parent / "VOCAB_LICENSE.md").read_text(encoding="utf-8")
    sums = DATA / "SHA256SUMS"
    if sums.is_file():
        assert f"{VOCAB_SHA256}  ./vocab/vocab.txt" in sums.read_text()


def test_special_tokens_table(tok):
    # REFERENCE §6.3 table.
    assert (tok.vocab_size, len(tok), tok.model_max_length) == (30522, 30522, 512)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    ids = tok.convert_tokens_to_ids(
        ["[PAD]", "[unused0]", "[unused98]", "[UNK]", "[unused99]", "[unused993]", "!"]
    )
    assert ids == [0, 1, 99, 100, 104, 998, 999]
    assert tok.convert_ids_to_tokens([30520, 30521]) == ["##？", "##～"]
    assert sum(t.startswith("[unused") for t in tok.get_vocab()) == 994
    assert tok.model_input_names == ("input_ids", "token_type_ids", "attention_mask")


def test_reference_examples(tok):
    # REFERENCE §6.3 examples.
    enc = tok("Hello, my dog is cute")
    assert enc["input_ids"].tolist() == [[101, 7592, 1010, 2026, 3899, 2003, 10140, 102]]
    assert enc["input_ids"].dtype == np.int32
    assert enc["token_type_ids"].tolist() == [[0] * 8] and enc["attention_mask"].tolist() == [[1] * 8]
    ids = tok("the man worked as a [MASK].")["input_ids"][0].tolist()
    assert ids == [101, 1996, 2158, 2499, 2004, 1037, 103, 1012, 102] and ids.index(103) == 6
    hf_ids = [101, 7110, 1005, 1056, 2023, 11333, 17413, 1029, 102]
    tokens = ["ain", "'", "t", "this", "wa", "##cky", "?"]
    assert tok.convert_ids_to_tokens(hf_ids, skip_special_tokens=True) == tokens
    # §6.3 writes "ain ' t this wacky ?"; the WordPiece decoder's own clean-up joins " ?" (HF v5 agrees).
    assert tok.decode(hf_ids, skip_special_tokens=True) == "ain ' t this wacky?"
    assert tok.decode(hf_ids) == "[CLS] ain ' t this wacky? [SEP]"
    assert (
        tok.decode(hf_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True) == "ain't this wacky?"
    )
    pair = tok(["hello world", "a"], ["my dog", "b c"], padding=True)
    assert pair["input_ids"].tolist() == [
        [101, 7592, 2088, 102, 2026, 3899, 102],
        [101, 1037, 102, 1038, 1039, 102, 0],
    ]
    assert pair["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0]]
    assert pair["attention_mask"].tolist() == [[1] * 7, [1] * 6 + [0]]


def test_normalisation_rules(tok):
    # REFERENCE §6.2, verified there against slow and fast HF tokenizers.
    assert tok.tokenize("control\x00chars\u200bzero\ufeffwidth") == [
        "control",
        "##cha",
        "##rs",
        "##zer",
        "##ow",
        "##id",
        "##th",
    ]
    assert tok.tokenize("a" * 101) == ["[UNK]"] and tok.tokenize("a" * 100) != ["[UNK]"]
    assert tok.tokenize("İstanbul Café") == ["istanbul", "cafe"]
    assert tok("[MASK]")["input_ids"].tolist() == [[101, 103, 102]]
    assert tok.tokenize("[mask]") == ["[", "mask", "]"]
    assert tok.tokenize("北京") == ["北", "京"] and tok.tokenize("$5+x") == ["$", "5", "+", "x"]
    assert tok.tokenize("ＡＢＣ") == ["[UNK]"] and tok.tokenize("€ ½") == ["€", "½"]
    for blank in ("", "   ", "\t\n\r", "\u3000\u00a0"):
        assert tok(blank)["input_ids"].tolist() == [[101, 102]]


# ------------------------------------------------------------------------------ offline: HF fixture
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=[c["name"] for c in FIXTURE["cases"]])
def test_fixture_parity(tok, case):
    ours = tok(case["text"], case.get("text_pair"), return_word_ids=True, **case["kwargs"])
    expected = case["expected"]
    assert set(ours) == set(expected), f"keys {sorted(ours)} != {sorted(expected)}"
    assert_same(ours, expected, keys=list(expected), what=case["name"])


def test_fixture_decode(tok):
    for case in FIXTURE["decode"]:
        assert tok.decode(case["ids"]) == case["plain"]
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["skip"]
        assert tok.decode(case["ids"], clean_up_tokenization_spaces=True) == case["clean"]
    batch = [c["ids"] for c in FIXTURE["decode"]]
    assert tok.batch_decode(batch, skip_special_tokens=True) == [c["skip"] for c in FIXTURE["decode"]]


# ------------------------------------------------------------------------------ offline: behaviour
def test_default_truncates_to_model_positions(tok):
    long = "word " * 700
    assert tok(long)["input_ids"].shape == (1, 512)
    assert tok([long, "short"], ["pair"] * 2, padding=True)["input_ids"].shape == (2, 512)
    with pytest.warns(UserWarning, match="longer than model_max_length=512"):
        assert tok(long, truncation=False)["input_ids"].shape == (1, 702)


def test_output_forms(tok):
    ragged = tok(["a b c", "a"])
    assert isinstance(ragged["input_ids"], list) and [len(r) for r in ragged["input_ids"]] == [5, 3]
    assert ragged["input_ids"][1].dtype == np.int32
    padded = tok(["a b c", "a"], padding=True, pad_to_multiple_of=4, return_offsets_mapping=True)
    assert padded["input_ids"].shape == (2, 8) and padded["offset_mapping"].shape == (2, 8, 2)
    single = tok("a b", return_tensors=None, return_offsets_mapping=True)
    assert single["input_ids"] == [101, 1037, 1038, 102] and single["offset_mapping"][1] == (0, 1)
    assert tok(["a b"], return_tensors=None)["input_ids"] == [[101, 1037, 1038, 102]]
    windows = tok("a b c d e", max_length=4, stride=1, return_overflowing_tokens=True)
    a, b, c, d, e = range(1037, 1042)
    assert windows["input_ids"][:, 1:3].tolist() == [[a, b], [b, c], [c, d], [d, e]]
    assert windows["overflow_to_sample_mapping"].tolist() == [0, 0, 0, 0]
    empty = tok([], return_overflowing_tokens=True)
    assert empty["input_ids"].shape == (0, 0) and empty["overflow_to_sample_mapping"].shape == (0,)
    assert tok([], padding="max_length", max_length=8)["input_ids"].shape == (0, 8)
    assert (
        tok(["a"] * 2, padding="max_length", max_length=5)["attention_mask"].tolist() == [[1, 1, 1, 0, 0]] * 2
    )


def test_empty_strings(tok):
    assert tok("")["input_ids"].tolist() == [[101, 102]]
    assert tok(["", "a"], ["", ""], padding=True)["input_ids"].tolist() == [
        [101, 102, 102, 0],
        [101, 1037, 102, 102],
    ]
    # A single empty text_pair is a pair, as in batches (HF's single-example path would drop it).
    assert tok("a", "")["input_ids"].tolist() == [[101, 1037, 102, 102]]
    assert tok.decode([]) == "" and tok.batch_decode([[], [101]]) == ["", "[CLS]"]


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((None,), {}, TypeError, "text must be a str or a list of str, got NoneType"),
        ((3,), {}, TypeError, "got int"),
        ((b"bytes",), {}, TypeError, "got bytes"),
        ((["ok", None],), {}, TypeError, r"text\[1\] is NoneType"),
        ((["ok", 7],), {}, TypeError, r"text\[1\] is int"),
        (([("a", "b")],), {}, TypeError, r"text\[0\] is tuple"),
        ((["a", "b"], "c"), {}, TypeError, "same size"),
        ((["a", "b"], ["c"]), {}, TypeError, "same size"),
        (("a", ["c"]), {}, TypeError, "same size"),
        (
            ("a", "b"),
            dict(max_length=2),
            ValueError,
            "max_length=2 is shorter than the 3 special tokens of a pair",
        ),
        (("a",), dict(max_length=1), ValueError, "shorter than the 2 special tokens"),
        (("a",), dict(max_length=0), ValueError, "max_length must be an int >= 1"),
        (("a",), dict(max_length=True), ValueError, "max_length must be an int"),
        (("a",), dict(max_length=8.0), ValueError, "max_length must be an int"),
        (("a",), dict(stride=-1), ValueError, "stride must be an int >= 0"),
        (("a",), dict(padding="longest_first"), ValueError, "padding must be one of"),
        (("a",), dict(truncation="only_third"), ValueError, "truncation must be one of"),
        (("a",), dict(truncation=None), ValueError, "truncation must be one of"),
        (("a",), dict(truncation="only_second"), ValueError, "needs text_pair"),
        (("a",), dict(return_tensors="pt"), ValueError, "return_tensors must be 'np' or None"),
        (("a",), dict(padding=True, max_length=10, pad_to_multiple_of=8), ValueError, "not a multiple"),
        (("a",), dict(pad_to_multiple_of=0), ValueError, "pad_to_multiple_of must be an int >= 1"),
        (("a b c",), dict(max_length=5, stride=3, return_overflowing_tokens=True), ValueError, "stride=3"),
        (
            ([["a"], "b"],),
            dict(is_split_into_words=True),
            TypeError,
            r"text\[1\] must be a list of str words",
        ),
        ((["a", 1],), dict(is_split_into_words=True), TypeError, r"text\[1\] is int, expected a str word"),
    ],
)
def test_bad_input(tok, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        tok(*args, **kwargs)


def test_untruncatable_pairs_raise_value_errors(tok):
    # HF raises a bare Exception or panics in Rust (pyo3 PanicException) on these.
    long_q = "question " * 300
    with pytest.raises(
        ValueError, match=r"example 1 \(first sequence 300 tokens, second 200\).*leave 81 tokens"
    ):
        tok(
            ["ok", long_q],
            ["context " * 200] * 2,
            truncation="only_second",
            max_length=384,
            stride=128,
            return_overflowing_tokens=True,
        )
    with pytest.raises(ValueError, match=r"example 0 .*truncation='only_second', stride=0.*leave 0 tokens"):
        tok(long_q, "context", truncation="only_second", max_length=20)
    with pytest.raises(ValueError, match=r"example 0 .*truncation='only_first'"):
        tok("first", long_q, truncation="only_first", max_length=20)
    with pytest.raises(ValueError, match=r"example 0 .*truncation='longest_first'.*keeps only 5 tokens"):
        tok("a " * 30, "b " * 30, max_length=13, stride=6, return_overflowing_tokens=True)
    # Without overflow rows the stride is irrelevant and must not fail (HF panics here).
    assert tok("a " * 30, "b " * 30, max_length=13, stride=6)["input_ids"].shape == (1, 13)


def test_ids_and_tokens(tok):
    assert tok.convert_tokens_to_ids("hello") == 7592 and tok.convert_tokens_to_ids("qqqzzz") == 100
    assert tok.convert_ids_to_tokens(7592) == "hello"
    assert tok.convert_ids_to_tokens(np.array([101, 7592, 102]), skip_special_tokens=True) == ["hello"]
    assert tok.tokenize("Hello there", "pair", add_special_tokens=True) == [
        "[CLS]",
        "hello",
        "there",
        "[SEP]",
        "pair",
        "[SEP]",
    ]
    assert tok.decode(np.array([101, 7592, 102])) == tok.decode([101, 7592, 102]) == "[CLS] hello [SEP]"
    assert tok.batch_decode(np.array([[7592, 2088], [2088, 0]]), skip_special_tokens=True) == [
        "hello world",
        "world",
    ]
    with pytest.raises(ValueError, match=r"token_ids\[1\] = 30522 is not a token id"):
        tok.decode([101, 30522])
    with pytest.raises(ValueError, match=r"ids\[0\] = -1 is not a token id"):
        tok.convert_ids_to_tokens([-1])
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        tok.decode([[1, 2]])
    with pytest.raises(TypeError, match="integer token ids"):
        tok.decode([1.5])
    with pytest.raises(TypeError, match=r"tokens\[1\] is int"):
        tok.convert_tokens_to_ids(["a", 1])
    with pytest.raises(TypeError, match="text must be a str"):
        tok.tokenize(["a"])


# ------------------------------------------------------------------------------ offline: files
def test_save_and_reload(tok, tmp_path):
    paths = tok.save_pretrained(tmp_path / "saved")
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    )
    assert (tmp_path / "saved" / "vocab.txt").read_bytes() == VOCAB.read_bytes()
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 512 and config["do_lower_case"] is True
    assert config["tokenizer_class"] == "BertTokenizer"
    texts = HARD_TEXTS + ["long " * 600]
    want = tok(texts, padding=True, **EXTRAS)
    for other in (
        MobileBertTokenizer.from_pretrained(tmp_path / "saved"),
        MobileBertTokenizer.from_tokenizer_json(tmp_path / "saved" / "tokenizer.json"),
        MobileBertTokenizer.from_vocab_file(tmp_path / "saved" / "vocab.txt"),
    ):
        assert other.model_max_length == 512
        assert_same(other(texts, padding=True, **EXTRAS), want)
    # A directory with vocab.txt only (HF model repos often have no tokenizer.json).
    (tmp_path / "vocab_only").mkdir()
    (tmp_path / "vocab_only" / "vocab.txt").write_bytes(VOCAB.read_bytes())
    assert_same(
        MobileBertTokenizer.from_pretrained(tmp_path / "vocab_only")(texts, padding=True, **EXTRAS), want
    )


def test_loading_hub_style_configs(tmp_path):
    tok = MobileBertTokenizer.default()
    folder = tmp_path / "hub"
    tok.save_pretrained(folder)
    # §4 #19: hub configs say model_max_length=1e30; §6.5: tokenizer.json files that pad/truncate to 128.
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = int(1e30)
    config["mask_token"] = {"content": "[MASK]", "lstrip": True, "__type": "AddedToken"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    state = json.loads((folder / "tokenizer.json").read_text())
    state["truncation"] = {"direction": "Right", "max_length": 128, "strategy": "LongestFirst", "stride": 0}
    state["padding"] = {
        "strategy": {"Fixed": 128},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    (folder / "tokenizer.json").write_text(json.dumps(state))
    loaded = MobileBertTokenizer.from_pretrained(folder)
    assert loaded.model_max_length == 512 and loaded.mask_token_id == 103
    assert loaded("hello " * 300)["input_ids"].shape == (1, 302)  # not truncated to 128
    assert loaded("hello")["input_ids"].shape == (1, 3)  # not padded to 128
    assert MobileBertTokenizer.from_pretrained(folder, model_max_length=128).model_max_length == 128


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
        MobileBertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a directory nor a Hugging Face Hub id"):
        MobileBertTokenizer.from_pretrained(tmp_path / "missing" / "dir")
    with pytest.raises(ValueError, match="is a file"):
        MobileBertTokenizer.from_pretrained(VOCAB)
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"special token cls_token='\[CLS\]' is not in the vocab"):
        MobileBertTokenizer.from_vocab_file(bad)
    bad.write_text("[PAD]\nhello\nworld\nhello\n")
    with pytest.raises(ValueError, match=r"line 4: token 'hello' already appears on line 2"):
        MobileBertTokenizer.from_vocab_file(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="vocab file is empty"):
        MobileBertTokenizer.from_vocab_file(bad)
    with pytest.raises(ValueError, match="not a readable tokenizers JSON"):
        MobileBertTokenizer.from_tokenizer_json(VOCAB)


def test_hub_ids(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    MobileBertTokenizer.default().save_pretrained(tmp_path)
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    tok = MobileBertTokenizer.from_pretrained("google/mobilebert-uncased", revision="main")
    assert tok("Hello, my dog is cute")["input_ids"][0, 1] == 7592
    assert calls[0][0] == "google/mobilebert-uncased" and calls[0][1]["revision"] == "main"
    assert "vocab.txt" in calls[0][1]["allow_patterns"]

    def offline(repo_id, **kwargs):
        raise hub.errors.LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(OSError, match=r"could not fetch the tokenizer files of 'google/mobilebert-uncased'"):
        MobileBertTokenizer.from_pretrained("google/mobilebert-uncased")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(OSError, match="huggingface_hub is not installed"):
        MobileBertTokenizer.from_pretrained("google/mobilebert-uncased")


# ------------------------------------------------------------------------------ transformers reference
def test_pipeline_equals_hf(tok, hf):
    ours = json.loads(tok.backend_tokenizer.to_str())
    ref = json.loads(hf.backend_tokenizer.to_str())
    ours.pop("truncation"), ref.pop("truncation"), ours.pop("padding"), ref.pop("padding")
    assert ours == ref


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=[c["name"] for c in FIXTURE["cases"]])
def test_fixture_is_current(hf, case):
    # The committed fixture must be what the installed HF produces (else regenerate it).
    assert make_fixture.hf_encode(hf, case) == case["expected"]


def test_options_matrix_vs_hf(tok, hf, monkeypatch):
    monkeypatch.setenv("RUST_BACKTRACE", "0")  # HF panics in Rust on some of these; keep the log short
    texts = HARD_TEXTS[:12]
    pairs = [HARD_PAIRS[i % len(HARD_PAIRS)][1] for i in range(12)]
    n_checked = n_errors = 0
    for use_pairs in (False, True):
        for padding in (False, True, "max_length"):
            for truncation in (True, "only_first", "only_second", False):
                for max_length in (6, 20):
                    for multiple in (None, 8):
                        for overflow, stride in ((False, 0), (True, 2)):
                            kwargs = dict(
                                padding=padding,
                                truncation=truncation,
                                max_length=max_length,
                                pad_to_multiple_of=multiple,
                                return_overflowing_tokens=overflow,
                                stride=stride,
                                **EXTRAS,
                            )
                            pair = pairs if use_pairs else None
                            try:
                                ref = hf_call(hf, texts, pair, **kwargs)
                            except BaseException as err:  # includes pyo3's PanicException
                                if isinstance(err, KeyboardInterrupt):
                                    raise
                                with pytest.raises((ValueError, TypeError)):
                                    tok(texts, pair, **kwargs)
                                n_errors += 1
                                continue
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                ours = tok(texts, pair, **kwargs)
                            keys = KEYS + (("overflow_to_sample_mapping",) if overflow else ())
                            assert_same(ours, ref, keys=keys, what=str(kwargs))
                            n_checked += 1
    assert n_checked > 80 and n_errors > 10


def test_python_lists_vs_hf(tok, hf):
    # return_tensors=None mirrors HF's default output, including unbatched single examples.
    words = make_fixture.WORDS
    calls = [
        (("Hello, my dog is cute",), {}),
        (("Who wrote it?", "Sartre, in 1943."), {}),
        ((HARD_TEXTS[:5],), dict(padding=True)),
        (("a b c d e f g",), dict(truncation=True, max_length=5, stride=1, return_overflowing_tokens=True)),
        ((words[0], words[1]), dict(is_split_into_words=True)),
        ((words, words[::-1]), dict(is_split_into_words=True, padding="max_length", max_length=16)),
    ]
    for args, kwargs in calls:
        ours = tok(*args, return_tensors=None, **{"truncation": False, **kwargs}, **EXTRAS)
        ref = hf_call(hf, *args, **kwargs, **EXTRAS)
        assert ours == dict(ref), (args, kwargs)


def test_hard_cases_vs_hf_and_python_reference(tok, hf):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    legacy = BertTokenizerLegacy(vocab_file=str(VOCAB))
    firsts, seconds = [a for a, _ in HARD_PAIRS], [b for _, b in HARD_PAIRS]
    assert_same(tok(HARD_TEXTS, truncation=False, **EXTRAS), hf_call(hf, HARD_TEXTS, **EXTRAS))
    assert_same(tok(firsts, seconds, truncation=False, **EXTRAS), hf_call(hf, firsts, seconds, **EXTRAS))
    ours = tok(HARD_TEXTS, truncation=False)["input_ids"]
    assert rows(ours) == [legacy(t)["input_ids"] for t in HARD_TEXTS]
    for text in HARD_TEXTS:
        assert tok.tokenize(text) == hf.tokenize(text) == legacy.tokenize(text)
    ids = rows(ours)
    assert tok.batch_decode(ids) == hf.batch_decode(ids)
    assert tok.batch_decode(ids, skip_special_tokens=True) == hf.batch_decode(ids, skip_special_tokens=True)


def test_saved_directory_loads_in_transformers(tok, hf, tmp_path):
    import transformers

    tok.save_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.model_max_length == 512 and auto.vocab_size == 30522
    texts = HARD_TEXTS + ["long " * 600]
    with pytest.warns(UserWarning, match="longer than model_max_length"):
        ours = tok(texts, truncation=False, **EXTRAS)
    assert_same(ours, hf_call(auto, texts, **EXTRAS))
    firsts, seconds = [a for a, _ in HARD_PAIRS], [b for _, b in HARD_PAIRS]
    assert_same(tok(firsts, seconds, **EXTRAS), hf_call(auto, firsts, seconds, truncation=True, **EXTRAS))
    # And the other way: a directory written by transformers (tokenizer.json, model_max_length=1e30).
    hf.save_pretrained(str(tmp_path / "from_hf"))
    loaded = MobileBertTokenizer.from_pretrained(tmp_path / "from_hf")
    assert loaded.model_max_length == 512
    assert_same(loaded(texts, **EXTRAS), tok(texts, **EXTRAS))


# ------------------------------------------------------------------------------ real data (all of it)
# SQuAD v1.1 dev and QNLI dev ship with the tests (tests/fixtures/data); SST-2, CoLA, MRPC and CoNLL-2003
# may not be copied into the project: their tests need the shared data folder and skip without it.
def _tsv(path: Path, columns: tuple[int, ...], header: bool) -> list[tuple[str, ...]]:
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    out = [tuple(line.split("\t")[c] for c in columns) for line in lines[1 if header else 0 :] if line]
    assert out, f"{path}: no rows"
    return out


def _squad() -> list[tuple[str, str]]:
    """(question, context) of every SQuAD v1.1 dev question."""
    articles = json.loads(Path(fixture_data("squad/dev-v1.1.json")).read_text(encoding="utf-8"))["data"]
    return [(qa["question"], p["context"]) for a in articles for p in a["paragraphs"] for qa in p["qas"]]


def _squad_contexts() -> list[str]:
    articles = json.loads(Path(fixture_data("squad/dev-v1.1.json")).read_text(encoding="utf-8"))["data"]
    return [p["context"] for a in articles for p in a["paragraphs"]]


def _conll_sentences(splits: tuple[str, ...] = ("train", "dev", "test")) -> list[list[str]]:
    sentences = []
    for split in splits:
        words: list[str] = []
        path = Path(require_shared_data(f"conll2003/{split}.txt"))
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                words.append(line.rsplit(" ", 1)[0])
            elif words:
                sentences.append(words)
                words = []
        if words:
            sentences.append(words)
    return sentences


def real_data(name: str) -> tuple[list[str], list[str] | None]:
    if name == "squad_questions":
        return [q for q, _ in _squad()], None
    if name == "squad_contexts":
        return _squad_contexts(), None
    if name == "sst2":
        return [r[0] for r in _tsv(Path(require_shared_data("glue/SST-2/dev.tsv")), (0,), True)], None
    if name == "cola":
        return [r[0] for r in _tsv(Path(require_shared_data("glue/CoLA/dev.tsv")), (3,), False)], None
    if name == "mrpc":
        table = _tsv(Path(require_shared_data("glue/MRPC/dev.tsv")), (3, 4), True)
        return [a for a, _ in table], [b for _, b in table]
    if name == "qnli":
        table = _tsv(Path(fixture_data("glue/QNLI/dev.tsv")), (1, 2), True)
        return [a for a, _ in table], [b for _, b in table]
    if name == "conll":
        return [" ".join(words) for words in _conll_sentences()], None
    raise KeyError(name)


COUNTS = dict(
    squad_questions=10_570, squad_contexts=2_067, sst2=872, cola=1_043, mrpc=408, qnli=5_463, conll=20_744
)


# By default the large sets (SQuAD questions, QNLI, CoNLL) are checked on every 4th example, the
# rest on all of it; `--runslow` checks every example of every set (~3x the time on 2 CPUs).
BIG = ("squad_questions", "qnli", "conll")
SWEEP = [pytest.param(name, 4 if name in BIG else 1, id=name) for name in COUNTS] + [
    pytest.param(name, 1, id=f"{name}-all", marks=pytest.mark.slow) for name in BIG
]


@pytest.mark.parametrize("name, step", SWEEP)
def test_real_data_parity(tok, hf, name, step):
    texts, pairs = real_data(name)
    assert len(texts) == COUNTS[name]
    texts, pairs = texts[::step], None if pairs is None else pairs[::step]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 9 SQuAD contexts exceed 512 tokens
        ours = tok(texts, pairs, truncation=False, **EXTRAS)
    assert_same(ours, hf_call(hf, texts, pairs, **EXTRAS), what=name)
    ids = rows(ours["input_ids"])
    assert tok.batch_decode(ids[:500]) == hf.batch_decode(ids[:500])


def test_real_data_padded(tok, hf):
    contexts, _ = real_data("squad_contexts")
    kwargs = dict(truncation=True, max_length=512, padding=True, pad_to_multiple_of=8, **EXTRAS)
    ours = tok(contexts, **kwargs)
    ref = hf_call(hf, contexts, return_tensors="np", **kwargs)
    assert ours["input_ids"].shape == ref["input_ids"].shape
    for key in KEYS:
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


@pytest.mark.parametrize("name", list(COUNTS))
def test_real_data_python_reference(tok, hf, name):
    # An implementation independent of the `tokenizers` library, on a sample of every data set.
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    legacy = BertTokenizerLegacy(vocab_file=str(VOCAB))
    texts, pairs = real_data(name)
    step = max(1, len(texts) // 60)
    texts, pairs = texts[::step], None if pairs is None else pairs[::step]
    want = [legacy(t, p)["input_ids"] for t, p in zip(texts, pairs or [None] * len(texts))]
    assert rows(tok(texts, pairs, truncation=False)["input_ids"]) == want, name


@pytest.mark.parametrize(
    "step", [pytest.param(3, id="every3rd"), pytest.param(1, id="all", marks=pytest.mark.slow)]
)
def test_squad_question_context_overflow(tok, hf, step):
    squad = _squad()[::step]
    questions, contexts = [q for q, _ in squad], [c for _, c in squad]
    # The SQuAD preprocessing setting, and a tighter window (more overflow) on a part.
    for max_length, stride, n in ((384, 128, len(squad)), (128, 32, 1000)):
        kwargs = dict(
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            padding="max_length",
            **EXTRAS,
        )
        ours = tok(questions[:n], contexts[:n], **kwargs)
        ref = hf_call(hf, questions[:n], contexts[:n], return_tensors="np", **kwargs)
        assert ours["input_ids"].shape == ref["input_ids"].shape and ours["input_ids"].shape[1] == max_length
        assert len(ours["input_ids"]) > n  # some contexts need more than one window
        for key in KEYS + ("overflow_to_sample_mapping",):
            np.testing.assert_array_equal(ours[key], ref[key], err_msg=f"{key} at {max_length}/{stride}")


def test_conll_words_parity(tok, hf):
    sentences = _conll_sentences(("dev",))
    ours = tok(sentences, is_split_into_words=True, truncation=False, return_word_ids=True, **EXTRAS)
    ref = hf_call(hf, sentences, is_split_into_words=True, **EXTRAS)
    assert_same(ours, ref, what="conll words")
    want = [[-1 if w is None else w for w in ref.word_ids(i)] for i in range(len(sentences))]
    assert rows(ours["word_ids"]) == want


def test_word_ids_do_not_need_offsets():
    """Regression: word ids were all -1 unless offsets were also requested (encode_batch_fast)."""
    tok = MobileBertTokenizer.default()
    texts = ["hello world foo", "unaffable pancakes , really"]
    alone = tok(texts, return_word_ids=True, padding="longest")["word_ids"]
    with_offsets = tok(texts, return_word_ids=True, return_offsets_mapping=True, padding="longest")[
        "word_ids"
    ]
    np.testing.assert_array_equal(alone, with_offsets)
    assert alone[0][:5].tolist() == [-1, 0, 1, 2, -1]
