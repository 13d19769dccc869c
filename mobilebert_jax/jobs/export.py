"""The export job: a checkpoint → a deployable, verified LiteRT / ONNX / StableHLO model.

    report = run_export(ExportConfig(model="runs/sst2", out_dir="out/sst2-litert", format="litert"))

The model is read by the one loader (`checkpoints.loader.load_model`: an HF directory, one of our
checkpoints, a training output dir, ...). `deploy_check` is the demo's last step: the fine-tuned model
exported to LiteRT and run beside JAX on held-out pairs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from mobilebert_jax import storage
from mobilebert_jax.checkpoints.loader import LoadedModel, check_vocab, load_model, tokenizer_folder
from mobilebert_jax.jobs.config import UsageError


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What `run_export` writes (the `mobilebert-jax export` flags)."""

    # what to read: anything `load_model` reads; class default: the config's architectures
    model: str
    # folder to write (must be empty unless overwrite)
    out_dir: str
    # "stablehlo" | "litert" | "onnx"
    format: str
    # "none" | "dynamic-int8" | "int8" | "int8-full" (LiteRT: the full-integer graph)
    quantize: str = "none"
    # one LiteRT signature seq_L each; ONNX (dynamic axes) and stablehlo are verified at each
    seq_lengths: tuple[int, ...] = (128,)
    # LiteRT's fixed batch size
    batch_size: int = 1
    # real text for int8 calibration (and an error report on text for dynamic-int8): .txt or GLUE .tsv
    calibration_file: str | None = None
    # rows of it to use
    calibration_samples: int = 128
    # class to export (default: from the checkpoint's config)
    model_class: str | None = None
    # config json when none sits next to the model
    config_file: str | None = None
    # runtime threads for the check
    num_threads: int | None = None
    # write into a non-empty out_dir
    overwrite: bool = False
    # LiteRT: keep every tensor's name (by default only the signatures' inputs and outputs keep theirs)
    keep_tensor_names: bool = False
    # LiteRT: the file MediaPipe Tasks and the TFLite Task Library load as is (docs/deploy_clients.md)
    device_ready: bool = False
    # LiteRT int8-full: op types computed in float between int8 tensors ("SOFTMAX": faster on XNNPACK)
    float_ops: tuple[str, ...] = ()


def _say(msg: str) -> None:
    print(msg, flush=True)


def _load(config: ExportConfig) -> LoadedModel:
    loaded = load_model(config.model, config.model_class, config_file=config.config_file)
    if tokenizer_folder(loaded.path) is None:  # the packaged stand-in (own tokenizer files: checked on load)
        tok, vocab = loaded.tokenizer, loaded.config.vocab_size
        fits = (
            "" if tok.vocab_size <= vocab else f" ({tok.vocab_size} ids; the model's vocab_size is {vocab})"
        )
        print(
            f"export: no tokenizer files in {loaded.path}; writing the packaged uncased vocab{fits}",
            file=sys.stderr,
        )
    return loaded


def _quant_stats(config: ExportConfig, loaded: LoadedModel) -> Any:
    """The QAT run's int8 ranges saved beside the model, for a static-int8 LiteRT export; else None.
    A `--qat int8-full` model exported int8-full is checked for its recipe (its ranges are calibrated)."""
    from mobilebert_jax.export.full_integer import full_integer_qat_info
    from mobilebert_jax.export.quantize import load_quant_stats

    path = loaded.path  # a gs:// model's local copy (its folder holds the ranges the run saved beside it)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if config.quantize == "int8-full" and full_integer_qat_info(folder) is not None:
        _say("export: a --qat int8-full model; int8 ranges calibrated on --calibration-file")
    if not (config.quantize == "int8" and config.format == "litert"):
        return None
    found = load_quant_stats(folder)
    if found is None:
        return None
    _say("export: int8 ranges from the QAT run (quant_stats.msgpack), not recalibrated")
    return found[0]


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Exports `config.model` and verifies it; returns the manifest (`export.json`'s content).

    Raises:
        UsageError: int8 without calibration text or QAT ranges.
        ExportError: the conversion or its verification failed.
    """
    from mobilebert_jax import export as ex

    if storage.isdir(config.out_dir) and storage.listdir(config.out_dir) and not config.overwrite:
        raise ex.ExportError(f"{config.out_dir} exists and is not empty (pass --overwrite)")
    loaded = _load(config)
    model, params = loaded.build()
    tok = loaded.tokenizer
    if config.calibration_file or config.device_ready:  # the tokenizer's ids are fed or shipped
        check_vocab(tok, loaded.config, packaged=loaded.packaged_tokenizer)
    stats = _quant_stats(config, loaded)
    calibration = None
    if config.calibration_file:
        texts = ex.read_calibration_file(config.calibration_file)
        calibration = ex.calibration_batch(
            texts, tok, max(config.seq_lengths), limit=config.calibration_samples
        )
    elif (config.quantize == "int8" and stats is None) or config.quantize == "int8-full":
        raise UsageError(f"--quantize {config.quantize} needs --calibration-file (real text to calibrate on)")
    _say(
        f"export: {type(model).__name__} → {config.format} ({config.quantize}), lengths "
        f"{list(config.seq_lengths)}, batch {config.batch_size}"
    )
    out = config.out_dir
    manifest: dict[str, Any] = {}

    def write(tmp: str) -> None:
        manifest.update(
            ex.export(
                model,
                params,
                tmp,
                format=config.format,
                quantize=config.quantize,
                seq_lengths=list(config.seq_lengths),
                batch_size=config.batch_size,
                tokenizer=tok,
                calibration=calibration,
                quant_stats=stats,
                num_threads=config.num_threads,
                keep_tensor_names=config.keep_tensor_names,
                device_ready=config.device_ready,
                float_ops=config.float_ops,
                overwrite=True,
            )
        )

    # written beside OUT_DIR, then renamed into place: a reader sees the old export or the new one
    storage.replace_dir(out, write)
    return manifest


# ---------------------------------------------------------------------------------------------------
# The demo's deploy check
# ---------------------------------------------------------------------------------------------------
def _read_pairs(path: str, limit: int | None) -> tuple[list, list[str]]:
    """(texts or (a, b) pairs, labels) from a GLUE-style TSV with a header."""
    with storage.open(path, encoding="utf-8") as f:
        rows = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    header, rows = rows[0], rows[1 : limit + 1 if limit else None]
    for a, b in (("question", "sentence"), ("sentence1", "sentence2"), ("sentence", None)):
        if a in header and (b is None or b in header):
            ia, ib = header.index(a), (header.index(b) if b else None)
            texts = [(r[ia], r[ib]) if ib is not None else r[ia] for r in rows]
            return texts, [r[header.index("label")] if "label" in header else "" for r in rows]
    raise ValueError(f"{path}: no question/sentence, sentence1/sentence2 or sentence columns in {header}")


def _missing_export_extra() -> list[str]:
    import importlib.util

    modules = ("litert_converter", "ai_edge_litert", "litert_quantizer")
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _print_deploy_table(results: dict[str, Any]) -> None:
    print(f"{'':22s} {'ms (B=1)':>9s} {'agrees w/ JAX':>14s} {'logit err':>10s} {'size MB':>8s}")
    print(f"{'JAX jit':22s} {results['jax']['ms']:9.2f} {'-':>14s} {'-':>10s} {'-':>8s}")
    for name in ("litert-fp32", "litert-dynamic-int8"):
        r = results[name]
        print(
            f"{name:22s} {r['ms']:9.2f} {100 * r['agreement_with_jax']:13.1f}% {r['rel_logit_error']:10.1e} "
            f"{r['size_mb']:8.1f}"
        )


def deploy_check(
    output_dir: str, eval_file: str, max_seq_length: int, limit: int | None = None, latency_rows: int = 100
) -> dict[str, Any] | None:
    """The user's last step: OUT/hf_model → LiteRT fp32 and dynamic-int8 (OUT/litert-*), run in LiteRT on
    the held-out pairs at batch 1; prints argmax agreement with JAX, logit error and latency beside JAX."""
    import statistics
    import time

    import jax
    import numpy as np

    from mobilebert_jax import export as ex
    from mobilebert_jax.export.common import make_forward, rel_err

    missing = _missing_export_extra()
    if missing:
        _say(
            f"deploy: skipped, the export extra is not installed (missing {missing}); "
            "pip install 'mobilebert-jax[export]' (scripts/setup.sh does)"
        )
        return None
    loaded = load_model(storage.join(output_dir, "hf_model"))
    model, params = loaded.build()
    texts, _ = _read_pairs(eval_file, limit)
    batch = ex.calibration_batch(texts, loaded.tokenizer, max_seq_length, limit=len(texts))  # same tokens
    n = len(batch["input_ids"])
    fwd = jax.jit(make_forward(model, params))

    def rows(fn) -> tuple[np.ndarray, float]:
        out, ts = [], []
        for i in range(n):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            t0 = time.perf_counter()
            out.append(np.asarray(fn(one)["logits"]))
            if i < latency_rows:
                ts.append(time.perf_counter() - t0)
        return np.concatenate(out), statistics.median(ts[1:] or ts) * 1e3

    jax_logits, jax_ms = rows(lambda b: fwd(**b))
    results: dict[str, Any] = {"pairs": n, "max_seq_length": max_seq_length, "jax": {"ms": jax_ms}}
    _say(f"deploy: exporting {output_dir}/hf_model to LiteRT (fp32, dynamic-int8), {n} held-out pairs")
    for q in ("none", "dynamic-int8"):
        name = "litert-" + ("fp32" if q == "none" else q)
        out_dir = storage.join(output_dir, name)
        m = ex.to_litert(
            model,
            params,
            out_dir,
            seq_lengths=(max_seq_length,),
            quantize=q,
            tokenizer=loaded.tokenizer,
            overwrite=True,
        )
        rt = ex.load_runtime(out_dir, num_threads=os.cpu_count())
        logits, ms = rows(lambda b, rt=rt: rt(**b))
        results[name] = {
            "ms": ms,
            "agreement_with_jax": float(np.mean(logits.argmax(-1) == jax_logits.argmax(-1))),
            "rel_logit_error": rel_err(logits, jax_logits),
            "size_mb": m["size_bytes"] / 1e6,
        }
    _print_deploy_table(results)
    storage.write_json(storage.join(output_dir, "deploy_results.json"), results)
    return results
