"""Loading an export directory into its runtime: `load_runtime(dir)` → a callable.

    rt = load_runtime("exported/")            # reads export.json: litert, onnx or stablehlo
    out = rt(input_ids, attention_mask, token_type_ids)   # int [batch, length] → {name: np.ndarray}

The callable takes any batch size and any length up to the largest exported length: it pads the length
up to the smallest bucket that holds it (pad id, mask 0, as the tokenizer's `padding="max_length"` does),
runs fixed-batch LiteRT signatures in chunks (padding the last chunk), and cuts per-token outputs back
to the input length. `rt.output_names`, `rt.lengths`, `rt.manifest` describe the artifact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax.export import common

# Outputs with a length axis (cut back to the caller's length), per class.
PER_TOKEN = {
    "MobileBertModel": ("last_hidden_state",),
    "MobileBertForPreTraining": ("prediction_logits",),
    "MobileBertForMaskedLM": ("logits",),
    "MobileBertForTokenClassification": ("logits",),
    "MobileBertForQuestionAnswering": ("start_logits", "end_logits"),
}


def _as_inputs(input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
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


class Runtime:
    """Base: length bucketing and per-token cutting; subclasses run one padded batch."""

    format = ""

    def __init__(self, lengths: Sequence[int], model_class: str | None = None, pad_id: int = 0):
        self.lengths = sorted(lengths)
        self.model_class = model_class
        self.pad_id = pad_id
        self.manifest: dict[str, Any] = {}
        self.output_names: list[str] = []

    def bucket(self, length: int) -> int:
        for t in self.lengths:
            if length <= t:
                return t
        raise ValueError(
            f"input length {length} exceeds the largest exported length {self.lengths[-1]}; "
            "truncate the input or re-export with a larger --seq-lengths"
        )

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        batch = _as_inputs(input_ids, attention_mask, token_type_ids)
        t = batch["input_ids"].shape[1]
        out = self.run_padded(_pad_length(batch, self.bucket(t), self.pad_id))
        cut = PER_TOKEN.get(self.model_class or "", ())
        return {k: (v[:, :t] if k in cut else v) for k, v in out.items()}


class LiteRTRuntime(Runtime):
    """A `.tflite` with one fixed-shape signature per length, in ai-edge-litert's Interpreter."""

    format = "litert"

    def __init__(self, path: str, signatures: Sequence[dict], num_threads: int | None = None, **kw: Any):
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads or os.cpu_count() or 1)
        self._by_length = {int(s["inputs"][0]["shape"][1]): s["name"] for s in signatures}
        self.batch_size = int(signatures[0]["inputs"][0]["shape"][0])
        self._runners: dict[str, Any] = {}
        super().__init__(list(self._by_length), **kw)
        self.output_names = [o["name"] for o in signatures[0]["outputs"]]

    def run_signature(self, name: str, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in self._runners:
            self._runners[name] = self.interpreter.get_signature_runner(name)
        out = self._runners[name](**{k: np.ascontiguousarray(v, np.int32) for k, v in batch.items()})
        return {k: np.array(v) for k, v in out.items()}

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, t = batch["input_ids"].shape
        name, bs = self._by_length[t], self.batch_size
        parts: dict[str, list] = {}
        for s in range(0, n, bs):
            chunk = {k: v[s : s + bs] for k, v in batch.items()}
            short = bs - len(chunk["input_ids"])
            if short:  # filler rows: one [PAD] token attended, so no row is fully masked
                filler = {
                    "input_ids": np.full((short, t), self.pad_id, np.int32),
                    "attention_mask": np.pad(np.ones((short, 1), np.int32), ((0, 0), (0, t - 1))),
                    "token_type_ids": np.zeros((short, t), np.int32),
                }
                chunk = {k: np.concatenate([v, filler[k]]) for k, v in chunk.items()}
            for k, v in self.run_signature(name, chunk).items():
                parts.setdefault(k, []).append(v[: bs - short])
        return {k: np.concatenate(v) for k, v in parts.items()}

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
    """A `.onnx` with a dynamic batch and one length, in onnxruntime (CPU)."""

    format = "onnx"

    def __init__(self, path: str, length: int, num_threads: int | None = None, **kw: Any):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
        self.path = path
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        super().__init__([length], **kw)
        self.inputs = [
            {"name": i.name, "shape": list(i.shape), "dtype": i.type} for i in self.session.get_inputs()
        ]
        self.outputs = [
            {"name": o.name, "shape": list(o.shape), "dtype": o.type} for o in self.session.get_outputs()
        ]
        self.output_names = [o["name"] for o in self.outputs]

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, np.int32) for k, v in batch.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))


class StableHLORuntime(Runtime):
    """A `model.stablehlo` (any batch, any length up to max_position_embeddings), run by JAX alone."""

    format = "stablehlo"

    def __init__(self, directory: str, max_length: int, **kw: Any):
        from mobilebert_jax.export.stablehlo_runtime import load_stablehlo

        self._fn = load_stablehlo(directory)
        super().__init__([max_length], **kw)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        batch = _as_inputs(input_ids, attention_mask, token_type_ids)
        self.bucket(batch["input_ids"].shape[1])
        return self._fn(**batch)

    def run_padded(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._fn(**batch)


def load_runtime(directory: str, num_threads: int | None = None) -> Runtime:
    """The runtime for an export directory (`export.json` says which format)."""
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
