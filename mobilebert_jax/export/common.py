"""What every export shares: the traced forward, its input and output names, a padded sample batch,
the relative error, runtime versions and the `export.json` manifest.

Exported graphs take three int32 inputs `[batch, length]` (`input_ids`, `attention_mask`,
`token_type_ids`; LiteRT and onnxruntime refuse int64) and return a dict named by our output fields
(`logits`; `start_logits`, `end_logits`; `last_hidden_state`, `pooler_output`; ...).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MANIFEST = "export.json"
FP32_TOLERANCE = 1e-5  # max|runtime - jax| / max|jax| an fp32 export must meet
QUANTIZATIONS = ("none", "dynamic-int8", "int8", "int8-full")
# Outputs of each exportable class, in the order the graph returns them (None fields are dropped).
OUTPUT_FIELDS = {
    "MobileBertModel": ("last_hidden_state", "pooler_output"),
    "MobileBertForPreTraining": ("prediction_logits", "seq_relationship_logits"),
    "MobileBertForMaskedLM": ("logits",),
    "MobileBertForNextSentencePrediction": ("logits",),
    "MobileBertForSequenceClassification": ("logits",),
    "MobileBertForTokenClassification": ("logits",),
    "MobileBertForQuestionAnswering": ("start_logits", "end_logits"),
}


# Who loads each kind of file as is (export.json's "clients"). Every file also runs in our own
# `export.load_runtime` and the pipelines' backends.
OUR_RUNTIME = "mobilebert_jax (export.load_runtime, pipelines)"
_FORMAT_CLIENTS = {
    "stablehlo": ("jax.export.deserialize",),
    "litert": ("ai-edge-litert Interpreter / CompiledModel (signature runners)",),
    "onnx": ("onnxruntime InferenceSession",),
}
_DEVICE_CLIENTS = {
    "MobileBertForSequenceClassification": (
        "MediaPipe Tasks TextClassifier",
        "TFLite Task Library BertNLClassifier",
    ),
}
QA_TASK_LIBRARY_LENGTH = 384  # BertQuestionAnswerer feeds [1, 384]
# The ONNX export's dynamic axes let HF optimum load it (scripts/check_optimum.sh checks these four).
_OPTIMUM_CLASSES = {
    "MobileBertForSequenceClassification": "ORTModelForSequenceClassification",
    "MobileBertForQuestionAnswering": "ORTModelForQuestionAnswering",
    "MobileBertForTokenClassification": "ORTModelForTokenClassification",
    "MobileBertForMaskedLM": "ORTModelForMaskedLM",
}


class ExportError(RuntimeError):
    """An export that could not be written, or whose artifact does not compute what the JAX model does."""


def class_name(model: Any) -> str:
    name = type(model).__name__
    if name not in OUTPUT_FIELDS:
        raise ExportError(
            f"cannot export {name}: exportable classes are {sorted(OUTPUT_FIELDS)} "
            "(MultipleChoice takes [batch, choices, length] inputs and is not exported)"
        )
    return name


def make_forward(model: Any, params: Any) -> Callable[..., dict[str, Any]]:
    """`fn(input_ids, attention_mask, token_type_ids) -> {output name: array}`, params closed over.

    Position ids are passed explicitly (0..length-1, what the model computes by default) as a
    `broadcasted_iota`: jax2onnx keeps the batch dynamic only with explicit ids, and keeps a symbolic
    length through iota (its `jnp.arange` gives a shape that indexing then rejects).
    """
    import jax.numpy as jnp
    from jax import lax

    fields = OUTPUT_FIELDS[class_name(model)]

    def forward(input_ids, attention_mask, token_type_ids):
        position_ids = lax.broadcasted_iota(jnp.int32, input_ids.shape, 1)
        out = model.apply(
            {"params": params},
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            deterministic=True,
        )
        return {k: getattr(out, k) for k in fields if getattr(out, k, None) is not None}

    return forward


def sample_batch(config: Any, batch_size: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """int32 inputs `[batch_size, length]` with padding: row 0 is a quarter padding, further rows alternate
    between full length and shorter ones; a second segment (token type 1) where the config has two."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (batch_size, length), dtype=np.int64).astype(np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    types = np.zeros((batch_size, length), np.int32)
    for r in range(batch_size):
        n = length - length // 4 if r % 2 == 0 else length
        n = max(2, n - (r // 2) % max(1, length // 4))
        mask[r, :n] = 1
        ids[r, n:] = config.pad_token_id
        if config.type_vocab_size > 1:
            types[r, n // 2 : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def rel_err(ours: Any, ref: Any) -> float:
    """max|a - b| / max|b| (MobileBERT activations span 1e0..1e8, so errors are relative to the scale)."""
    a = np.asarray(ours, np.float64)
    b = np.asarray(ref, np.float64)
    if a.shape != b.shape:
        raise ExportError(f"runtime output shape {a.shape} != JAX output shape {b.shape}")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def compare(outputs: dict[str, np.ndarray], reference: dict[str, Any]) -> dict[str, Any]:
    """Per-output relative error and, for logits, argmax agreement of the runtime with the reference."""
    missing = sorted(set(reference) - set(outputs))
    if missing:
        raise ExportError(f"the runtime returned {sorted(outputs)}; missing {missing}")
    errs = {k: rel_err(outputs[k], reference[k]) for k in reference}
    agree = {
        k: float(np.mean(np.argmax(outputs[k], -1) == np.argmax(np.asarray(reference[k]), -1)))
        for k in reference
        if "logits" in k
    }
    return {"max_rel_error": max(errs.values()), "rel_error": errs, "argmax_agreement": agree}


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of this package, jax and the named distributions (those not installed are
    left out)."""
    out = {}
    for d in ("mobilebert-jax", "jax", "jaxlib", *dists):
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def io_spec(names: Sequence[str], arrays: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"name": n, "shape": [d if isinstance(d, int) else str(d) for d in a.shape], "dtype": str(a.dtype)}
        for n, a in zip(names, arrays)
    ]


def write_manifest(out_dir: str, manifest: dict[str, Any]) -> str:
    path = os.path.join(out_dir, MANIFEST)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return path


def read_manifest(out_dir: str) -> dict[str, Any]:
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ExportError(
            f"{path} not found: {out_dir} is not a directory written by mobilebert-jax export"
        ) from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None


def check_fp32(result: dict[str, Any], quantize: str, what: str) -> None:
    """Raises if an fp32 artifact is off by more than `FP32_TOLERANCE` (relative) from the JAX forward."""
    if quantize == "none" and not result["max_rel_error"] <= FP32_TOLERANCE:
        raise ExportError(
            f"{what} differs from the JAX forward by {result['max_rel_error']:.3g} relative "
            f"(per output: {result['rel_error']}); the limit for fp32 is {FP32_TOLERANCE:g}"
        )


def check_lengths(seq_lengths: Sequence[int], max_positions: int) -> list[int]:
    """Sorted unique lengths; raises for any outside 1..max_position_embeddings."""
    lengths = sorted({int(t) for t in seq_lengths})
    bad = [t for t in lengths if not 1 <= t <= max_positions]
    if not lengths or bad:
        raise ExportError(
            f"--seq-lengths {bad or list(seq_lengths)} outside 1..max_position_embeddings={max_positions} "
            "of this model"
        )
    return lengths


def device_graph(model: Any) -> Any:
    """The model computing as the LiteRT export runs it (same math): the full attention instead of the
    CPU blockwise one (a `lax.map` loop over query blocks, model/attention.py) and the MLM head's
    logits as two GEMMs over the tied word embeddings (the single folded GEMM would store them twice)."""
    if getattr(model, "attention_implementation", None) in ("auto", "blockwise"):
        model = model.clone(attention_implementation="default")
    if getattr(model, "single_gemm_lm_head", False):
        model = model.clone(single_gemm_lm_head=False)
    return model


def clients(
    format: str, model_class: str, lengths: Sequence[int], device_ready: bool = False, quantize: str = "none"
) -> list[str]:
    """The runtimes that load a file of this export as is (export.json's "clients"). A device-ready
    LiteRT file (TFLite Metadata, one length, batch 1) adds the app clients of its task; other LiteRT
    files have no metadata and are for signature runners only. The Task Library (tflite-support 0.4.4)
    is listed for fp32 and dynamic-int8 files (a device-ready dynamic-int8 file has per-tensor weight
    scales: its older TFLite runs per-channel hybrid FULLY_CONNECTED kernels wrongly); static int8 files
    are not checked in it (docs/deploy_clients.md)."""
    task_library = quantize in ("none", "dynamic-int8")
    out = [OUR_RUNTIME, *_FORMAT_CLIENTS[format]]
    if format == "onnx" and model_class in _OPTIMUM_CLASSES:
        out.append(f"HF optimum {_OPTIMUM_CLASSES[model_class]} (and transformers pipelines on it)")
    if format == "litert" and device_ready:
        out += [c for c in _DEVICE_CLIENTS.get(model_class, ()) if task_library or "Task Library" not in c]
        if (
            model_class == "MobileBertForQuestionAnswering"
            and list(lengths) == [QA_TASK_LIBRARY_LENGTH]
            and task_library
        ):
            out.append("TFLite Task Library BertQuestionAnswerer")
    return out
