"""MobileBertConfig: HF's fields and defaults, config.json both ways, presets, invalid combinations."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mobilebert_jax import PRESETS, MobileBertConfig

transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")


def test_every_hf_field_and_default():
    ours = MobileBertConfig()
    hf = transformers.MobileBertConfig()
    for f in dataclasses.fields(ours):
        if f.name in ("extra", "id2label"):
            continue
        assert getattr(ours, f.name) == getattr(hf, f.name), f.name
    assert ours.true_hidden_size == hf.true_hidden_size == 128
    assert ours.id2label == hf.id2label


def test_config_json_round_trip_through_hf(tmp_path):
    ours = MobileBertConfig(
        num_hidden_layers=3,
        classifier_activation=False,
        id2label={0: "neg", 1: "pos", 2: "x"},
        extra={"architectures": ["MobileBertForSequenceClassification"], "my_key": [1, 2]},
    )
    ours.save(tmp_path)
    hf = transformers.MobileBertConfig.from_pretrained(tmp_path)
    assert hf.num_labels == 3 and hf.id2label == {0: "neg", 1: "pos", 2: "x"}
    assert hf.classifier_activation is False and hf.num_hidden_layers == 3
    hf.save_pretrained(tmp_path / "hf")
    back = MobileBertConfig.from_json_file(tmp_path / "hf")
    for f in dataclasses.fields(ours):
        if f.name != "extra":
            assert getattr(back, f.name) == getattr(ours, f.name), f.name
    assert back.extra["my_key"] == [1, 2]  # unknown keys survive
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["true_hidden_size"] == 128 and d["model_type"] == "mobilebert"


def test_true_hidden_size_is_derived_not_read():
    cfg = MobileBertConfig.from_dict(
        {
            "use_bottleneck": False,
            "true_hidden_size": 128,
            "hidden_size": 64,
            "intermediate_size": 64,
            "embedding_size": 64,
        }
    )
    assert cfg.true_hidden_size == 64


def test_presets():
    hub = MobileBertConfig.from_preset("mobilebert-uncased")
    assert hub.classifier_activation is False and hub.num_hidden_layers == 24
    tiny = MobileBertConfig.from_preset("mobilebert-tiny")
    assert tiny.use_bottleneck_attention and tiny.num_feedforward_networks == 2
    teacher = MobileBertConfig.from_preset("ibbert-large-teacher")
    assert (teacher.intra_bottleneck_size, teacher.hidden_size, teacher.intermediate_size) == (
        1024,
        512,
        4096,
    )
    assert teacher.normalization_type == "layer_norm" and teacher.hidden_act == "gelu"
    assert not teacher.key_query_shared_bottleneck and not teacher.hf_compatible
    assert hub.hf_compatible and tiny.hf_compatible
    assert set(PRESETS) >= {"mobilebert-uncased", "mobilebert-tiny", "ibbert-large-teacher"}
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        MobileBertConfig.from_preset("nope")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_feedforward_networks=0), "num_feedforward_networks"),
        (dict(num_attention_heads=3), "divisible"),
        (dict(normalization_type="manual_layer_norm"), "normalization_type"),
        (dict(hidden_act="mish2"), "hidden_act"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(problem_type="ranking"), "problem_type"),
        (dict(pad_token_id=40000), "pad_token_id"),
        (dict(attention_probs_dropout_prob=1.5), "attention_probs_dropout_prob"),
    ],
)
def test_invalid_combinations_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        MobileBertConfig(**kw)


def test_replace_rejects_unknown_fields_and_resets_labels():
    cfg = MobileBertConfig()
    with pytest.raises(TypeError, match="no field"):
        cfg.replace(hiden_size=3)
    assert cfg.replace(num_labels=5).id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert hash(cfg) == hash(MobileBertConfig())


def test_wrong_model_type_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match="model_type='bert'"):
        MobileBertConfig.from_dict({"model_type": "bert"})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MobileBertConfig.from_json_file(tmp_path)
