"""What every pipeline shares: input forms, streaming, length-bucketed batching, the progress bar.

A pipeline turns each input into one or more *features* (token rows; QA makes one per doc-stride
window), runs the features through its backend in batches, and turns each input's outputs into an
answer. Batches are formed in chunks of the stream: the features of `batch_size * chunk_batches`
consecutive inputs are sorted by length, cut into batches, and for the JAX backend each batch is padded
to the smallest length bucket that holds it and to `batch_size` rows, so a stream of varied lengths
compiles one shape per bucket it uses (`len(buckets)` at most), each once. LiteRT pads to its
`seq_N` signatures (the buckets); ONNX Runtime takes each batch at its longest row.

Padding is invisible to the results: MobileBERT's trigram embedding would put the `[PAD]` row next to
the last real token (HF #9860), so the JAX backend runs the model with `pad_invariant` and the exported
graphs are built with it (`export(..., pad_invariant=True)`, the default): each text's answer is HF's
on that text alone, unpadded, whatever the bucket, batch and `[PAD]` row.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mobilebert_jax.export.runtime import Runtime
from mobilebert_jax.pipelines.backends import Backend

# Every 8 tokens to 64 (most sentences), then steps of at most 1.5x: padding costs as much as text on
# the CPU, a compile is paid once per bucket used (docs/benchmarks.md, Pipelines).
DEFAULT_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 96, 128, 192, 256, 384, 512)
Feature = dict[str, Any]  # input_ids, attention_mask, token_type_ids: int32 [n]; bookkeeping keys


def length_buckets(max_length: int, buckets: Sequence[int] | None = None) -> tuple[int, ...]:
    """Sorted bucket lengths <= max_length, with max_length itself as the last bucket."""
    chosen = sorted({int(b) for b in (buckets or DEFAULT_BUCKETS) if 0 < int(b) <= max_length})
    if not chosen or chosen[-1] != max_length:
        chosen.append(max_length)
    return tuple(chosen)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """HF's numpy softmax (max-shifted, float32 in, float32 out)."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class Pipeline:
    """Base class. Subclasses define `task`, `_features` (a chunk of inputs to features per input)
    and `_answer` (one input's features and outputs to its answer); `__call__` does the rest.

    Args:
        backend: runs the model (`JaxBackend`, `LiteRtBackend`, `OnnxBackend`).
        tokenizer: a `MobileBertTokenizer`.
        config: the model's `MobileBertConfig` (labels, problem type, pad id).
        batch_size: rows per forward pass (a smaller last batch is padded to it).
        buckets: sequence lengths to pad to (default: 16, 32, ..., 512 up to the model's length; the
            exported signatures for LiteRT).
        chunk_batches: batches' worth of inputs sorted by length together.
        progress: a tqdm bar: True, False, or None (on for more than `4 * batch_size` inputs, and for
            iterables of unknown length).
        **defaults: default call parameters of the task (e.g. `top_k`).
    """

    task = ""
    call_parameters: tuple[str, ...] = ()
    per_token: tuple[str, ...] = ()  # outputs [B, T, ...] (cut to each feature's length); others [B, ...]

    # truncate at the `max_seq_length` a fine-tune saved in config.json (QA sets its own window length)
    caps_at_saved_length: bool = True

    def __init__(
        self,
        backend: Backend | Runtime,
        tokenizer: Any,
        config: Any,
        *,
        batch_size: int = 8,
        buckets: Sequence[int] | None = None,
        chunk_batches: int = 8,
        progress: bool | None = None,
        **defaults: Any,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.batch_size = batch_size
        self.chunk_batches = max(1, int(chunk_batches))
        self.progress = progress
        self.max_length = int(min(tokenizer.model_max_length, backend.max_length))
        if self.caps_at_saved_length and config.saved_max_seq_length is not None:
            # a fine-tune's length (config.json): inputs are cut where its evaluation cut them
            self.max_length = min(self.max_length, config.saved_max_seq_length)
        self.buckets = backend.lengths or length_buckets(self.max_length, buckets)
        self.max_length = min(self.max_length, self.buckets[-1])
        self.defaults = self._check_parameters(defaults)

    # ----------------------------------------------------------------------------- subclass hooks
    @classmethod
    def config_defaults(cls, config: Any) -> dict[str, Any]:
        """Call parameters the model's config.json implies (a fine-tune's saved settings); flags win."""
        return {}

    def _check_parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        bad = sorted(set(params) - set(self.call_parameters))
        if bad:
            raise TypeError(f"{self.task}: unknown parameter(s) {bad}; known: {sorted(self.call_parameters)}")
        return dict(params)

    def _validate(self, item: Any, index: int) -> Any:
        """One input, checked and normalised (raise TypeError/ValueError naming `index`)."""
        return item

    def _features(self, items: list[Any], params: dict[str, Any]) -> list[list[Feature]]:
        raise NotImplementedError

    def _answer(self, item: Any, features: list[Feature], outputs: list[dict[str, np.ndarray]], params):
        raise NotImplementedError

    def _is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, str)

    def _wrap_single(self, inputs: Any, answer: Any, params: dict[str, Any]) -> Any:
        return answer

    # ----------------------------------------------------------------------------------- running
    def __call__(self, inputs: Any, **params: Any) -> Any:
        """Answers for one input, a list (a list back) or any other iterable (an iterator back, streamed).

        Keyword arguments override the pipeline's defaults for this call.
        """
        params = {**self.defaults, **self._check_parameters(params)}
        if self._is_single(inputs):
            return self._wrap_single(inputs, next(self._stream([inputs], params, total=1)), params)
        if isinstance(inputs, (list, tuple)):
            return list(self._stream(inputs, params, total=len(inputs)))
        if isinstance(inputs, Iterable) and not isinstance(inputs, (bytes, Mapping)):
            return self._stream(inputs, params, total=None)
        raise TypeError(
            f"{self.task}: inputs must be a str, a list or an iterable of inputs, got {type(inputs).__name__}"
        )

    def stream(self, inputs: Iterable[Any], **params: Any) -> Iterator[Any]:
        """Answers as an iterator, produced chunk by chunk (a list's length sizes the progress bar)."""
        params = {**self.defaults, **self._check_parameters(params)}
        return self._stream(inputs, params, total=len(inputs) if hasattr(inputs, "__len__") else None)

    def _stream(self, inputs: Iterable[Any], params: dict[str, Any], total: int | None) -> Iterator[Any]:
        show = self.progress if self.progress is not None else (total is None or total > 4 * self.batch_size)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=self.task, unit="ex", dynamic_ncols=True)
        it = iter(inputs)
        index = 0
        chunk_size = self.batch_size * self.chunk_batches
        try:
            while True:
                raw = list(itertools.islice(it, chunk_size))
                if not raw:
                    break
                items = [self._validate(x, index + k) for k, x in enumerate(raw)]
                feats = self._features(items, params)
                outs = self._forward([f for fs in feats for f in fs])
                pos = 0
                for item, fs in zip(items, feats):
                    yield self._answer(item, fs, outs[pos : pos + len(fs)], params)
                    pos += len(fs)
                index += len(raw)
                if bar is not None:
                    bar.update(len(raw))
        finally:
            if bar is not None:
                bar.close()

    def _forward(self, features: list[Feature]) -> list[dict[str, np.ndarray]]:
        """Model outputs per feature, per-token outputs cut to the feature's length."""
        if not features:
            return []
        lengths = np.array([len(f["input_ids"]) for f in features])
        if lengths.max() > self.max_length:
            raise ValueError(
                f"{self.task}: a feature of {lengths.max()} tokens > max length {self.max_length}"
            )
        order = np.argsort(lengths, kind="stable")
        results: list[dict[str, np.ndarray] | None] = [None] * len(features)
        pad = int(self.tokenizer.pad_token_id)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            longest = int(lengths[idx].max())
            if self.backend.compiles_per_shape or self.backend.lengths:
                t = next(b for b in self.buckets if b >= longest)
            else:  # a dynamic-shape runtime: no bucket needed
                t = longest
            # One row count for JAX: compiling a shape costs more than a few padding rows.
            rows = self.batch_size if self.backend.compiles_per_shape else len(idx)
            ids = np.full((rows, t), pad, np.int32)
            mask = np.zeros((rows, t), np.int32)
            types = np.zeros((rows, t), np.int32)
            mask[len(idx) :, 0] = 1  # padding rows: one visible token keeps the softmax defined
            for r, i in enumerate(idx):
                n = lengths[i]
                ids[r, :n] = features[i]["input_ids"]
                mask[r, :n] = features[i]["attention_mask"]
                types[r, :n] = features[i]["token_type_ids"]
            out = self.backend(ids, mask, types)
            for r, i in enumerate(idx):
                n = lengths[i]
                results[i] = {k: (v[r, :n] if k in self.per_token else v[r]) for k, v in out.items()}
        return results  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(backend={self.backend.name!r}, batch_size={self.batch_size}, "
            f"buckets={self.buckets})"
        )


def encode_rows(tokenizer: Any, texts: list[str], pairs: list[str] | None = None, **kw: Any) -> list[Feature]:
    """Tokenize a batch without padding, truncated to `max_length`; one feature dict of 1-D arrays a row."""
    enc = tokenizer(texts, pairs, padding=False, truncation=True, return_tensors="np", **kw)
    n = len(texts)
    rows = []
    for i in range(n):
        rows.append({k: np.asarray(v[i]) for k, v in enc.items()})
    return rows
