"""Where a pipeline's forward pass runs: JAX (jit, one compiled function per shape), LiteRT or ONNX Runtime.

Every backend is a callable with one interface, so the pre- and post-processing of a pipeline is the
same code whatever runs the model:

    outputs = backend(input_ids, attention_mask, token_type_ids)   # int32 numpy [B, T] each
    outputs["logits"]                                              # numpy float32, HF field names

Rows past the real batch and columns past the real length are padding the caller added; the
backends may add more (LiteRT's fixed `seq_N` signatures) and cut their outputs back to [B, T, ...].
The LiteRT and ONNX backends import their runtime lazily (`ai-edge-litert`, `onnxruntime`), so the
library does not need them unless they are used.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
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
    """

    name = "jax"
    compiles_per_shape = True

    def __init__(self, model: Any, params: Any, device: Any = None):
        import jax

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

    def pad_row_is_zero(self) -> bool:
        """Whether the [PAD] embedding row is zero: only then does right-padding leave the last real
        token's trigram embedding (and so every output) unchanged (HF #9860)."""
        from flax import traverse_util

        flat = traverse_util.flatten_dict(self.params)
        table = next((v for k, v in flat.items() if k[-2:] == ("word_embeddings", "embedding")), None)
        if table is None:
            return True
        return not np.any(np.asarray(table[self.config.pad_token_id]))

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


def _pad_to(a: np.ndarray, rows: int, cols: int, fill: int) -> np.ndarray:
    out = np.full((rows, cols), fill, np.int32)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def _run_fixed(run, sizes: Sequence[int], batch: int, input_ids, attention_mask, token_type_ids, pad_id):
    """Runs fixed-shape signatures: pads to the smallest length >= T, splits into chunks of `batch` rows."""
    b, t = input_ids.shape
    fits = [s for s in sizes if s >= t]
    if not fits:
        raise ValueError(f"sequence length {t} > the longest signature ({max(sizes)}); export a longer seq_N")
    length = min(fits)
    outs: list[dict[str, np.ndarray]] = []
    for i in range(0, b, batch):
        rows = slice(i, min(i + batch, b))
        feeds = {
            "input_ids": _pad_to(input_ids[rows], batch, length, pad_id),
            "attention_mask": _pad_to(attention_mask[rows], batch, length, 0),
            "token_type_ids": _pad_to(token_type_ids[rows], batch, length, 0),
        }
        feeds["attention_mask"][:, 0] = 1  # padding rows: one visible token keeps the softmax defined
        n = rows.stop - rows.start
        res = run(length, feeds)
        outs.append({k: np.asarray(v)[:n] for k, v in res.items()})
    merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    # Cut the sequence axis back to T for per-token outputs.
    return {k: (v[:, :t] if v.ndim >= 2 and v.shape[1] == length else v) for k, v in merged.items()}


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


def _require(module: str, pip_name: str, backend: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f'backend="{backend}" needs {pip_name} (pip install {pip_name}, or the export extra)'
        ) from None


class LiteRtBackend(Backend):
    """A `.tflite` with fixed-shape signatures `seq_N` (inputs int32 `input_ids`, `attention_mask`,
    `token_type_ids` [batch, N]), run by `ai_edge_litert`'s Interpreter signature runners.

    A batch [B, T] is padded to the smallest N >= T and run `fixed_batch` rows at a time.
    """

    name = "litert"

    def __init__(self, path: str, pad_token_id: int = 0, num_threads: int | None = None):
        interpreter_mod = _require("ai_edge_litert.interpreter", "ai-edge-litert", "litert")
        self.path = _artifact(path, ".tflite")
        self._interp = interpreter_mod.Interpreter(model_path=self.path, num_threads=num_threads)
        sigs = self._interp.get_signature_list()
        self._runners: dict[int, Any] = {}
        batches = set()
        for name, io in sigs.items():
            m = re.fullmatch(r"seq_(\d+)", name)
            if not m:
                continue
            missing = set(INPUT_NAMES) - set(io["inputs"])
            if missing:
                raise ValueError(f"{self.path}: signature {name} lacks inputs {sorted(missing)}")
            runner = self._interp.get_signature_runner(name)
            shape = runner.get_input_details()["input_ids"]["shape"]
            batches.add(int(shape[0]))
            self._runners[int(m.group(1))] = runner
        if not self._runners:
            raise ValueError(f"{self.path}: no seq_N signatures (found {sorted(sigs)})")
        if len(batches) != 1:
            raise ValueError(f"{self.path}: signatures have different batch sizes {sorted(batches)}")
        self.lengths = tuple(sorted(self._runners))
        self.max_length = self.lengths[-1]
        self.fixed_batch = batches.pop()
        self.pad_token_id = pad_token_id

    def __call__(self, input_ids, attention_mask, token_type_ids):
        _check_inputs(input_ids, attention_mask, token_type_ids)
        return _run_fixed(
            lambda n, feeds: self._runners[n](**feeds), self.lengths, self.fixed_batch,
            input_ids, attention_mask, token_type_ids, self.pad_token_id,
        )  # fmt: skip


class OnnxBackend(Backend):
    """A `.onnx` model run by `onnxruntime.InferenceSession` (CPU unless `providers` say otherwise).

    Dynamic batch and length axes are used as they are; a fixed length is padded to, a fixed batch
    is filled with padding rows.
    """

    name = "onnx"

    def __init__(self, path: str, pad_token_id: int = 0, providers: Sequence[str] | None = None):
        ort = _require("onnxruntime", "onnxruntime", "onnx")
        self.path = _artifact(path, ".onnx")
        self._session = ort.InferenceSession(self.path, providers=list(providers or ["CPUExecutionProvider"]))
        inputs = {i.name: i for i in self._session.get_inputs()}
        missing = [n for n in ("input_ids", "attention_mask") if n not in inputs]
        if missing:
            raise ValueError(f"{self.path}: model inputs {sorted(inputs)} lack {missing}")
        self._input_names = [n for n in INPUT_NAMES if n in inputs]
        self._output_names = [o.name for o in self._session.get_outputs()]
        shape = inputs["input_ids"].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        fixed_len = shape[1] if isinstance(shape[1], int) else None
        self.lengths = (fixed_len,) if fixed_len else None
        self.max_length = fixed_len or 512
        self.pad_token_id = pad_token_id

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self._session.run(self._output_names, {k: feeds[k] for k in self._input_names})
        return dict(zip(self._output_names, res))

    def __call__(self, input_ids, attention_mask, token_type_ids):
        _check_inputs(input_ids, attention_mask, token_type_ids)
        if self.fixed_batch is None and self.lengths is None:
            return self._run(
                {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            )
        b, t = input_ids.shape
        return _run_fixed(
            lambda n, feeds: self._run(feeds), self.lengths or (t,), self.fixed_batch or b,
            input_ids, attention_mask, token_type_ids, self.pad_token_id,
        )  # fmt: skip


def read_export_config(path: str) -> dict[str, Any]:
    """`config.json` beside an exported artifact (what the export writes), as a dict."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{folder}: no config.json beside the exported model (labels, vocab size)")
    with open(file, encoding="utf-8") as f:
        return json.load(f)
