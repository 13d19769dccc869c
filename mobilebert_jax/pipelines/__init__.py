"""`pipeline(task, model)`: text in, answers out, on JAX or on an exported LiteRT / ONNX model.

    pipe = mobilebert_jax.pipeline("text-classification", "runs/sst2/hf_model")
    pipe(["a gripping film", "dull and far too long"])   # [{"label": ..., "score": ...}, ...]
    qa = mobilebert_jax.pipeline("question-answering", "runs/squad/hf_model")
    qa(question="Who wrote it?", context=long_text)       # {"score", "start", "end", "answer"}

Tasks: fill-mask, text-classification (alias sentiment-analysis), token-classification (alias ner),
question-answering, feature-extraction. The pre- and post-processing is the same whatever backend
runs the model; see `base.py` for batching and `backends.py` for the backends.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mobilebert_jax import storage
from mobilebert_jax.pipelines.backends import Backend, JaxBackend, LiteRtBackend, OnnxBackend
from mobilebert_jax.pipelines.base import DEFAULT_BUCKETS, Pipeline, length_buckets
from mobilebert_jax.pipelines.feature_extraction import FeatureExtractionPipeline
from mobilebert_jax.pipelines.fill_mask import FillMaskPipeline
from mobilebert_jax.pipelines.question_answering import QuestionAnsweringPipeline
from mobilebert_jax.pipelines.text_classification import TextClassificationPipeline
from mobilebert_jax.pipelines.token_classification import TokenClassificationPipeline

# task -> (pipeline class, model class it runs)
TASKS: dict[str, tuple[type[Pipeline], str]] = {
    "fill-mask": (FillMaskPipeline, "MobileBertForMaskedLM"),
    "text-classification": (TextClassificationPipeline, "MobileBertForSequenceClassification"),
    "token-classification": (TokenClassificationPipeline, "MobileBertForTokenClassification"),
    "question-answering": (QuestionAnsweringPipeline, "MobileBertForQuestionAnswering"),
    "feature-extraction": (FeatureExtractionPipeline, "MobileBertModel"),
}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
BACKENDS = ("jax", "litert", "onnx")


def _user_tokenizer(tokenizer: Any):
    """The `tokenizer=` argument: a tokenizer object as given, a directory or hub id read; None stays None."""
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    return MobileBertTokenizer.from_pretrained(os.fspath(tokenizer))


def _jax_model(model: Any, model_class: str, dtype: Any, scan_layers: bool, config_overrides: dict[str, Any]):
    """(model, params, tokenizer or None, whether that is the packaged stand-in) from a (model, params) pair, or anything `load_model` reads
    (a preset, an HF directory, a checkpoint, a hub id)."""
    from mobilebert_jax.checkpoints.loader import load_model

    if isinstance(model, (tuple, list)) and len(model) == 2:
        module, params = model
        if not hasattr(module, "config") or not hasattr(module, "apply"):
            raise TypeError(f"model=(module, params): {type(module).__name__} is not a mobilebert_jax model")
        return module, params, None, False
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be an HF directory, a preset, a hub id or a (model, params) pair, got {type(model).__name__}"
        )
    loaded = load_model(model, model_class, init=False, **config_overrides)
    module, params = loaded.build(dtype=dtype, scan_layers=scan_layers)
    return module, params, loaded.tokenizer, loaded.packaged_tokenizer


def pipeline(
    task: str,
    model: Any,
    tokenizer: Any = None,
    *,
    backend: str | None = None,
    batch_size: int = 8,
    buckets: Sequence[int] | None = None,
    device: Any = None,
    dtype: Any = None,
    scan_layers: bool = True,
    progress: bool | None = None,
    config_overrides: dict[str, Any] | None = None,
    **defaults: Any,
) -> Pipeline:
    """A pipeline for `task` on `model`.

    Args:
        task: "fill-mask", "text-classification" ("sentiment-analysis"), "token-classification"
            ("ner"), "question-answering" or "feature-extraction".
        model: backend "jax": an HF directory, a preset (random weights), a hub id, or a
            `(model, params)` pair; "litert" / "onnx": an export directory (`model.tflite` /
            `model.onnx` beside `config.json` and the tokenizer files) or the artifact itself.
        tokenizer: a `MobileBertTokenizer` or a directory; default: the model directory's, else the
            uncased vocab shipped in the package.
        backend: "jax", "litert" or "onnx"; default: an export directory's format (its export.json),
            else "jax".
        batch_size: rows per forward pass.
        buckets: sequence lengths batches are padded to (default every 8 tokens to 64, then 96, 128, 192, 256,
            384, 512).
        device: a `jax.Device` for the JAX backend (default: JAX's default device).
        dtype: compute dtype of the JAX model (e.g. jnp.bfloat16); default float32.
        scan_layers: build a model loaded here with its layers in one `nn.scan` (compiles once per
            shape in seconds instead of minutes for 24 layers, and runs faster on CPU; docs/benchmarks.md).
        progress: show a progress bar (default: for long inputs).
        config_overrides: config fields for a preset or directory (e.g. {"vocab_size": 30522}).
        **defaults: default call parameters of the task (top_k, aggregation_strategy, ...).
    """
    from mobilebert_jax.checkpoints.loader import check_vocab, load_tokenizer, tokenizer_folder
    from mobilebert_jax.model.config import MobileBertConfig

    if isinstance(model, (str, os.PathLike)) and storage.is_url(model):  # a local copy of its model folder
        from mobilebert_jax.checkpoints.loader import model_folder

        model = model_folder(model)
    task = ALIASES.get(task, task)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)} (aliases {sorted(ALIASES)})")
    if backend is None:
        from mobilebert_jax.checkpoints.formats import export_format

        backend = export_format(model) or "jax"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    cls, model_class = TASKS[task]
    tok = _user_tokenizer(tokenizer)
    packaged = False  # the packaged vocab standing in for a checkpoint's missing tokenizer files
    if backend == "jax":
        module, params, model_tok, model_packaged = _jax_model(
            model, model_class, dtype, scan_layers, dict(config_overrides or {})
        )
        runner: Backend = JaxBackend(module, params, device=device)
        config = module.config
        if tok is None:
            tok = model_tok if model_tok is not None else load_tokenizer(None)
            packaged = model_packaged
    else:
        path = os.fspath(model)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        config = MobileBertConfig.from_json_file(
            os.path.join(folder, "config.json"), **(config_overrides or {})
        )
        runner_cls = LiteRtBackend if backend == "litert" else OnnxBackend
        runner = runner_cls(path, pad_token_id=config.pad_token_id)
        if tok is None:
            tok, packaged = load_tokenizer(folder), tokenizer_folder(folder) is None
    check_vocab(tok, config, packaged)  # ids past the embedding table would be filled silently inside jit
    defaults = {**cls.config_defaults(config), **defaults}  # the fine-tune's settings, unless given
    return cls(runner, tok, config, batch_size=batch_size, buckets=buckets, progress=progress, **defaults)


__all__ = [
    "pipeline",
    "TASKS",
    "Pipeline",
    "Backend",
    "JaxBackend",
    "LiteRtBackend",
    "OnnxBackend",
    "DEFAULT_BUCKETS",
    "length_buckets",
    "FillMaskPipeline",
    "TextClassificationPipeline",
    "TokenClassificationPipeline",
    "QuestionAnsweringPipeline",
    "FeatureExtractionPipeline",
]
