"""Shared test helpers: HF reference models with perturbed weights, relative error, opt-in slow tests."""

from __future__ import annotations

import os

import numpy as np
import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


# `scripts/test.sh` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: each test file is one unit
# of work (module fixtures are built once), handed out in collection order. The longest units go first,
# so that no long file starts last and runs alone; the rest keep their order.
LONGEST_FIRST = (
    "test_recipes_distillation.py",
    "test_trainer.py",
    "test_export.py",
    "test_cli.py",
    "test_recipes.py",
    "test_recipes_tasks.py",
    "test_distill.py",
    "test_pretraining_data.py",
)


def _rank(item) -> int:
    name = os.path.basename(str(item.path))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: collection order within a rank
    if config.getoption("--runslow") or os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def rel_err(ours, ref) -> float:
    """max|a - b| / max|b|: MobileBERT activations span 1e0..1e8, so errors are relative to the scale."""
    a = np.asarray(ours, np.float64)
    b = np.asarray(ref, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference {b.shape}"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def save_random_pretraining_model(folder: str, config, seed: int = 0) -> None:
    """An HF-format `MobileBertForPreTraining` folder with BERT's init (normal(0.02) matrices, zero biases,
    unit norm scales) drawn in numpy: a jitted init costs seconds of compile on a loaded CPU; the shapes
    come from tracing alone."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mobilebert_jax.checkpoints.hub import save_pretrained
    from mobilebert_jax.model.heads import MobileBertForPreTraining
    from mobilebert_jax.training.optim import path_str

    model = MobileBertForPreTraining(config)
    ids = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), input_ids=ids))["params"])
    r = np.random.default_rng(seed)

    def init(path, x):
        if path_str(path).rsplit("/", 1)[-1] == "bias":
            return np.zeros(x.shape, np.float32)
        if len(x.shape) == 1:  # LayerNorm scale, NoNorm weight
            return np.ones(x.shape, np.float32)
        return r.normal(0.0, 0.02, x.shape).astype(np.float32)

    save_pretrained(
        folder, jax.tree_util.tree_map_with_path(init, shapes), config, "MobileBertForPreTraining"
    )


def hf_config(config, attn="eager"):
    """The transformers config equal to ours (via HF's own config.json reader)."""
    transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")
    hf = transformers.MobileBertConfig.from_dict(config.to_dict())
    hf._attn_implementation = attn
    return hf


def perturbed_hf_model(config, class_name: str, seed: int = 0, scale: float = 0.1):
    """An HF PyTorch model with every parameter perturbed (NoNorm weights != 1, biases != 0).

    24 layers with 0.1 noise overflow float32 in HF itself; full-size tests use `scale=0.02`.
    """
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(hf_config(config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


TINY = dict(
    vocab_size=99,
    embedding_size=16,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    intra_bottleneck_size=16,
    max_position_embeddings=32,
    num_labels=3,
)

# eight short movie-review sentences, positive and negative alternating (label i % 2)
SENTIMENT_SENTENCES = [
    "the film was a delight from start to finish",
    "a dull , lifeless and overlong mess",
    "brilliant acting and a sharp script",
    "i wanted my two hours back",
    "warm , funny and wise",
    "nothing works here at all",
    "a moving portrait of a family",
    "tedious beyond belief",
]
