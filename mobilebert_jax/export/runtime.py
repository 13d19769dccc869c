"""Loading an export directory into its runtime: `load_runtime(dir)` → a callable.

    rt = load_runtime("exported/")            # reads export.json: litert, onnx or stablehlo
    out = rt(input_ids, attention_mask, token_type_ids)   # int [batch, length] → {name: np.ndarray}

The callable takes any batch size and any length up to the largest exported length: it pads the length
up to the smallest bucket that holds it (pad id, mask 0, as the tokenizer's `padding="max_length"` does),
runs fixed-batch LiteRT signatures in chunks (padding the last chunk), and cuts per-token outputs back
to the input length. `rt.output_names`, `rt.lengths`, `rt.manifest` describe the artifact.

This is the one place that runs exported artifacts: the pipelines' `litert` and `onnx` backends are
these runtimes, built from the artifact file alone (`LiteRTRuntime(path)`, `OnnxRuntime(path)`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.export import common

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Outputs with a length axis (cut back to the caller's length), per class.
PER_TOKEN = {
    "MobileBertModel": ("last_hidden_state",),
    "MobileBertForPreTraining": ("prediction_logits",),
    "MobileBertForMaskedLM": ("logits",),
    "MobileBertForTokenClassification": ("logits",),
    "MobileBertForQuestionAnswering": ("start_logits", "end_logits"),
}


def as_inputs(input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
    """The three named int32 inputs [batch, length]; a missing mask is all ones, missing types zeros."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    for n, a in (("attention_mask", mask), ("token_type_ids", types)):
        if a.shape != ids.shape:
            raise ValueError(f"{n} must have the shape of input_ids {ids.shape}, got {a.shape}")
    return {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "token_type_ids": types.astype(np.int32),
    }


def _pad_length(batch: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
    t = batch["input_ids"].shape[1]
    if t == length:
        return batch
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
    return {k: np.pad(v, ((0, 0), (0, length - t)), constant_values=fill[k]) for k, v in batch.items()}


def _filler(rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Rows that fill a fixed batch: one [PAD] token attended, so no row is fully masked."""
    return {
        "input_ids": np.full((rows, length), pad_id, np.int32),
        "attention_mask": np.pad(np.ones((rows, 1), np.int32), ((0, 0), (0, length - 1))),
        "token_type_ids": np.zeros((rows, length), np.int32),
    }


class Runtime:
    """Base: names the inputs, pads the length to a bucket and the rows to a fixed batch, cuts outputs.

    Subclasses run one batch (`run_padded`). The attributes are also what a pipeline reads from its
    backend (`pipelines.backends.Backend`).

    Attributes:
        format, name: "litert", "onnx" or "stablehlo".
        lengths: the lengths the artifact runs (fixed signatures), or None for any up to `max_length`.
        max_length: the longest input it takes.
        fixed_batch: the rows of every run (shorter batches get filler rows), or None for any.
        model_class: the exported class; its per-token outputs (`PER_TOKEN`) are cut to the input length.
    """

    format = ""
    compiles_per_shape = False

    def __init__(
        self,
        lengths: Sequence[int] | None,
        model_class: str | None = None,
        pad_id: int = 0,
        *,
        max_length: int | None = None,
        fixed_batch: int | None = None,
    ):
        self.lengths = tuple(sorted(int(t) for t in lengths)) if lengths else None
        self.max_length = int(max_length or self.lengths[-1])  # type: ignore[index]
        self.fixed_batch = fixed_batch
        self.model_class = model_class
        self.pad_id = pad_id
        self.manifest: dict[str, Any] = {}
        self.output_names: list[str] = []

    @property
    def name(self) -> str:
        return self.format

    def bucket(self, length: int) -> int:
        """The smallest runnable length >= `length`."""
        for t in self.lengths or (self.max_length,):
            if length <= t:
                return t if self.lengths else length
        raise ValueError(
            f"input length {length} exceeds the largest exported length {self.max_length}; "
            "truncate the input or re-export with a larger --seq-lengths"
        )

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch at a runnable length (and `fixed_batch` rows when that is set)."""
        raise NotImplementedError

    def run_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Any number of rows at a runnable length: `fixed_batch` rows at a time, the last filled up."""
        n, t = batch["input_ids"].shape
        bs = self.fixed_batch
        if bs is None or n == bs:
            return self.run_padded(batch)
        parts: dict[str, list] = {}
        for s in range(0, n, bs):
            chunk = {k: v[s : s + bs] for k, v in batch.items()}
            short = bs - len(chunk["input_ids"])
            if short:
                filler = _filler(short, t, self.pad_id)
                chunk = {k: np.concatenate([v, filler[k]]) for k, v in chunk.items()}
            for k, v in self.run_padded(chunk).items():
                parts.setdefault(k, []).append(np.asarray(v)[: bs - short])
        return {k: np.concatenate(v) for k, v in parts.items()}

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        batch = as_inputs(input_ids, attention_mask, token_type_ids)
        t = batch["input_ids"].shape[1]
        out = self.run_rows(_pad_length(batch, self.bucket(t), self.pad_id))
        cut = PER_TOKEN.get(self.model_class or "", ())
        return {k: (v[:, :t] if k in cut else v) for k, v in out.items()}


def _litert_signatures(interpreter: Any, path: str) -> list[dict]:
    """The `seq_N` signatures of a `.tflite` in the manifest's form (name, inputs with shapes, outputs)."""
    sigs = []
    for name, io in interpreter.get_signature_list().items():
        if not re.fullmatch(r"seq_\d+", name):
            continue
        missing = set(INPUT_NAMES) - set(io["inputs"])
        if missing:
            raise ValueError(f"{path}: signature {name} lacks inputs {sorted(missing)}")
        details = interpreter.get_signature_runner(name).get_input_details()
        inputs = [{"name": k, "shape": [int(d) for d in details[k]["shape"]]} for k in INPUT_NAMES]
        sigs.append({"name": name, "inputs": inputs, "outputs": [{"name": o} for o in io["outputs"]]})
    if not sigs:
        raise ValueError(f"{path}: no seq_N signatures (found {sorted(interpreter.get_signature_list())})")
    return sigs


class LiteRTRuntime(Runtime):
    """A `.tflite` with one fixed-shape signature `seq_N` per length, in ai-edge-litert's Interpreter.

    `signatures` (the manifest's) are read from the file when not given.
    """

    format = "litert"

    def __init__(
        self, path: str, signatures: Sequence[dict] | None = None, num_threads: int | None = None, **kw: Any
    ):
        Interpreter = _require("ai_edge_litert.interpreter", "ai-edge-litert", "litert").Interpreter
        self.path = path
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads or os.cpu_count() or 1)
        signatures = signatures or _litert_signatures(self.interpreter, path)
        self._by_length = {int(s["inputs"][0]["shape"][1]): s["name"] for s in signatures}
        batches = sorted({int(s["inputs"][0]["shape"][0]) for s in signatures})
        if len(batches) != 1:
            raise ValueError(f"{path}: signatures have different batch sizes {batches}")
        self._runners: dict[str, Any] = {}
        super().__init__(list(self._by_length), fixed_batch=batches[0], **kw)
        self.output_names = [o["name"] for o in signatures[0]["outputs"]]

    def run_signature(self, name: str, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in self._runners:
            self._runners[name] = self.interpreter.get_signature_runner(name)
        out = self._runners[name](**{k: np.ascontiguousarray(v, np.int32) for k, v in batch.items()})
        return {k: np.array(v) for k, v in out.items()}

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_signature(self._by_length[batch["input_ids"].shape[1]], batch)

    def op_summary(self) -> dict[str, Any]:
        """Kernel counts of the first signature, and how many FULLY_CONNECTED ops take int8 tensors."""
        try:
            ops = self.interpreter._get_ops_details()
            dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in self.interpreter.get_tensor_details()}
        except Exception as e:  # private API: report its absence rather than fail the export
            return {"unavailable": f"{type(e).__name__}: {e}"}
        counts: dict[str, int] = {}
        fc = {"total": 0, "int8_weights": 0, "int8_activations": 0}
        for op in ops:
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
            if op["op_name"] == "FULLY_CONNECTED":
                ins = [dtypes.get(int(i)) for i in op["inputs"] if int(i) >= 0]
                fc["total"] += 1
                fc["int8_weights"] += int(len(ins) > 1 and ins[1] == "int8")
                fc["int8_activations"] += int(bool(ins) and ins[0] == "int8")
        return {"ops": dict(sorted(counts.items())), "fully_connected": fc}


class OnnxRuntime(Runtime):
    """A `.onnx` in onnxruntime (CPU unless `providers` say otherwise).

    A fixed batch or length in the graph is padded to; dynamic axes take the input as it is (then
    `length`, when given, is the longest input accepted, else 512). Inputs the graph lacks (e.g.
    `token_type_ids`) are not fed.
    """

    format = "onnx"

    def __init__(
        self,
        path: str,
        length: int | None = None,
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        **kw: Any,
    ):
        ort = _require("onnxruntime", "onnxruntime", "onnx")
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
        self.path = path
        self.session = ort.InferenceSession(path, opts, providers=list(providers or ["CPUExecutionProvider"]))
        self.inputs = [
            {"name": i.name, "shape": list(i.shape), "dtype": i.type} for i in self.session.get_inputs()
        ]
        self.outputs = [
            {"name": o.name, "shape": list(o.shape), "dtype": o.type} for o in self.session.get_outputs()
        ]
        shapes = {i["name"]: i["shape"] for i in self.inputs}
        missing = [n for n in INPUT_NAMES[:2] if n not in shapes]
        if missing:
            raise ValueError(f"{path}: model inputs {sorted(shapes)} lack {missing}")
        self._feed = [n for n in INPUT_NAMES if n in shapes]
        rows, fixed_len = (d if isinstance(d, int) else None for d in shapes["input_ids"][:2])
        super().__init__(
            [fixed_len] if fixed_len else None, max_length=fixed_len or length or 512, fixed_batch=rows, **kw
        )
        self.output_names = [o["name"] for o in self.outputs]

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(batch[k], np.int32) for k in self._feed}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))


class StableHLORuntime(Runtime):
    """A `model.stablehlo` (any batch, any length up to max_position_embeddings), run by JAX alone."""

    format = "stablehlo"

    def __init__(self, directory: str, max_length: int, **kw: Any):
        from mobilebert_jax.export.stablehlo_runtime import load_stablehlo

        self._fn = load_stablehlo(directory)
        super().__init__(None, max_length=max_length, **kw)

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._fn(**batch)


def _require(module: str, pip_name: str, fmt: str) -> Any:
    """`module`, imported on first use, or an ImportError that says what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{fmt} artifacts need {pip_name} (pip install {pip_name}, or the export extra)"
        ) from None


def load_runtime(directory: str, num_threads: int | None = None) -> Runtime:
    """The runtime for an export directory (`export.json` says which format); a gs:// one is copied
    locally first (`storage.local_copy`)."""
    directory = storage.local_copy(directory)
    m = common.read_manifest(directory)
    fmt = m.get("format")
    kw = dict(model_class=m.get("model_class"), pad_id=int(m.get("pad_token_id", 0)))
    path = os.path.join(directory, m.get("file", ""))
    if fmt == "litert":
        rt: Runtime = LiteRTRuntime(path, m["signatures"], num_threads=num_threads, **kw)
    elif fmt == "onnx":
        rt = OnnxRuntime(path, int(m["seq_lengths"][-1]), num_threads=num_threads, **kw)
    elif fmt == "stablehlo":
        rt = StableHLORuntime(directory, int(m["max_position_embeddings"]), **kw)
    else:
        raise common.ExportError(f"{directory}/export.json: unknown format {fmt!r}")
    rt.manifest = m
    if not rt.output_names:
        rt.output_names = [o["name"] for o in m["signatures"][0]["outputs"]]
    return rt
