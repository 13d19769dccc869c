"""TF checkpoints without TensorFlow: bundle reader, TF1/h5 name maps, recorded TF/HF outputs, convert CLI.

Every reference here was written by real TensorFlow 2.21 / transformers 4.57 (scripts/make_tf_fixtures.py)
into tests/fixtures/tf; this file needs neither. Tolerances are relative (max|a-b|/max|b|).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from conftest import rel_err

from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
from mobilebert_jax.checkpoints import tf_bundle as tb
from mobilebert_jax.checkpoints.formats import detect_source, infer_model_class
from mobilebert_jax.checkpoints.tensorflow import (
    config_from_google,
    h5_to_pytorch_names,
    load_config,
    load_tf1_checkpoint,
    load_tf_h5,
    map_tf1_names,
    pytorch_to_tf1_names,
    save_tf1_checkpoint,
    tf1_name_to_pytorch,
    tf1_to_pytorch_names,
)
from mobilebert_jax.cli.main import main

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "tf")
TF1 = os.path.join(FIX, "tf1", "mobilebert_variables.ckpt")
TOL = 1e-5


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def digest(a) -> str:
    """Same digest as scripts/make_tf_fixtures.py: sha256 of C-order bytes; strings with 8-byte lengths."""
    a = np.asarray(a)
    if a.dtype == object:
        h = hashlib.sha256()
        for x in a.ravel():
            h.update(len(x).to_bytes(8, "little") + bytes(x))
        return h.hexdigest()
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def tf_dtype_name(a: np.ndarray) -> str:
    return "string" if a.dtype == object else str(a.dtype)


def copy_ckpt(tmp_path, src_prefix=TF1, name="model.ckpt"):
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(src_prefix + suffix, tmp_path / (name + suffix))
    return str(tmp_path / name)


# ------------------------------------------------------------------------------------ bundle reader
@pytest.mark.parametrize("ckpt", ["tf1/mobilebert_variables.ckpt", "bundle/objects", "bundle/sharded.ckpt"])
def test_bundle_reader_bit_exact_with_tf(ckpt):
    """Every tensor equals what tf.train.load_checkpoint read at fixture time: name, dtype, shape, bytes."""
    recorded = json.load(open(os.path.join(FIX, "tensors.json")))[ckpt]
    ours = tb.load_checkpoint(os.path.join(FIX, ckpt))
    assert sorted(ours) == sorted(recorded)
    for name, rec in recorded.items():
        a = ours[name]
        assert (tf_dtype_name(a), list(a.shape)) == (rec["dtype"], rec["shape"]), name
        assert digest(a) == rec["sha256"], name
    dtypes = {tf_dtype_name(a) for a in ours.values()}
    if ckpt == "bundle/objects":  # the dtype coverage this fixture exists for
        assert {"bfloat16", "float16", "float64", "int64", "int32", "bool", "string"} <= dtypes


def test_bundle_reader_api():
    r = tb.BundleReader(os.path.join(FIX, "bundle", "sharded.ckpt"))
    assert r.num_shards == 2 and {e.shard_id for e in r.entries.values()} == {0, 1}
    assert r.variables() == [(n, list(r.entries[n].shape)) for n in sorted(r.entries)]
    every = r.read_all()
    for n in r.keys():
        np.testing.assert_array_equal(r.read(n), every[n])
    assert tb.list_variables(TF1)[0] == ("bert/embeddings/FakeLayerNorm/beta", [24])
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        r.read("nope")


def test_resolve_checkpoint_prefix(tmp_path):
    assert tb.resolve_checkpoint_prefix(TF1 + ".index") == TF1
    assert tb.resolve_checkpoint_prefix(TF1 + ".data-00000-of-00001") == TF1
    assert tb.resolve_checkpoint_prefix(os.path.dirname(TF1)) == TF1  # the only *.index
    a, b = copy_ckpt(tmp_path, name="a.ckpt"), copy_ckpt(tmp_path, name="b.ckpt")
    with pytest.raises(tb.BundleError, match="cannot tell which checkpoint"):
        tb.resolve_checkpoint_prefix(tmp_path)
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "b.ckpt"\nall_model_checkpoint_paths: "a.ckpt"\n'
    )
    assert tb.resolve_checkpoint_prefix(tmp_path) == b != a


def test_crc32c_reference_values():
    # RFC 3720 (iSCSI) check value, and the numpy fallback against the C implementation
    assert tb.crc32c(b"123456789") == tb._crc32c_numpy(b"123456789") == 0xE3069283
    assert tb._crc32c_numpy(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 4095, 4096, 70001, 300_001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tb._crc32c_numpy(data) == tb.crc32c(data), n
        assert tb._crc32c_numpy(data[n // 3 :], tb._crc32c_numpy(data[: n // 3])) == tb.crc32c(data), n
    for c in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert tb.unmask_crc(tb.mask_crc(c)) == c


def test_reader_with_numpy_crc32c(tmp_path, monkeypatch):
    """Without google-crc32c's C extension the numpy fallback verifies the same checksums."""
    monkeypatch.setattr(tb, "_crc32c_impl", tb._crc32c_numpy)
    ours = tb.load_checkpoint(os.path.join(FIX, "bundle", "objects"))
    recorded = json.load(open(os.path.join(FIX, "tensors.json")))["bundle/objects"]
    assert {n: digest(a) for n, a in ours.items()} == {n: r["sha256"] for n, r in recorded.items()}
    prefix = copy_ckpt(tmp_path)
    entry = tb.BundleReader(prefix).entries["bert/embeddings/word_embeddings"]
    _flip(prefix + ".data-00000-of-00001", entry.offset + 5)
    with pytest.raises(tb.BundleError, match="word_embeddings.*checksum mismatch"):
        tb.load_checkpoint(prefix)


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_corrupted_data_names_file_and_tensor(tmp_path):
    prefix = copy_ckpt(tmp_path)
    entry = tb.BundleReader(prefix).entries["bert/encoder/layer_1/attention/self/query/kernel"]
    _flip(prefix + ".data-00000-of-00001", entry.offset + entry.size // 2)
    with pytest.raises(tb.BundleError, match=r"data-00000-of-00001: tensor 'bert/encoder/layer_1/.*checksum"):
        tb.load_checkpoint(prefix)
    with pytest.raises(tb.BundleError, match="checksum mismatch"):
        tb.BundleReader(prefix).read(entry.name)
    # Without verification the flipped bit goes through: the checksum is what catches it.
    bad = tb.load_checkpoint(prefix, verify=False)[entry.name]
    assert not np.array_equal(bad, tb.load_checkpoint(TF1)[entry.name])


def test_truncated_data_and_missing_shard(tmp_path):
    prefix = copy_ckpt(tmp_path)
    data = prefix + ".data-00000-of-00001"
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.truncate(size - 100)
    last = max(tb.BundleReader(prefix).entries.values(), key=lambda e: e.offset)
    with pytest.raises(tb.BundleError, match=rf"tensor '{last.name}' .*truncated"):
        tb.load_checkpoint(prefix)
    os.remove(data)
    with pytest.raises(tb.BundleError, match="data-00000-of-00001 does not exist"):
        tb.load_checkpoint(prefix)


def test_corrupted_or_truncated_index(tmp_path):
    prefix = copy_ckpt(tmp_path)
    index = prefix + ".index"
    _flip(index, 40)  # inside the first data block (tensor names/entries)
    with pytest.raises(tb.BundleError, match=r"model\.ckpt\.index: checksum mismatch in data block"):
        tb.BundleReader(prefix)
    prefix = copy_ckpt(tmp_path, name="short.ckpt")
    with open(prefix + ".index", "r+b") as f:
        f.truncate(os.path.getsize(prefix + ".index") - 30)
    with pytest.raises(tb.BundleError, match=r"short\.ckpt\.index: bad table magic"):
        tb.BundleReader(prefix)
    with pytest.raises(tb.BundleError, match="does not exist"):
        tb.BundleReader(tmp_path / "absent.ckpt")


def test_corrupted_string_tensor(tmp_path):
    src = os.path.join(FIX, "bundle", "objects")
    prefix = copy_ckpt(tmp_path, src, "objects")
    entry = tb.BundleReader(prefix).entries["_CHECKPOINTABLE_OBJECT_GRAPH"]
    _flip(prefix + ".data-00000-of-00001", entry.offset + entry.size - 3)
    with pytest.raises(tb.BundleError, match="_CHECKPOINTABLE_OBJECT_GRAPH.*checksum"):
        tb.load_checkpoint(prefix)


# ------------------------------------------------------------------------------------- name maps
@pytest.mark.parametrize("teacher", [False, True])
def test_tf1_names_bit_exact_with_hf_loader(teacher):
    """Our TF1 → PT state dict equals, tensor by tensor, what HF 4.57's load_tf_weights_in_mobilebert built."""
    ref = json.load(open(os.path.join(FIX, "tf1", "pt_digests.json")))["teacher" if teacher else "student"]
    state, mapped, skipped = tf1_to_pytorch_names(tb.load_checkpoint(TF1), teacher=teacher)
    extra = set() if teacher else {"qa_outputs.weight", "qa_outputs.bias"}  # HF's loader cannot map cls/squad
    assert set(state) == set(ref) | extra
    assert {k: digest(v) for k, v in state.items() if k in ref} == ref
    reasons = set(skipped.values())
    assert "optimizer state" in reasons and "unrecognised name" not in reasons
    assert skipped["global_step"] == "optimizer state"


def test_tf1_name_table():
    cases = {
        "bert/embeddings/word_embeddings": ("mobilebert.embeddings.word_embeddings.weight", False),
        "bert/embeddings/FakeLayerNorm/gamma": ("mobilebert.embeddings.LayerNorm.weight", False),
        "bert/encoder/layer_11/ffn_layer_2/output/FakeLayerNorm/beta": (
            "mobilebert.encoder.layer.11.ffn.2.output.LayerNorm.bias",
            False,
        ),
        "bert/encoder/layer_3/attention/self/value/kernel": (
            "mobilebert.encoder.layer.3.attention.self.value.weight",
            True,
        ),
        "bert/encoder/layer_0/output/bottleneck/LayerNorm/gamma": (
            "mobilebert.encoder.layer.0.output.bottleneck.LayerNorm.weight",
            False,
        ),
        "cls/predictions/extra_output_weights": ("cls.predictions.dense.weight", True),
        "cls/predictions/output_bias": ("cls.predictions.bias", False),
        "cls/predictions/transform/LayerNorm/beta": ("cls.predictions.transform.LayerNorm.bias", False),
        "cls/seq_relationship/output_weights": ("cls.seq_relationship.weight", False),
        "cls/squad/output_weights": ("qa_outputs.weight", False),
        "output_bias": ("classifier.bias", False),
    }
    for tf_name, want in cases.items():
        assert tf1_name_to_pytorch(tf_name) == want, tf_name
    for unknown in ("bert/encoder/layer_x/foo", "something/else", "cls/predictions/decoder/kernel"):
        assert tf1_name_to_pytorch(unknown) is None
    names = [
        "bert/pooler/dense/kernel/adam_m",
        "global_step",
        "bert/pooler/dense/kernel/AdamWeightDecayOptimizer",
        "bert/embeddings/MobileBertActFakeQuantWithMinMaxVars/min",
        "teacher/bert/pooler/dense/kernel",
        "bert/pooler/dense/kernel",
        "weird/thing",
    ]
    mapped, skipped = map_tf1_names(names)
    assert mapped == {"bert/pooler/dense/kernel": ("mobilebert.pooler.dense.weight", True)}
    assert [skipped[n] for n in names if n in skipped] == [
        "optimizer state",
        "optimizer state",
        "optimizer state",
        "quantization range",
        "teacher variable (load it with teacher=True)",
        "unrecognised name",
    ]
    mapped, skipped = map_tf1_names(names, teacher=True)
    assert mapped == {"teacher/bert/pooler/dense/kernel": ("mobilebert.pooler.dense.weight", True)}
    with pytest.raises(ValueError, match="no teacher/"):
        map_tf1_names(["bert/pooler/dense/kernel"], teacher=True)
    with pytest.raises(ValueError, match="2-D kernel"):
        tf1_to_pytorch_names({"bert/pooler/dense/kernel": np.zeros((2, 2, 2))})


@pytest.mark.parametrize("teacher", [False, True])
def test_pytorch_to_tf1_inverts_the_map(teacher):
    """PT → TF1 gives back exactly the google names and arrays of the fixture (slots aside)."""
    variables = tb.load_checkpoint(TF1)
    state, mapped, _ = tf1_to_pytorch_names(variables, teacher=teacher)
    config = load_config(os.path.join(FIX, "tf1", "teacher_config.json" if teacher else "bert_config.json"))
    back = pytorch_to_tf1_names(state, config)
    prefix = "teacher/" if teacher else ""
    assert {prefix + k for k in back} == set(mapped)
    for k, v in back.items():
        np.testing.assert_array_equal(v, variables[prefix + k])


def test_h5_names_match_transformers_state_dict():
    transformers = pytest.importorskip("transformers")
    for name, cls in (
        ("pretraining", "MobileBertForPreTraining"),
        ("qa_layer_norm", "MobileBertForQuestionAnswering"),
    ):
        folder = os.path.join(FIX, "h5", name)
        state = h5_to_pytorch_names(os.path.join(folder, "tf_model.h5"))
        hf = getattr(transformers, cls)(
            transformers.MobileBertConfig.from_json_file(os.path.join(folder, "config.json"))
        )
        ref = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
        ref.pop("cls.predictions.decoder.bias", None)  # TF has one bias (PT's alias of cls.predictions.bias)
        assert {k: v.shape for k, v in state.items()} == ref


def test_google_config_reading():
    student = load_config(os.path.join(FIX, "tf1", "bert_config.json"))
    teacher = load_config(os.path.join(FIX, "tf1", "teacher_config.json"))
    for ours, ref_file in ((student, "student_hf_config.json"), (teacher, "teacher_hf_config.json")):
        ref = json.load(open(os.path.join(FIX, "tf1", ref_file)))  # what the references were built with
        got = ours.to_dict()
        fields = [f for f in ref if f in got and f not in ("id2label", "label2id", "architectures")]
        assert {f: got[f] for f in fields} == {f: ref[f] for f in fields}
    assert teacher.hidden_act == "gelu_new" and teacher.normalization_type == "layer_norm"
    assert not teacher.key_query_shared_bottleneck and teacher.num_feedforward_networks == 1
    hf = load_config(os.path.join(FIX, "h5", "pretraining", "config.json"))
    assert hf.extra["architectures"] == ["MobileBertForPreTraining"]
    assert (
        config_from_google({"vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2}).embedding_size == 8
    )
    with pytest.raises(ValueError, match="manual_layer_norm"):
        config_from_google({"vocab_size": 10, "normalization_type": "manual_layer_norm"})
    with pytest.raises(ValueError, match="hidden_act='swish'"):
        config_from_google({"vocab_size": 10, "hidden_act": "swish"})


# ------------------------------------------------------------------------------ recorded outputs
def _run(cls_name, config, params, inputs):
    model = MODEL_CLASSES[cls_name](config)
    return model.apply({"params": params}, **inputs, output_hidden_states=True)


def _check(out, ref, prefix="", fields=()):
    errs = {}
    for f in fields:
        errs[f] = rel_err(getattr(out, f), ref[prefix + f])
    for i, h in enumerate(out.hidden_states):
        errs[f"hidden_states_{i}"] = rel_err(h, ref[f"{prefix}hidden_states_{i}"])
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("teacher", [False, True])
def test_tf1_matches_hf_loader_outputs(teacher):
    ref = np.load(os.path.join(FIX, "tf1", "outputs.npz"))
    inputs = {k: ref[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert (inputs["attention_mask"] == 0).any()  # a padded batch: HF PT masks with finfo.min, as we do
    params, report = load_tf1_checkpoint(TF1, None, "MobileBertForPreTraining", teacher=teacher)
    out = _run("MobileBertForPreTraining", report.config, params, inputs)
    who = "teacher_" if teacher else "student_"
    _check(out, ref, who, ("prediction_logits", "seq_relationship_logits"))
    assert report.load.initialised == [] and len(report.mapped) == (41 if teacher else 99)


def test_tf1_squad_head():
    ref = np.load(os.path.join(FIX, "tf1", "outputs.npz"))
    inputs = {k: ref[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    params, report = load_tf1_checkpoint(
        os.path.dirname(TF1), os.path.join(FIX, "tf1", "bert_config.json"), "MobileBertForQuestionAnswering"
    )
    out = MODEL_CLASSES["MobileBertForQuestionAnswering"](report.config).apply({"params": params}, **inputs)
    assert rel_err(out.start_logits, ref["qa_start_logits"]) < TOL
    assert rel_err(out.end_logits, ref["qa_end_logits"]) < TOL
    assert report.skipped["bert/pooler/dense/kernel"] == "pooler, unused by MobileBertForQuestionAnswering"
    summary = report.summary()
    assert "optimizer state" in summary and "teacher variable" in summary and "head not in" in summary


def test_tf1_strict_and_missing_config(tmp_path):
    prefix = copy_ckpt(tmp_path)
    with pytest.raises(FileNotFoundError, match="bert_config.json"):
        load_tf1_checkpoint(prefix)
    config = load_config(os.path.join(FIX, "tf1", "bert_config.json"))
    with pytest.raises(ValueError, match="strict"):
        load_tf1_checkpoint(prefix, config, "MobileBertForPreTraining", strict=True)  # extra qa head
    with pytest.raises(ValueError, match="object-based .* not supported"):
        load_tf1_checkpoint(os.path.join(FIX, "bundle", "objects"), config)
    params, report = load_tf1_checkpoint(prefix, config, "MobileBertForSequenceClassification")
    assert sorted(report.initialised) == ["classifier.bias", "classifier.weight"]


H5_CASES = [
    ("pretraining", "MobileBertForPreTraining", ("prediction_logits", "seq_relationship_logits")),
    ("sequence_classification", "MobileBertForSequenceClassification", ("logits",)),
    ("multiple_choice", "MobileBertForMultipleChoice", ("logits",)),
    ("qa_layer_norm", "MobileBertForQuestionAnswering", ("start_logits", "end_logits")),
]


@pytest.mark.parametrize("name,cls,fields", H5_CASES)
def test_h5_matches_recorded_tf_outputs(name, cls, fields):
    folder = os.path.join(FIX, "h5", name)
    ref = np.load(os.path.join(folder, "outputs.npz"))
    ids = ref["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ref["token_type_ids"]}
    params, report = load_tf_h5(folder, None, cls)
    assert report.load.initialised == [] and not report.skipped
    out = _run(cls, report.config, params, inputs)
    if name == "qa_layer_norm":
        # HF PT (our target) uses eps 1e-5 on two LayerNorms where TF uses 1e-12: compare with TF run
        # with PT's eps (pteps_) and with PT 4.57 on the same weights (pt_).
        _check(out, ref, "pteps_", fields)
        for f in fields:
            assert rel_err(getattr(out, f), ref["pt_" + f]) < TOL
    else:
        _check(out, ref, "", fields)


def test_h5_untied_decoder_and_bad_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "m"
    shutil.copytree(os.path.join(FIX, "h5", "pretraining"), folder)
    with h5py.File(folder / "tf_model.h5", "r+") as f:
        group = f["predictions___cls"]
        name = next(n for n in group.attrs["weight_names"] if "decoder" in str(n))
        group[name][0, 0] += 1.0
    _, report = load_tf_h5(folder, None, "MobileBertForMaskedLM")
    assert any("untied MLM decoder" in n for n in report.notes)
    assert "seq_relationship" in " ".join(report.load.dropped)
    with open(folder / "tf_model.h5", "r+b") as f:
        f.truncate(4000)
    with pytest.raises(ValueError, match=r"tf_model\.h5"):
        load_tf_h5(folder, None, "MobileBertForMaskedLM")


def test_save_tf1_checkpoint_needs_tensorflow(tmp_path):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed: test_tf_live.py covers save_tf1_checkpoint")
    config = load_config(os.path.join(FIX, "tf1", "bert_config.json"))
    params, _ = load_tf1_checkpoint(TF1, config, "MobileBertForPreTraining")
    with pytest.raises(ImportError, match="pip install tensorflow-cpu"):
        save_tf1_checkpoint(params, config, tmp_path / "model.ckpt")
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------- CLI
def _cli(*argv):
    return main(["convert", *(str(a) for a in argv)])


def _hf_load(folder, cls):
    transformers = pytest.importorskip("transformers")
    model, info = getattr(transformers, cls).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_cli_tf1_to_hf_dir_loads_in_transformers(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    assert detect_source(os.path.dirname(TF1)) == "tf1" and detect_source(TF1) == "tf1"
    assert _cli(os.path.dirname(TF1), tmp_path / "qa") == 0
    out = capsys.readouterr().out
    assert "MobileBertForQuestionAnswering" in out and "skipped (optimizer state)" in out
    ref = np.load(os.path.join(FIX, "tf1", "outputs.npz"))
    model = _hf_load(tmp_path / "qa", "MobileBertForQuestionAnswering")
    with torch.no_grad():
        r = model(**{k: torch.tensor(ref[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    assert rel_err(r.start_logits.numpy(), ref["qa_start_logits"]) < TOL
    # the teacher of the same checkpoint, as a pretraining model
    assert _cli(TF1, tmp_path / "teacher", "--teacher", "--model-class", "MobileBertForPreTraining") == 0
    model = _hf_load(tmp_path / "teacher", "MobileBertForPreTraining")
    assert model.config.normalization_type == "layer_norm" and model.config.hidden_act == "gelu_new"
    with torch.no_grad():
        r = model(**{k: torch.tensor(ref[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
    assert rel_err(r.prediction_logits.numpy(), ref["teacher_prediction_logits"]) < TOL


def test_cli_h5_to_orbax_to_hf(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    src = os.path.join(FIX, "h5", "pretraining")
    assert detect_source(src) == "h5"
    assert _cli(src, tmp_path / "orbax", "--to", "orbax") == 0
    assert detect_source(str(tmp_path / "orbax")) == "orbax"
    assert _cli(tmp_path / "orbax", tmp_path / "hf") == 0
    assert "MobileBertForPreTraining" in capsys.readouterr().out
    assert detect_source(str(tmp_path / "hf")) == "hf"
    ref = np.load(os.path.join(src, "outputs.npz"))
    model = _hf_load(tmp_path / "hf", "MobileBertForPreTraining")
    with torch.no_grad():
        r = model(
            input_ids=torch.tensor(ref["input_ids"]).long(),
            token_type_ids=torch.tensor(ref["token_type_ids"]).long(),
        )
    assert rel_err(r.prediction_logits.numpy(), ref["prediction_logits"]) < TOL
    # and HF dir → HF dir (re-saving a PT checkpoint) keeps it
    assert _cli(tmp_path / "hf", tmp_path / "hf2") == 0
    _hf_load(tmp_path / "hf2", "MobileBertForPreTraining")


def test_cli_trainer_checkpoint_to_hf(tmp_path):
    """An orbax CheckpointManager folder written by the trainer (latest step, item "state") → HF dir."""
    optax = pytest.importorskip("optax")
    torch = pytest.importorskip("torch")
    from mobilebert_jax.training.state import TrainState, checkpoint_manager, save_checkpoint

    src = os.path.join(FIX, "h5", "pretraining")
    params, report = load_tf_h5(src, None, "MobileBertForPreTraining")
    mngr = checkpoint_manager(tmp_path / "run", save_every=1, async_save=False)
    save_checkpoint(mngr, 7, TrainState.create(params, optax.adamw(1e-3)))
    mngr.wait_until_finished()
    mngr.close()
    report.config.save(tmp_path / "run")
    assert detect_source(str(tmp_path / "run")) == "orbax"
    assert _cli(tmp_path / "run", tmp_path / "hf") == 0
    ref = np.load(os.path.join(src, "outputs.npz"))
    model = _hf_load(tmp_path / "hf", "MobileBertForPreTraining")
    with torch.no_grad():
        r = model(
            input_ids=torch.tensor(ref["input_ids"]).long(),
            token_type_ids=torch.tensor(ref["token_type_ids"]).long(),
        )
    assert rel_err(r.seq_relationship_logits.numpy(), ref["seq_relationship_logits"]) < TOL


def test_cli_errors(tmp_path, capsys):
    def error(*argv) -> str:
        assert _cli(*argv) in (1, 2)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        return err

    assert "absent: no such directory" in error(tmp_path / "absent", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty; pass --overwrite" in error(os.path.dirname(TF1), tmp_path / "full")
    prefix = copy_ckpt(tmp_path / "full")
    assert "pass config_file (CLI: --config)" in error(prefix, tmp_path / "out")
    assert re.search(
        "--teacher.? applies to TF1",
        error(os.path.join(FIX, "h5", "pretraining"), tmp_path / "out", "--teacher"),
    )
    (tmp_path / "empty").mkdir()
    assert "cannot tell the checkpoint format" in error(tmp_path / "empty", tmp_path / "x")


def test_infer_model_class():
    cfg = MobileBertConfig.from_preset("mobilebert-test")
    assert infer_model_class(["mobilebert.embeddings.x", "qa_outputs.weight", "cls.predictions.bias"]) == (
        "MobileBertForQuestionAnswering"
    )
    assert (
        infer_model_class(["cls.predictions.bias", "cls.seq_relationship.bias"]) == "MobileBertForPreTraining"
    )
    assert infer_model_class(["cls.predictions.bias"]) == "MobileBertForMaskedLM"
    assert infer_model_class(["embeddings.word_embeddings.weight"], cfg) == "MobileBertModel"
    arch = cfg.replace(extra={"architectures": ["MobileBertForTokenClassification"]})
    assert infer_model_class(["classifier.weight"], arch) == "MobileBertForTokenClassification"
