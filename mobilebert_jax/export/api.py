"""The Python API: `to_litert`, `to_onnx`, `to_stablehlo` (or `export(..., format=)`) write OUT_DIR with
the model file, `config.json`, the tokenizer files and `export.json`, after running the artifact in its
runtime against the JAX forward (an fp32 export off by more than 1e-5 relative raises `ExportError`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.export import common

FORMATS = ("stablehlo", "litert", "onnx")


def calibration_batch(
    texts: Sequence[str] | Sequence[tuple[str, str]], tokenizer: Any, length: int, limit: int = 256
) -> dict[str, np.ndarray]:
    """int32 inputs `[n, length]` from real text (single sentences or (a, b) pairs), padded to `length`."""
    texts = [t for t in texts if t][:limit]
    if not texts:
        raise common.ExportError("the calibration text is empty")
    if isinstance(texts[0], (tuple, list)):
        enc = tokenizer(
            [a for a, _ in texts],
            [b for _, b in texts],
            padding="max_length",
            truncation=True,
            max_length=length,
        )
    else:
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=length)
    return {k: np.asarray(enc[k], np.int32) for k in common.INPUT_NAMES}


def read_calibration_file(path: str) -> list[str]:
    """Text lines of a .txt file, or the sentence column(s) of a GLUE-style .tsv with a header."""
    try:
        with storage.open(path, encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f]
    except FileNotFoundError:
        raise common.ExportError(f"--calibration-file {path} not found") from None
    if path.endswith(".tsv") and lines:
        header = lines[0].split("\t")
        cols = [i for i, h in enumerate(header) if h in ("sentence", "sentence1", "sentence2", "question")]
        if not cols:
            raise common.ExportError(f"{path}: no sentence/sentence1/question column in the header {header}")
        rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
        return [" ".join(r[i] for i in cols if i < len(r)) for r in rows]
    return [ln for ln in lines if ln.strip()]


def device_vocab(tokenizer: Any) -> list[str]:
    """The tokens by id that a device-ready export packs as its vocab; raises for a cased tokenizer (the
    clients' on-device BERT tokenizer lowercases) or none."""
    if tokenizer is None:
        raise common.ExportError("a device-ready export needs the tokenizer (its vocab goes into the file)")
    normalizer = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
    if not normalizer.get("lowercase", False):
        raise common.ExportError(
            "a device-ready export needs an uncased (lowercasing) tokenizer: MediaPipe's and the Task "
            f"Library's BERT tokenizers lowercase the text; this one's normalizer is {normalizer or None}"
        )
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise common.ExportError("the tokenizer's vocabulary ids are not 0..n-1; cannot pack its vocab")
    return tokens


def _prepare(out_dir: str, overwrite: bool) -> None:
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise common.ExportError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite)")
    os.makedirs(out_dir, exist_ok=True)


def flat_layers(model: Any, params: Any) -> tuple[Any, Any]:
    """The model as LiteRT and ONNX take it: its L layers as separate ops (no `while` loop, which the
    default layer loop (one `lax.scan` under jit) and stacked `scan_layers` params would export), and
    `common.device_graph`'s attention and MLM head."""
    if getattr(model, "scan_layers", False):
        from mobilebert_jax.checkpoints.pytorch import scan_to_loop

        model, params = model.clone(scan_layers=False), scan_to_loop(params)
    if hasattr(model, "unroll_layers"):
        model = model.clone(unroll_layers=True)
    return common.device_graph(model), params


def _write_artifact(
    format: str,
    model: Any,
    params: Any,
    out_dir: str,
    seq_lengths: Sequence[int],
    batch_size: int,
    quantize: str,
    calibration: dict[str, np.ndarray] | None,
    num_threads: int | None,
    **litert_only: Any,
) -> dict[str, Any]:
    """Runs the format's writer, which also checks the file in its runtime; returns its manifest entries."""
    if format == "stablehlo":
        from mobilebert_jax.export.stablehlo import write_stablehlo

        return write_stablehlo(
            model,
            params,
            out_dir,
            verify_lengths=seq_lengths,
            verify_batch_size=max(2, batch_size),
            quantize=quantize,
        )
    if format == "litert":
        from mobilebert_jax.export.litert import write_litert

        return write_litert(
            model,
            params,
            out_dir,
            seq_lengths=seq_lengths,
            batch_size=batch_size,
            quantize=quantize,
            calibration=calibration,
            num_threads=num_threads,
            **litert_only,
        )
    from mobilebert_jax.export.onnx import write_onnx

    return write_onnx(
        model,
        params,
        out_dir,
        seq_lengths=seq_lengths,
        verify_batch_size=max(2, batch_size),
        quantize=quantize,
        calibration=calibration,
        num_threads=num_threads,
    )


def _write_config(out_dir: str, config: dict[str, Any]) -> None:
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def _check_litert_only(
    format: str,
    quantize: str,
    quant_stats: Any,
    keep_tensor_names: bool,
    device_ready: bool,
    float_ops: Sequence[str] = (),
) -> None:
    """Raises for a LiteRT-only request of another format."""
    if quant_stats is not None and not (format == "litert" and quantize == "int8"):
        raise common.ExportError("QAT quant stats apply to --format litert --quantize int8 only")
    if float_ops:
        from mobilebert_jax.export.full_integer import FLOAT_OP_CHOICES

        if not (format == "litert" and quantize == "int8-full"):
            raise common.ExportError("--float-ops applies to --format litert --quantize int8-full only")
        for op in float_ops:
            if op not in FLOAT_OP_CHOICES:
                raise common.ExportError(f"--float-ops {op}: not one of {FLOAT_OP_CHOICES}")
    litert_only = {
        "--quantize int8-full": quantize == "int8-full",
        "--keep-tensor-names": keep_tensor_names,
        "a device-ready export (TFLite Metadata)": device_ready,
    }
    for flag in (f for f, asked in litert_only.items() if asked and format != "litert"):
        raise common.ExportError(f"{flag} applies to --format litert only")


def _url_out_dir(export_fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """An export whose gs:// `out_dir` is written and verified in a local folder, then put in place whole
    (`storage.replace_dir`)."""

    @functools.wraps(export_fn)
    def export_anywhere(model: Any, params: Any, out_dir: str, **kw: Any) -> dict[str, Any]:
        if not storage.is_url(out_dir):
            return export_fn(model, params, out_dir, **kw)
        if storage.listdir(out_dir) and not kw.get("overwrite"):
            raise common.ExportError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite)")
        manifest: dict[str, Any] = {}
        storage.replace_dir(out_dir, lambda tmp: manifest.update(export_fn(model, params, tmp, **kw)))
        return manifest

    return export_anywhere


@_url_out_dir
def export(
    model: Any,
    params: Any,
    out_dir: str,
    *,
    format: str,
    quantize: str = "none",
    seq_lengths: Sequence[int] = (128,),
    batch_size: int = 1,
    tokenizer: Any = None,
    calibration: dict[str, np.ndarray] | None = None,
    quant_stats: Any = None,
    num_threads: int | None = None,
    overwrite: bool = False,
    keep_tensor_names: bool = False,
    device_ready: bool = False,
    model_info: dict[str, str] | None = None,
    pad_invariant: bool = True,
    float_ops: Sequence[str] = (),
) -> dict[str, Any]:
    """Writes and verifies an export; returns the manifest written to OUT_DIR/export.json.

    `device_ready` (LiteRT, one length, batch 1, an uncased `tokenizer`): the `.tflite` that MediaPipe
    Tasks and the TFLite Task Library load as is (`litert.py`): TFLite Metadata with the vocab and
    labels, and a sequence classifier's output as `probability`. It is asked for, not inferred from
    one length at batch 1, because it changes the classifier's output (probabilities, not logits) that
    the default export's readers expect. `model_info`: the metadata's `name`, `description`, `version`,
    `license`, `author` (defaults: the class, its shapes, the mobilebert-jax version, Apache 2.0).

    `quant_stats`: static int8 ranges saved by `finetune --qat` (`quantize.load_quant_stats`), used by
    LiteRT `int8` instead of calibrating on `calibration` (which then only measures the error).
    `float_ops` (LiteRT int8-full): op types computed in float between their int8 tensors
    (`full_integer.float_islands`): ["SOFTMAX"] is faster on XNNPACK CPUs and no longer full-integer.
    `keep_tensor_names`: LiteRT keeps every tensor's name (debug information, ~0.3-0.65 MB at full size);
    by default only the signatures' inputs and outputs keep theirs.

    `pad_invariant` (default True): the graph zeroes the word embeddings where `attention_mask` is 0
    (`model.clone(pad_invariant=True)`), so the padding to its fixed length and batch changes no output
    whatever the [PAD] embedding row; the self-check compares with the JAX forward built the same way.
    False exports HF's padded computation. Recorded as `pad_invariant` in export.json and config.json.
    `out_dir` may be a gs:// URL (written and verified locally, then uploaded whole)."""
    if format not in FORMATS:
        raise common.ExportError(f"unknown format {format!r}; one of {FORMATS}")
    if quantize not in common.QUANTIZATIONS:
        raise common.ExportError(f"unknown quantization {quantize!r}; one of {common.QUANTIZATIONS}")
    name = common.class_name(model)
    _prepare(out_dir, overwrite)
    t0 = time.perf_counter()
    cfg = model.config
    _check_litert_only(
        format, quantize, quant_stats, keep_tensor_names, bool(device_ready or model_info), float_ops
    )
    vocab = device_vocab(tokenizer) if device_ready else None
    model = model.clone(pad_invariant=bool(pad_invariant))
    if format in ("litert", "onnx"):
        model, params = flat_layers(model, params)
    body = _write_artifact(
        format,
        model,
        params,
        out_dir,
        seq_lengths,
        batch_size,
        quantize,
        calibration,
        num_threads,
        quant_stats=quant_stats,
        keep_tensor_names=keep_tensor_names,
        device_ready=device_ready,
        vocab=vocab,
        model_info=model_info,
        **({"float_ops": tuple(float_ops)} if float_ops else {}),
    )
    _write_config(out_dir, {**cfg.to_dict(), "pad_invariant": bool(pad_invariant), "architectures": [name]})
    tokenizer_files = tokenizer.save_pretrained(out_dir) if tokenizer is not None else []
    manifest = {
        "format": format,
        "quantization": quantize,
        **(
            {"int8_ranges": "qat" if quant_stats is not None else "calibration"} if quantize == "int8" else {}
        ),
        "model_class": name,
        "max_position_embeddings": cfg.max_position_embeddings,
        "pad_token_id": cfg.pad_token_id,
        "pad_invariant": bool(pad_invariant),
        **body,
        # the model file and any external-data file it reads (ONNX: model.onnx.data)
        "size_bytes": sum(
            os.path.getsize(os.path.join(out_dir, f)) for f in body.get("files", [body["file"]])
        ),
        "tokenizer_files": [os.path.basename(p) for p in tokenizer_files],
        "clients": {
            body["file"]: common.clients(
                format, name, body.get("seq_lengths", seq_lengths), device_ready, quantize
            )
        },
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    common.write_manifest(out_dir, manifest)
    return manifest


def to_stablehlo(model: Any, params: Any, out_dir: str, **kw: Any) -> dict[str, Any]:
    """`export(..., format="stablehlo")`: symbolic batch and length, run by JAX without flax."""
    return export(model, params, out_dir, format="stablehlo", **kw)


def to_litert(model: Any, params: Any, out_dir: str, **kw: Any) -> dict[str, Any]:
    """`export(..., format="litert")`: one signature `seq_{L}` per `seq_lengths`, batch `batch_size`."""
    return export(model, params, out_dir, format="litert", **kw)


def to_onnx(model: Any, params: Any, out_dir: str, **kw: Any) -> dict[str, Any]:
    """`export(..., format="onnx")`: dynamic batch and length (`batch_size`, `sequence_length`)."""
    return export(model, params, out_dir, format="onnx", **kw)
