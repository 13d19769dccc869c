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
        qwix.QuantizationRule(
            module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True
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

    def observe(stats, batch):
        variables = {"params": params} if stats is None else {"params": params, "quant_stats": stats}
        _, upd = qat.apply(
            variables, **batch, position_ids=_positions(batch["input_ids"]), mutable=["quant_stats"]
        )
        return upd["quant_stats"]

    first, update = jax.jit(lambda b: observe(None, b)), jax.jit(observe)
    n = len(calibration["input_ids"])
    stats = None
    for s in range(0, n, batch_size):
        batch = {k: np.asarray(v[s : s + batch_size], np.int32) for k, v in calibration.items()}
        stats = first(batch) if stats is None else update(stats, batch)
    return jax.device_get(stats)


def qwix_static_int8_forward(
    model: Any, params: Any, calibration: dict[str, np.ndarray]
) -> Callable[..., dict]:
    """`fn(input_ids, attention_mask, token_type_ids) -> {name: array}` with static int8 fake-quant ops."""
    import qwix

    from mobilebert_jax.export.common import OUTPUT_FIELDS, class_name

    fields = OUTPUT_FIELDS[class_name(model)]
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
