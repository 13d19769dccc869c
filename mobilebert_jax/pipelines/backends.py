"""Where a pipeline's forward pass runs: JAX (jit, one compiled function per shape), LiteRT or ONNX Runtime.

Every backend is a callable with one interface, so the pre- and post-processing of a pipeline is the
same code whatever runs the model:

    outputs = backend(input_ids, attention_mask, token_type_ids)   # int32 numpy [B, T] each
    outputs["logits"]                                              # numpy float32, HF field names

Rows past the real batch and columns past the real length are padding the caller added; the
exported-model backends may add more (LiteRT's fixed `seq_N` signatures, a fixed ONNX batch). They are
the runtimes of `mobilebert_jax.export.runtime` (the one code that pads to an artifact's shapes and
names its inputs) opened on the artifact file, and import `ai-edge-litert` / `onnxruntime` lazily, so
the library does not need them unless they are used.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax.export.runtime import INPUT_NAMES, LiteRTRuntime, OnnxRuntime

# Fields of our model outputs that pipelines read (the others, e.g. hidden_states, are never needed).
OUTPUT_FIELDS = ("logits", "start_logits", "end_logits", "last_hidden_state", "pooler_output")


def _check_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> None:
    for name, a in zip(INPUT_NAMES, (input_ids, attention_mask, token_type_ids)):
        if not isinstance(a, np.ndarray) or a.dtype != np.int32 or a.ndim != 2:
            raise TypeError(
                f"{name} must be an int32 numpy array [batch, length], got {getattr(a, 'dtype', a)!r}"
            )
        if a.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {a.shape}, input_ids {input_ids.shape}")


class Backend:
    """Base class: `__call__(input_ids, attention_mask, token_type_ids) -> {field: numpy array}`.

    `LiteRtBackend` and `OnnxBackend` are `export.runtime` runtimes, with the same attributes.

    Attributes:
        name: "jax", "litert" or "onnx".
        max_length: the longest sequence the model takes (position embeddings or largest signature).
        lengths: sequence lengths the backend runs natively (fixed signatures), or None for any.
        fixed_batch: the batch size of fixed signatures, or None for any.
        compiles_per_shape: each new input shape costs a compilation (JAX), so the pipelines pad
            batches to `batch_size` rows and a length bucket; other backends get the rows as they are.
    """

    name = ""
    max_length: int = 512
    lengths: tuple[int, ...] | None = None
    fixed_batch: int | None = None
    compiles_per_shape = False  # True: pad every batch to the same rows and to a bucket length

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError


class JaxBackend(Backend):
    """A linen model and its params; one `jax.jit`-compiled forward per (batch, length), cached.

    `compiled_shapes` lists the shapes compiled so far (the pipelines' length buckets keep it short).
    `pad_invariant` (default True) runs the model with that option (`model.clone(pad_invariant=True)`):
    the padding the pipelines add changes no answer, whatever the model's [PAD] embedding row (HF #9860).
    """

    name = "jax"
    compiles_per_shape = True

    def __init__(self, model: Any, params: Any, device: Any = None, pad_invariant: bool = True):
        import jax

        model = model.clone(pad_invariant=pad_invariant)
        self.model = model
        self.config = model.config
        self.max_length = int(self.config.max_position_embeddings)
        self._device = device
        self.params = jax.device_put(params, device) if device is not None else params
        self._compiled: dict[tuple[int, int], Any] = {}

        def forward(p, ids, mask, types):
            out = model.apply({"params": p}, input_ids=ids, attention_mask=mask, token_type_ids=types)
            return {k: getattr(out, k) for k in OUTPUT_FIELDS if getattr(out, k, None) is not None}

        self._forward = jax.jit(forward)

    @property
    def compiled_shapes(self) -> list[tuple[int, int]]:
        return sorted(self._compiled)

    def __call__(self, input_ids, attention_mask, token_type_ids):
        import jax

        _check_inputs(input_ids, attention_mask, token_type_ids)
        if input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} > the model's {self.max_length} positions"
            )
        key = input_ids.shape
        fn = self._compiled.get(key)
        args = (input_ids, attention_mask, token_type_ids)
        if self._device is not None:
            args = jax.device_put(args, self._device)
        if fn is None:
            fn = self._forward.lower(self.params, *args).compile()
            self._compiled[key] = fn
        return {k: np.asarray(v) for k, v in fn(self.params, *args).items()}


def _artifact(path: str, ext: str) -> str:
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(path, f"*{ext}")))
    if not found:
        raise FileNotFoundError(f"{path}: no {ext} file in the directory")
    if len(found) > 1:
        named = [f for f in found if os.path.basename(f) == f"model{ext}"]
        if not named:
            raise ValueError(
                f"{path}: several {ext} files ({[os.path.basename(f) for f in found]}); pass one"
            )
        found = named
    return found[0]


class LiteRtBackend(LiteRTRuntime):
    """`export.runtime.LiteRTRuntime` on a `.tflite` (or the one in a directory) with `seq_N` signatures.

    A batch [B, T] is padded to the smallest N >= T and run `fixed_batch` rows at a time.
    `model_class` (optional) names the per-token outputs cut back to T.
    """

    def __init__(
        self, path: str, pad_token_id: int = 0, num_threads: int | None = None, model_class: str | None = None
    ):
        super().__init__(
            _artifact(path, ".tflite"), num_threads=num_threads, model_class=model_class, pad_id=pad_token_id
        )


class OnnxBackend(OnnxRuntime):
    """`export.runtime.OnnxRuntime` on a `.onnx` (or the one in a directory).

    Dynamic batch and length axes are used as they are; a fixed length is padded to, a fixed batch
    is filled with padding rows.
    """

    def __init__(
        self,
        path: str,
        pad_token_id: int = 0,
        providers: Sequence[str] | None = None,
        model_class: str | None = None,
    ):
        super().__init__(
            _artifact(path, ".onnx"), providers=providers, model_class=model_class, pad_id=pad_token_id
        )


def read_export_config(path: str) -> dict[str, Any]:
    """`config.json` beside an exported artifact (what the export writes), as a dict."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{folder}: no config.json beside the exported model (labels, vocab size)")
    with open(file, encoding="utf-8") as f:
        return json.load(f)
