"""mobilebert-jax: MobileBERT in JAX/Flax, numerically equal to HF transformers' PyTorch MobileBERT."""

from mobilebert_jax.checkpoints.hub import from_pretrained, save_pretrained
from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.heads import (
    MODEL_CLASSES,
    MobileBertForMaskedLM,
    MobileBertForMultipleChoice,
    MobileBertForNextSentencePrediction,
    MobileBertForPreTraining,
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
    MobileBertModel,
    init_params,
)
from mobilebert_jax.text.tokenizer import MobileBertTokenizer


def pipeline(task: str, model, tokenizer=None, **kwargs):
    """`mobilebert_jax.pipelines.pipeline` (imported on first use): text in, answers out."""
    from mobilebert_jax.pipelines import pipeline as _pipeline

    return _pipeline(task, model, tokenizer, **kwargs)


def __getattr__(name: str):
    # The training engine loads on first use, so `import mobilebert_jax.pipelines` stays free of it.
    if name == "tune_host_allocator":
        from mobilebert_jax.training.host_allocator import tune_host_allocator

        return tune_host_allocator
    raise AttributeError(f"module 'mobilebert_jax' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "MODEL_CLASSES",
    "MobileBertConfig",
    "MobileBertModel",
    "MobileBertForPreTraining",
    "MobileBertForMaskedLM",
    "MobileBertForNextSentencePrediction",
    "MobileBertForSequenceClassification",
    "MobileBertForMultipleChoice",
    "MobileBertForTokenClassification",
    "MobileBertForQuestionAnswering",
    "init_params",
    "from_pretrained",
    "save_pretrained",
    "MobileBertTokenizer",
    "pipeline",
    "tune_host_allocator",
]
