"""Every class × the issue's configs: outputs, hidden states, attentions and losses vs HF PyTorch.

Weights are random and perturbed (NoNorm weights != 1, biases != 0); the batch is padded and has
token types. Tolerance: 1e-5 relative (max|a-b| / max|b|) in float32 on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, perturbed_hf_model, rel_err

from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
from mobilebert_jax.checkpoints.pytorch import from_pytorch, to_pytorch

torch = pytest.importorskip("torch", reason="torch is the test reference")

TOL = 1e-5
CONFIGS = {
    "default": {},
    "hub_like": dict(classifier_activation=False),
    "layernorm_gelu": dict(normalization_type="layer_norm", hidden_act="gelu"),
    "tiny": dict(
        use_bottleneck_attention=True, num_feedforward_networks=2, key_query_shared_bottleneck=False
    ),
    "tiny_kq_shared": dict(use_bottleneck_attention=True, num_feedforward_networks=2),  # HF's dead params
    "no_trigram": dict(trigram_input=False),
    "no_bottleneck": dict(use_bottleneck=False, num_feedforward_networks=1),
}
OUTPUT_FIELDS = (
    "last_hidden_state",
    "pooler_output",
    "prediction_logits",
    "seq_relationship_logits",
    "logits",
    "start_logits",
    "end_logits",
    "loss",
)


def make_inputs(config: MobileBertConfig, class_name: str, B: int = 3, T: int = 10, seed: int = 0):
    """A padded batch with token types, plus the labels the class takes (with ignored entries)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(1, config.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, 6:] = 0
    ids[1, 6:] = config.pad_token_id
    mask[2, 8:] = 0
    ids[2, 8:] = config.pad_token_id
    tt = np.zeros((B, T), np.int64)
    tt[:, 5:] = 1
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    labels: dict[str, np.ndarray] = {}
    tok_labels = rs.randint(0, config.vocab_size, (B, T))
    tok_labels[rs.rand(B, T) < 0.4] = -100
    if class_name == "MobileBertForPreTraining":
        labels = dict(labels=tok_labels, next_sentence_label=rs.randint(0, 2, (B,)))
    elif class_name == "MobileBertForMaskedLM":
        labels = dict(labels=tok_labels)
    elif class_name == "MobileBertForNextSentencePrediction":
        labels = dict(labels=rs.randint(0, 2, (B,)))
    elif class_name == "MobileBertForSequenceClassification":
        labels = dict(labels=rs.randint(0, config.num_labels, (B,)))
    elif class_name == "MobileBertForTokenClassification":
        lab = rs.randint(0, config.num_labels, (B, T))
        lab[mask == 0] = -100
        labels = dict(labels=lab)
    elif class_name == "MobileBertForQuestionAnswering":
        # One position beyond the sequence: HF clamps it to T and ignores it.
        labels = dict(start_positions=np.array([1, 3, T + 5]), end_positions=np.array([2, 5, 7]))
    elif class_name == "MobileBertForMultipleChoice":
        C = 2
        inputs = {k: np.stack([v, np.roll(v, 1, axis=0)], axis=1) for k, v in inputs.items()}  # [B, C, T]
        labels = dict(labels=rs.randint(0, C, (B,)))
    return inputs, labels


def run_both(config: MobileBertConfig, class_name: str, seed: int = 0, scale: float = 0.1, **call):
    pt = perturbed_hf_model(config, class_name, seed, scale)
    params = from_pytorch(pt.state_dict(), config, class_name)
    inputs, labels = make_inputs(config, class_name, seed=seed)
    with torch.no_grad():
        ref = pt(**{k: torch.tensor(v) for k, v in {**inputs, **labels}.items()}, **call)
    ours = MODEL_CLASSES[class_name](config).apply({"params": params}, **inputs, **labels, **call)
    return pt, params, ref, ours


def compare(ref, ours):
    errs = {}
    for f in OUTPUT_FIELDS:
        r = getattr(ref, f, None)
        if r is None:
            assert getattr(ours, f, None) is None, f"{f}: HF gives None, ours does not"
            continue
        o = getattr(ours, f)
        assert o is not None, f"{f}: HF gives a value, ours None"
        errs[f] = rel_err(o, r.numpy())
    if getattr(ref, "hidden_states", None):
        assert len(ours.hidden_states) == len(ref.hidden_states)
        errs["hidden_states"] = max(
            rel_err(o, r.numpy()) for o, r in zip(ours.hidden_states, ref.hidden_states)
        )
    if getattr(ref, "attentions", None):
        assert len(ours.attentions) == len(ref.attentions)
        errs["attentions"] = max(rel_err(o, r.numpy()) for o, r in zip(ours.attentions, ref.attentions))
    return errs


@pytest.mark.parametrize("class_name", sorted(MODEL_CLASSES))
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_parity_with_hf(config_name, class_name):
    kw = dict(TINY, **CONFIGS[config_name])
    if class_name == "MobileBertForQuestionAnswering":
        kw["num_labels"] = 2
    config = MobileBertConfig(**kw)
    pt, params, ref, ours = run_both(config, class_name, output_hidden_states=True, output_attentions=True)
    errs = compare(ref, ours)
    assert "hidden_states" in errs and "attentions" in errs
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad} (all: {errs})"
    # PT → Flax → PT is bit-exact, key for key.
    sd = pt.state_dict()
    back = to_pytorch(params, config)
    assert set(back) == set(sd)
    if config_name != "tiny_kq_shared":  # HF's unused bottleneck.attention params come back as zeros
        for k, v in sd.items():
            np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_full_size_default_config():
    """The real MobileBERT size (24 layers, H=512, V=30522) once, through the pretraining heads."""
    config = MobileBertConfig()
    pt, params, ref, ours = run_both(
        config, "MobileBertForPreTraining", scale=0.02, output_hidden_states=True
    )
    errs = compare(ref, ours)
    assert all(v <= TOL for v in errs.values()), errs
    assert len(pt.state_dict()) == 1123  # REFERENCE §3.a


def test_hidden_state_magnitudes_need_relative_tolerance():
    """Guards the metric itself: a wrong trigram order must fail the same comparison."""
    config = MobileBertConfig(**TINY)
    pt = perturbed_hf_model(config, "MobileBertModel")
    params = from_pytorch(pt.state_dict(), config, "MobileBertModel")
    inputs, _ = make_inputs(config, "MobileBertModel")
    with torch.no_grad():
        ref = pt(**{k: torch.tensor(v) for k, v in inputs.items()}).last_hidden_state.numpy()
    # Swap next/previous blocks of the projection: the model then sees [t-1, t, t+1].
    E = config.embedding_size
    k = np.asarray(params["embeddings"]["embedding_transformation"]["kernel"])
    swapped = np.concatenate([k[2 * E :], k[E : 2 * E], k[:E]])
    bad = dict(
        params,
        embeddings=dict(
            params["embeddings"],
            embedding_transformation={
                "kernel": swapped,
                "bias": params["embeddings"]["embedding_transformation"]["bias"],
            },
        ),
    )
    out = MODEL_CLASSES["MobileBertModel"](config).apply({"params": bad}, **inputs).last_hidden_state
    assert rel_err(out, ref) > 1e-3
