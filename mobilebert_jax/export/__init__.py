"""Export to LiteRT (`.tflite`), ONNX and StableHLO, verified in the real runtimes.

    from mobilebert_jax import export
    manifest = export.to_litert(model, params, "out/", seq_lengths=(128, 384), tokenizer=tok)
    rt = export.load_runtime("out/")          # LiteRT, onnxruntime or JAX (stablehlo), per export.json
    rt(input_ids, attention_mask, token_type_ids)["logits"]

Needs the `export` extra (`pip install 'mobilebert-jax[export]'`); TensorFlow and torch are not used.
"""

from mobilebert_jax.export.api import (
    FORMATS,
    calibration_batch,
    export,
    read_calibration_file,
    to_litert,
    to_onnx,
    to_stablehlo,
)
from mobilebert_jax.export.common import FP32_TOLERANCE, OUTPUT_FIELDS, QUANTIZATIONS, ExportError
from mobilebert_jax.export.runtime import Runtime, load_runtime
from mobilebert_jax.export.stablehlo_runtime import StableHLOCompatibilityError, load_stablehlo

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "OUTPUT_FIELDS",
    "FP32_TOLERANCE",
    "ExportError",
    "StableHLOCompatibilityError",
    "Runtime",
    "export",
    "to_litert",
    "to_onnx",
    "to_stablehlo",
    "load_runtime",
    "load_stablehlo",
    "calibration_batch",
    "read_calibration_file",
]
