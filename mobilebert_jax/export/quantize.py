"""Static int8 (weights and activations) with qwix's ODML providers, for the LiteRT converter.

1. `OdmlQatProvider` runs the float model on calibration text and records min/max statistics of every
   quantized tensor (`quant_stats`);
2. `OdmlConversionProvider` rebuilds the forward with fake-quant composites carrying those static
   scales; litert-converter (`qdq_conversion_mode="STATIC"`, strict) turns them into int8 tensors and
   int8 FULLY_CONNECTED / ADD / MUL kernels.

Kept in float: the embeddings (the trigram concatenation is not an activation qwix can follow) and
the attention scores and softmax (`.*attention/self`): the additive mask's finfo(float32).min would
take every activation scale with it (all-NaN outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

FLOAT_MODULES = (".*embeddings.*", ".*attention/self.*")


def rules() -> list:
    import jax.numpy as jnp
    import qwix

    return [
        *(qwix.QuantizationRule(module_path=p) for p in FLOAT_MODULES),
        # act_batch_axes=(): one range per tensor over the whole batch. qwix's default (0,) takes each
        # example's min/max and averages them, a range below the batch's extremes that clips the
        # largest activations (one int8 matmul of a tiny model: 11% error, 1.3% with this).
        qwix.QuantizationRule(
            module_path=".*",
            weight_qtype=jnp.int8,
            act_qtype=jnp.int8,
            act_static_scale=True,
            act_batch_axes=(),
        ),
    ]


def _positions(ids: Any) -> Any:
    import jax.numpy as jnp

    return jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32)[None, :], ids.shape)


def calibrate(model: Any, params: Any, calibration: dict[str, np.ndarray], batch_size: int = 8) -> Any:
    """qwix `quant_stats` from running the float model (fake-quant observers) over `calibration`."""
    import jax
    import qwix

    qat = qwix.quantize_model(model, qwix.OdmlQatProvider(rules(), strict=False))

    # params are an argument, not closure constants: as constants, XLA's constant folding evaluated every
    # weight's fake-quant reductions in its interpreter at compile time (> 20 min at full size)
    @jax.jit
    def observe(p, batch):
        _, upd = qat.apply(
            {"params": p}, **batch, position_ids=_positions(batch["input_ids"]), mutable=["quant_stats"]
        )
        return upd["quant_stats"]

    n = len(calibration["input_ids"])
    stats = None
    for s in range(0, n, batch_size):
        batch = {k: np.asarray(v[s : s + batch_size], np.int32) for k, v in calibration.items()}
        stats = merge_stats(stats, jax.device_get(observe(params, batch)))
    return stats


def merge_stats(a: Any, b: Any) -> Any:
    """The min/max over both (qwix's running average of per-batch ranges would clip the extremes)."""
    import jax

    if a is None:
        return b

    def one(path, x, y):
        key = str(getattr(path[-1], "key", path[-1]))
        if key == "count":
            return np.maximum(x, y)
        return np.minimum(x, y) if key.startswith("sum_of_min") else np.maximum(x, y)

    return jax.tree_util.tree_map_with_path(one, a, b)


def qat_model(model: Any) -> Any:
    """The model with the fake int8 quantization of `rules()` in its forward (qwix's ODML QAT provider):
    what `finetune --qat` trains. Apply it with `mutable=["quant_stats"]` and no stats: every call then
    quantizes with its own batch's ranges, and gradients pass straight through the rounding."""
    import qwix

    return qwix.quantize_model(model, qwix.OdmlQatProvider(rules(), strict=False))


STATS_FILE = "quant_stats.msgpack"


def save_quant_stats(folder: str, stats: Any, info: dict[str, Any]) -> str:
    """Writes FOLDER/quant_stats.msgpack (the static int8 ranges) and its description in quant_stats.json."""
    import json
    import os

    from flax import serialization

    path = os.path.join(folder, STATS_FILE)
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(serialization.to_state_dict(stats)))
    with open(os.path.join(folder, "quant_stats.json"), "w", encoding="utf-8") as f:
        json.dump({**info, "float_modules": list(FLOAT_MODULES)}, f, indent=2)
        f.write("\n")
    return path


def load_quant_stats(folder: str) -> tuple[Any, dict[str, Any]] | None:
    """(stats, description) saved by `finetune --qat` in FOLDER, or None where there are none."""
    import json
    import os

    from flax import serialization

    path = os.path.join(folder, STATS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        stats = serialization.msgpack_restore(f.read())
    info_path = os.path.join(folder, "quant_stats.json")
    info = {}
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    if info.get("float_modules", list(FLOAT_MODULES)) != list(FLOAT_MODULES):
        from mobilebert_jax.export.common import ExportError

        raise ExportError(
            f"{path} was made with float modules {info['float_modules']}, this version quantizes all but "
            f"{list(FLOAT_MODULES)}: recalibrate (delete it and pass --calibration-file)"
        )
    return stats, info


def qwix_static_int8_forward(
    model: Any, params: Any, calibration: dict[str, np.ndarray] | None, stats: Any = None
) -> Callable[..., dict]:
    """`fn(input_ids, attention_mask, token_type_ids) -> {name: array}` with static int8 fake-quant ops,
    their ranges `stats` (from `finetune --qat`) or else calibrated on `calibration`."""
    import qwix

    from mobilebert_jax.export.common import OUTPUT_FIELDS, class_name

    fields = OUTPUT_FIELDS[class_name(model)]
    if stats is None:
        stats = calibrate(model, params, calibration)
    conv = qwix.quantize_model(model, qwix.OdmlConversionProvider(rules(), params, stats, strict=False))

    def forward(input_ids, attention_mask, token_type_ids):
        out = conv.apply(
            {"params": params},
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=_positions(input_ids),
        )
        return {k: getattr(out, k) for k in fields if getattr(out, k, None) is not None}

    return forward
