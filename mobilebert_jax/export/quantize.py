"""Static int8 (weights and activations) with qwix's ODML providers, for the LiteRT converter.

1. `OdmlQatProvider` runs the float model on calibration text and records min/max statistics of every
   quantized tensor (`quant_stats`);
2. `OdmlConversionProvider` rebuilds the forward with fake-quant composites carrying those static
   scales; litert-converter (`qdq_conversion_mode="STATIC"`, strict) turns them into int8 tensors and
   int8 FULLY_CONNECTED kernels.

What is int8 (`RULES`): every dense layer's input and weights, and the operands of the two attention
matmuls. A dense layer's output is int8 only where its consumer is (query/key/value, the feed-forward's
first matmul: int8 FULLY_CONNECTED kernels end to end); the others (the bottlenecks, attention output,
feed-forward outputs, the classifier) write float: they run as float kernels on dequantized int8
weights and int8-rounded inputs. The trigram projection has int8 weights and float
input and output. Kept float: NoNorm, the residual adds, the attention's scaling, additive mask and
softmax (the mask's finfo(float32).min would take every activation scale with it: all-NaN outputs),
and the embedding arithmetic (the trigram concatenation is not an activation qwix can follow).

Why not int8 everywhere: with every op int8 (float only the embeddings and the softmax), the fine-tuned
full-size model agreed with its fp32 argmax on 90.8% of 272 held-out SST-2 sentences (relative logit
error 0.12, median per row 0.38); with these rules 99.6% (0.034, median 7.0e-3; a `finetune --qat`
run of the same recipe: 100%, 6.1e-3), the same size. A
per-tensor int8 scale on the dense outputs that feed the residual stream costs the accuracy (on the
tiny test model: 0.035 with these rules, 0.12-0.14 quantizing those outputs, with or without NoNorm).

The word-embedding table, the largest tensor (15.6 of 98 MB at full size), and the position table are
stored int8 with one scale per row and looked up as int8 (`int8_embeddings`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

# The nn.Dense modules of every class (their ops: the matmul and the bias add).
DENSE_MODULES = ".*/(dense|query|key|value|classifier|qa_outputs|seq_relationship)"

# (module path regex (re.fullmatch), op names or () for all, int8?): the first match decides. The
# saved QAT ranges record this table; ranges made under another table are refused.
RULES = (
    # the two attention matmuls take int8 operands, so the query/key/value projections write int8
    (".*attention/self", ("einsum",), True),
    # the trigram projection's weights (its output, summed with the positions, is float)
    (".*embeddings/embedding_transformation", (), True),
    # the lookup arithmetic, the trigram concatenation, the sums and the norm
    (".*embeddings.*", (), False),
    # int8 inputs and weights; an int8 output where the consumer is int8 too (query/key/value, the
    # feed-forward's first matmul), else a float output
    (DENSE_MODULES, (), True),
    # NoNorm, the residual adds, the attention's scaling, additive mask and softmax
    (".*", (), False),
)


def rules() -> list:
    import jax.numpy as jnp
    import qwix

    # act_batch_axes=(): one range per tensor over the whole batch. qwix's default (0,) takes each
    # example's min/max and averages them, a range below the batch's extremes that clips the largest
    # activations (one int8 matmul of a tiny model: 11% error, 1.3% with this).
    int8 = dict(weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True, act_batch_axes=())
    return [
        qwix.QuantizationRule(module_path=p, op_names=tuple(ops), **(int8 if q else {}))
        for p, ops, q in RULES
    ]


def _rules_record() -> list[list]:
    return [[p, list(ops), "int8" if q else "float"] for p, ops, q in RULES]


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


def int8_rows(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (q int8 [V, E], scale float32 [V, 1]) with table ≈ q * scale."""
    t = np.asarray(table, np.float32)
    scale = np.abs(t).max(axis=1, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(t / scale), -127, 127).astype(np.int8), scale


# The embedding tables both int8 modes store int8 with per-row scales (module name under
# MobileBertEmbeddings: what it holds at full size, float32).
INT8_TABLES = (
    "word_embeddings",  # [30522, 128], 15.6 MB: gathered by the input ids
    "position_embeddings",  # [512, 512], its first L rows folded into each signature: 0.26 MB at L=128
)


def int8_embeddings(params: Any) -> Any:
    """A flax method interceptor (`with nn.intercept_methods(...)`) under which the word- and position-
    embedding lookups (`INT8_TABLES`) read int8 copies of the tables (per-row scales) and dequantize only
    the rows they gather. Traced into an export, the word table is an int8 constant and its lookup an
    int8 GATHER (3.9 MB instead of 15.6 MB at full size); the position rows, gathered by constant ids,
    fold into an int8 constant of L rows (65 KB instead of 262 KB at L=128). Every row differs from the
    float one by at most half a step (|row|max/254)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from mobilebert_jax.model.layers import MobileBertEmbeddings

    tables = {name: int8_rows(_embedding_table(params, name)) for name in INT8_TABLES}

    def intercept(next_fun, args, kwargs, context):
        m = context.module
        if (
            context.method_name == "__call__"
            and isinstance(m, nn.Embed)
            and m.name in tables
            and isinstance(m.parent, MobileBertEmbeddings)
        ):
            q, scale = tables[m.name]
            ids = args[0] if args else kwargs["inputs"]
            rows = jnp.take(jnp.asarray(q), ids, axis=0).astype(jnp.float32)
            return (rows * jnp.take(jnp.asarray(scale), ids, axis=0)).astype(m.dtype)
        return next_fun(*args, **kwargs)

    return intercept


def with_int8_lookup(fn: Callable[..., dict], params: Any) -> Callable[..., dict]:
    """`fn` (an export forward of the model with `params`) with the int8 embedding lookups."""
    import flax.linen as nn

    lookup = int8_embeddings(params)

    def forward(*args, **kwargs):
        with nn.intercept_methods(lookup):
            return fn(*args, **kwargs)

    return forward


def _embedding_table(params: Any, name: str) -> Any:
    import jax

    found = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if [str(getattr(k, "key", k)) for k in path[-3:]] == ["embeddings", name, "embedding"]
    ]
    if len(found) != 1:
        from mobilebert_jax.export.common import ExportError

        raise ExportError(f"expected one embeddings/{name}/embedding in the params, found {len(found)}")
    return found[0]


def qat_model(model: Any) -> Any:
    """The model with the fake int8 quantization of `rules()` in its forward (qwix's ODML QAT provider):
    what `finetune --qat` trains. Apply it with `mutable=["quant_stats"]` and no stats: every call then
    quantizes with its own batch's ranges, and gradients pass straight through the rounding. Its
    attention and MLM head are those of the LiteRT export (`common.device_graph`): the CPU blockwise
    attention would observe each block's ranges apart."""
    import qwix

    from mobilebert_jax.export.common import device_graph

    return qwix.quantize_model(device_graph(model), qwix.OdmlQatProvider(rules(), strict=False))


STATS_FILE = "quant_stats.msgpack"


def save_quant_stats(folder: str, stats: Any, info: dict[str, Any]) -> str:
    """Writes FOLDER/quant_stats.msgpack (the static int8 ranges) and its description in quant_stats.json."""
    import json

    from flax import serialization

    path = os.path.join(folder, STATS_FILE)
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(serialization.to_state_dict(stats)))
    with open(os.path.join(folder, "quant_stats.json"), "w", encoding="utf-8") as f:
        json.dump({**info, "rules": _rules_record()}, f, indent=2)
        f.write("\n")
    return path


def load_quant_stats(folder: str) -> tuple[Any, dict[str, Any]] | None:
    """(stats, description) saved by `finetune --qat` in FOLDER, or None where there are none."""
    import json

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
    if info.get("rules") != _rules_record():
        from mobilebert_jax.export.common import ExportError

        raise ExportError(
            f"{path} holds int8 ranges made under other quantization rules ({info.get('rules', 'not recorded')})"
            f" than this version's {_rules_record()}: run finetune --qat again, or delete it and calibrate (--calibration-file)"
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
