"""`pad_invariant`: each text's outputs in a padded batch equal HF PyTorch's on that text alone, unpadded.

MobileBERT's trigram embedding puts the [PAD] row next to a text's last real token, so on a model whose
[PAD] row is not zero the padding changes every output (HF too: huggingface/transformers #7070, #9860).
With `model.clone(pad_invariant=True)` the word embeddings at padded positions are zeroed before the
trigram. The reference is HF PyTorch run on each text alone, unpadded; with the option off our padded
outputs equal HF's padded outputs (today's parity) and differ from the unpadded ones. Weights are
perturbed (the [PAD] row too); tolerance 1e-5 relative, per text, in float32 on CPU (measured: option on
vs HF unpadded <= 4.8e-7, option off vs HF padded <= 6.6e-7; off vs HF unpadded >= 4.0e-3 for every
class and field).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, perturbed_hf_model, rel_err

from mobilebert_jax import MODEL_CLASSES, MobileBertConfig
from mobilebert_jax.checkpoints.pytorch import from_pytorch

torch = pytest.importorskip("torch", reason="torch is the test reference")

TOL = 1e-5
LEAK = 1e-3  # with the option off, the padded outputs must be at least this far from the unpadded ones
PAD_LEN = 24  # every batch is padded to this length (longer than the longest text): each row has padding
CONFIG = MobileBertConfig(**dict(TINY, max_position_embeddings=128))
# per class: output field -> whether it is per token ([B, T, ...], compared at the real positions)
FIELDS = {
    "MobileBertModel": {"last_hidden_state": True, "pooler_output": False},
    "MobileBertForSequenceClassification": {"logits": False},
    "MobileBertForMaskedLM": {"logits": True},
    "MobileBertForQuestionAnswering": {"start_logits": True, "end_logits": True},
    "MobileBertForTokenClassification": {"logits": True},
}


def _config(class_name: str) -> MobileBertConfig:
    return CONFIG.replace(num_labels=2) if class_name == "MobileBertForQuestionAnswering" else CONFIG


def _texts(n: int = 32, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` (ids, token types) pairs of mixed lengths 3..20, no [PAD] id inside; types 0 then 1."""
    rs = np.random.RandomState(seed)
    lengths = np.concatenate([[3, 20], rs.randint(3, 21, n - 2)])
    out = []
    for t in lengths:
        ids = rs.randint(1, CONFIG.vocab_size, t)
        types = (np.arange(t) >= t // 2).astype(np.int64)
        out.append((ids, types))
    return out


TEXTS = _texts()


def _batch(texts, length: int = PAD_LEN) -> dict[str, np.ndarray]:
    """Right-padded [B, length] input_ids ([PAD]), attention_mask and token_type_ids."""
    b = len(texts)
    ids = np.full((b, length), CONFIG.pad_token_id, np.int64)
    mask = np.zeros((b, length), np.int64)
    types = np.zeros((b, length), np.int64)
    for i, (t_ids, t_types) in enumerate(texts):
        n = len(t_ids)
        ids[i, :n], mask[i, :n], types[i, :n] = t_ids, 1, t_types
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def _hf(pt, inputs: dict[str, np.ndarray], fields) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = pt(**{k: torch.tensor(v) for k, v in inputs.items()})
    return {f: getattr(out, f).numpy() for f in fields}


def _ours(model, params, inputs: dict[str, np.ndarray], fields) -> dict[str, np.ndarray]:
    out = model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()})
    return {f: np.asarray(getattr(out, f)) for f in fields}


def _per_text(outputs: dict[str, np.ndarray], texts, fields) -> list[dict[str, np.ndarray]]:
    """Batch outputs split into one dict per text, per-token fields cut to the text's real positions."""
    return [
        {f: outputs[f][i, : len(ids)] if per_token else outputs[f][i] for f, per_token in fields.items()}
        for i, (ids, _) in enumerate(texts)
    ]


def _max_err(ours: list[dict], ref: list[dict]) -> dict[str, float]:
    return {f: max(rel_err(o[f], r[f]) for o, r in zip(ours, ref)) for f in ref[0]}


@pytest.fixture(scope="module", params=sorted(FIELDS))
def case(request):
    """(class name, HF model, our params, HF's outputs on each text alone, unpadded)."""
    class_name = request.param
    config = _config(class_name)
    pt = perturbed_hf_model(config, class_name, seed=sorted(FIELDS).index(class_name))
    pad_row = pt.base_model.embeddings.word_embeddings.weight[0].detach()
    assert float(pad_row.abs().max()) > 0.01, "the test needs a non-zero [PAD] embedding row"
    params = from_pytorch(pt.state_dict(), config, class_name)
    fields = FIELDS[class_name]
    unpadded = []
    for ids, types in TEXTS:
        inputs = dict(input_ids=ids[None], token_type_ids=types[None], attention_mask=np.ones((1, len(ids))))
        unpadded.append({f: v[0] for f, v in _hf(pt, inputs, fields).items()})
    return class_name, pt, params, unpadded


@pytest.mark.parametrize("batch_size", [1, 8, 32])
def test_padded_batches_equal_unpadded_hf(case, batch_size):
    class_name, pt, params, unpadded = case
    fields = FIELDS[class_name]
    model = MODEL_CLASSES[class_name](_config(class_name))
    on_model = model.clone(pad_invariant=True)
    # batch size 1: the first 8 texts (all lengths 3 and 20 included), one per call; else all 32
    texts = TEXTS[:8] if batch_size == 1 else TEXTS
    on, off, hf_padded = [], [], []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        inputs = _batch(chunk)
        on += _per_text(_ours(on_model, params, inputs, fields), chunk, fields)
        off += _per_text(_ours(model, params, inputs, fields), chunk, fields)
        hf_padded += _per_text(_hf(pt, inputs, fields), chunk, fields)
    ref = unpadded[: len(texts)]
    errs = _max_err(on, ref)
    assert all(e <= TOL for e in errs.values()), f"pad_invariant vs HF unpadded, per text: {errs}"
    errs = _max_err(off, hf_padded)
    assert all(e <= TOL for e in errs.values()), f"option off vs HF on the padded batch: {errs}"
    leaks = _max_err(off, ref)
    assert all(e > LEAK for e in leaks.values()), f"with the option off, padding must change outputs: {leaks}"


@pytest.mark.parametrize(
    "variant",
    [
        dict(unroll_layers=True),
        dict(unroll_layers=False),  # the layer/{i} params stacked and scanned inside apply
        dict(scan_layers=True),  # the stacked param layout
        dict(attention_implementation="blockwise", length=128),
        dict(attention_implementation="xla"),
        dict(inputs_embeds=True),
    ],
    ids=["unrolled", "scanned", "scan_layers", "blockwise", "xla", "inputs_embeds"],
)
def test_layer_loops_and_attention_paths(variant):
    """The option holds on every layer loop and attention kernel (jitted, as they run), and for
    `inputs_embeds` (the pre-trigram embeddings; zeroed at padded positions too)."""
    variant = dict(variant)
    length = variant.pop("length", PAD_LEN)
    use_embeds = variant.pop("inputs_embeds", False)
    fields = FIELDS["MobileBertModel"]
    pt = perturbed_hf_model(CONFIG, "MobileBertModel", seed=7)
    scan = variant.get("scan_layers", False)
    params = from_pytorch(pt.state_dict(), CONFIG, "MobileBertModel", scan_layers=scan)
    model = MODEL_CLASSES["MobileBertModel"](CONFIG, **variant, pad_invariant=True)
    texts = TEXTS[:8]
    inputs = _batch(texts, length)
    if use_embeds:
        table = pt.embeddings.word_embeddings.weight.detach().numpy()
        inputs["inputs_embeds"] = table[inputs.pop("input_ids")]
    out = jax.jit(lambda p, x: model.apply({"params": p}, **x))(params, inputs)
    ours = _per_text({f: np.asarray(getattr(out, f)) for f in fields}, texts, fields)
    ref = []
    for ids, types in texts:
        one = dict(input_ids=ids[None], token_type_ids=types[None], attention_mask=np.ones((1, len(ids))))
        ref.append({f: v[0] for f, v in _hf(pt, one, fields).items()})
    errs = _max_err(ours, ref)
    assert all(e <= TOL for e in errs.values()), f"{variant}: pad_invariant vs HF unpadded, per text: {errs}"
