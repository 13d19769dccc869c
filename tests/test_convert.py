"""Weight port details: prefixes, tied and dead params, errors, scan layout, gradients vs PyTorch."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, perturbed_hf_model, rel_err
from test_parity import make_inputs

from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
from mobilebert_jax.checkpoints.pytorch import (
    ConversionError,
    from_pytorch,
    loop_to_scan,
    scan_to_loop,
    to_pytorch,
)

torch = pytest.importorskip("torch", reason="torch is the test reference")
CFG = MobileBertConfig(**TINY)


def _sd(class_name, config=CFG):
    return {k: v.numpy() for k, v in perturbed_hf_model(config, class_name).state_dict().items()}


def test_base_checkpoint_into_head_initialises_head_and_says_so():
    sd = _sd("MobileBertModel")
    params, report = from_pytorch(sd, CFG, "MobileBertForSequenceClassification", return_report=True)
    assert sorted(report.initialised) == ["classifier.bias", "classifier.weight"]
    np.testing.assert_array_equal(
        params["mobilebert"]["embeddings"]["word_embeddings"]["embedding"],
        sd["embeddings.word_embeddings.weight"],
    )
    assert "initialised" in report.summary()


def test_head_checkpoint_into_base_drops_head_and_says_so():
    sd = _sd("MobileBertForPreTraining")
    params, report = from_pytorch(sd, CFG, "MobileBertModel", return_report=True)
    dropped = {k for k, r in report.dropped.items() if r.startswith("head not")}
    assert "cls.predictions.dense.weight" in dropped and "cls.seq_relationship.weight" in dropped
    assert "cls.predictions.decoder.weight" in report.dropped  # the tied alias
    assert set(params) == {"embeddings", "encoder", "pooler"}
    with pytest.raises(ConversionError, match="unexpected head keys"):
        from_pytorch(sd, CFG, "MobileBertModel", strict=True)


def test_missing_unexpected_and_wrong_shape_are_named_and_nothing_loads():
    sd = _sd("MobileBertForMaskedLM")
    broken = dict(sd)
    del broken["mobilebert.encoder.layer.1.attention.self.key.bias"]
    broken["mobilebert.encoder.layer.0.attention.self.query.weight"] = np.zeros((3, 3), np.float32)
    broken["mobilebert.encoder.layer.7.output.dense.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ConversionError) as e:
        from_pytorch(broken, CFG, "MobileBertForMaskedLM")
    msg = str(e.value)
    assert "mobilebert.encoder.layer.1.attention.self.key.bias" in msg
    assert "mobilebert.encoder.layer.7.output.dense.weight" in msg
    assert "layer.0.attention.self.query.weight: checkpoint shape (3, 3), model expects (16, 16)" in msg
    assert "nothing was loaded" in msg


def test_position_ids_buffer_and_old_decoder_keys_are_accepted():
    sd = _sd("MobileBertForPreTraining")
    sd["mobilebert.embeddings.position_ids"] = np.arange(CFG.max_position_embeddings)[None]
    params, report = from_pytorch(sd, CFG, "MobileBertForPreTraining", return_report=True)
    assert report.dropped["mobilebert.embeddings.position_ids"].startswith("buffer")
    assert report.dropped["cls.predictions.decoder.bias"] == "tied alias"
    assert set(to_pytorch(params, CFG)) == set(sd) - {"mobilebert.embeddings.position_ids"}


def test_state_dict_key_counts_match_reference():
    """REFERENCE §3.a: 1123 entries for the default ForPreTraining, 1121 without the pooler; save → 1119."""
    for kw, n in ((dict(), 1123), (dict(classifier_activation=False), 1121)):
        cfg = MobileBertConfig(**kw)
        shapes = jax.eval_shape(
            lambda c=cfg: MODEL_CLASSES["MobileBertForPreTraining"](c).init(
                jax.random.key(0), input_ids=jnp.ones((1, 4), jnp.int32)
            )
        )
        params = jax.tree.map(
            lambda s: np.zeros(s.shape, np.float32), flax.linen.meta.unbox(shapes)["params"]
        )
        assert len(to_pytorch(params, cfg)) == n
        assert len(to_pytorch(params, cfg, include_tied=False)) == n - 2


@pytest.mark.parametrize("class_name", ["MobileBertForPreTraining", "MobileBertForMultipleChoice"])
def test_scanned_layers_equal_unrolled(class_name):
    sd = _sd(class_name)
    loop = from_pytorch(sd, CFG, class_name)
    scan = from_pytorch(sd, CFG, class_name, scan_layers=True)
    enc = (scan.get("mobilebert", scan))["encoder"]["layer"]
    assert enc["attention"]["self"]["query"]["kernel"].shape == (CFG.num_hidden_layers, 16, 16)
    jax.tree.map(np.testing.assert_array_equal, scan_to_loop(scan), loop)
    jax.tree.map(np.testing.assert_array_equal, loop_to_scan(loop), scan)
    inputs, _ = make_inputs(CFG, class_name)
    a = MODEL_CLASSES[class_name](CFG).apply({"params": loop}, **inputs, output_hidden_states=True)
    b = MODEL_CLASSES[class_name](CFG, scan_layers=True).apply(
        {"params": scan}, **inputs, output_hidden_states=True
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert rel_err(y, x) < 1e-6
    # to_pytorch takes either layout.
    assert all(np.array_equal(to_pytorch(scan, CFG)[k], v) for k, v in to_pytorch(loop, CFG).items())


@pytest.mark.parametrize("class_name", ["MobileBertForMaskedLM", "MobileBertForSequenceClassification"])
def test_gradients_match_pytorch(class_name):
    """Training parity: d loss / d params vs torch autograd, including PT's padding_idx behaviour
    (the pad row gets no lookup gradient, but does get one through the tied MLM decoder)."""
    cfg = CFG.replace(attention_probs_dropout_prob=0.0)
    pt = perturbed_hf_model(cfg, class_name)
    params = from_pytorch(pt.state_dict(), cfg, class_name)
    inputs, labels = make_inputs(cfg, class_name)
    out = pt(**{k: torch.tensor(v) for k, v in {**inputs, **labels}.items()})
    out.loss.backward()
    ref = {k: p.grad.numpy() for k, p in pt.named_parameters() if p.grad is not None}
    model = MODEL_CLASSES[class_name](cfg)
    grads = jax.grad(lambda p: model.apply({"params": p}, **inputs, **labels).loss)(params)
    ours = to_pytorch(grads, cfg, include_tied=False)
    pad_row = ours["mobilebert.embeddings.word_embeddings.weight"][cfg.pad_token_id]
    if class_name == "MobileBertForMaskedLM":
        assert np.abs(pad_row).max() > 0
    else:
        assert np.abs(pad_row).max() == 0
    # Key biases have an exactly-zero true gradient (softmax ignores a constant per query); both
    # sides then hold ~1e-11 rounding noise, so tensors below 1e-6 of the global scale are skipped.
    scale = max(np.abs(g).max() for g in ref.values())
    worst = max(rel_err(ours[k], g) for k, g in ref.items() if np.abs(g).max() > 1e-6 * scale)
    assert worst < 1e-4, worst  # gradients sum more terms than outputs; still 4 orders below signal


def test_pooler_weights_into_heads_without_pooler_are_dropped_as_hf_does():
    sd = _sd("MobileBertForPreTraining")  # default config: has pooler.dense
    params, report = from_pytorch(
        sd, CFG.replace(num_labels=2), "MobileBertForQuestionAnswering", return_report=True
    )
    assert report.dropped["mobilebert.pooler.dense.weight"].startswith("pooler not used")
    assert sorted(report.initialised) == ["qa_outputs.bias", "qa_outputs.weight"]
    assert float(np.abs(params["qa_outputs"]["bias"]).max()) == 0.0  # HF init: zero bias, N(0, 0.02) kernel
    assert 0.005 < float(np.std(params["qa_outputs"]["kernel"])) < 0.05


def test_abstract_params_of_unrolled_model_equal_a_real_init():
    from mobilebert_jax.checkpoints.pytorch import abstract_params

    for name in ("MobileBertForPreTraining", "MobileBertForMultipleChoice"):
        model = MODEL_CLASSES[name](CFG)
        real = flax.linen.meta.unbox(
            model.init(
                jax.random.key(0), input_ids=jnp.ones((1, 2, 8) if "Multiple" in name else (1, 8), jnp.int32)
            )
        )["params"]
        fast = abstract_params(model)
        assert jax.tree.structure(fast) == jax.tree.structure(real)
        assert all(
            jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, fast, real))
        )
