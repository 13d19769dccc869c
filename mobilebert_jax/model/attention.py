"""The selectable attention kernel: our own einsum attention, or `jax.nn.dot_product_attention`.

`MobileBertSelfAttention` (layers.py) runs its own attention ("default": float32 softmax, attention
dropout, HF's numerics) unless `choose_attention` picks a fused kernel:

| implementation | what runs | when `"auto"` picks it |
| --- | --- | --- |
| `"default"` | our einsum attention | everywhere else |
| `"blockwise"` | the same, one block of `QUERY_BLOCK` (128) queries at a time (`lax.map`) | CPU backend, no active attention dropout, T a static multiple of 128 above 128 |
| `"cudnn"` | `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention) | GPU backend, bf16/fp16 compute, head dim a multiple of 8 and ≤ 128, even length, no active attention dropout |
| `"xla"` | `jax.nn.dot_product_attention(implementation="xla")` | never (the portable twin of "cudnn", for tests and other backends) |
| `"integer"` | our einsum attention as a full-integer graph takes it: `softmax(s + bias) @ v`, bias 0 or -INTEGER_MASK_FILL | never (the `--quantize int8-full` export, `export/full_integer.py`) |

"blockwise" computes what "default" does, row by row the same arithmetic: on CPU the full path streams
the [B, N, T, T] scores through memory several times, a block's [B, N, 128, T] slice stays in cache
(L=512 attention ~2.5x faster). It draws no dropout masks (they would be drawn per block), so it
too runs only without active attention dropout. Exports of fixed-shape artifacts (LiteRT, ONNX) use
"default": those runtimes take no `while` loop.

"integer" is "default" in another order: the query is scaled by d**-0.5 before the first matmul (the
converter folds that into the query's weights; on the scores it is an int8 MUL whose scales XNNPACK
refuses in early layers), the probabilities are normalised before the second matmul (the converter
then writes one SOFTMAX op, which has int8 and int16 kernels; "default" divides the context instead),
and padded keys get the bias -INTEGER_MASK_FILL instead of finfo(float32).min, a
value a quantized tensor can hold beside the real scores (finfo.min would take the whole int16 range).
Each padded key then weighs exp(s - 64 - m) of the row's real maximum m: below float32 rounding
while its own score s is less than 47 above m (the fp32 export equals "default" to rounding).

The fused kernels have no attention dropout: they run in eval/inference and in training with
`attention_probs_dropout_prob=0`; asked for explicitly while dropout is active, they raise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "default", "blockwise", "cudnn", "xla", "integer")
INTEGER_MASK_FILL = 64.0  # the "integer" attention's score for a padded key
QUERY_BLOCK = 128  # query rows per block of "blockwise": 128 rows of 512 float32 scores stay in cache
_FUSED_DTYPES = (jnp.bfloat16, jnp.float16)


def choose_attention(
    requested: str,
    *,
    backend: str,
    dtype: Any,
    head_dim: int,
    seq_len: int,
    dropout_active: bool,
) -> str:
    """The implementation to run ("default", "blockwise", "cudnn" or "xla") for a request ("auto" or one
    of those).

    Args:
        requested: "auto" or a concrete implementation.
        backend: `jax.default_backend()` ("cpu", "gpu", "tpu").
        dtype: the attention compute dtype.
        head_dim, seq_len: d and T (T may be symbolic under `jax.export`).
        dropout_active: attention dropout will be applied (train mode, rate > 0).
    """
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention_implementation must be one of {IMPLEMENTATIONS}, got {requested!r}")
    fused_dtype = jnp.dtype(dtype) in [jnp.dtype(t) for t in _FUSED_DTYPES]
    blocks_ok = isinstance(seq_len, int) and seq_len > QUERY_BLOCK and seq_len % QUERY_BLOCK == 0
    if requested == "auto":
        gpu = backend in ("gpu", "cuda")
        shape_ok = head_dim % 8 == 0 and head_dim <= 128 and seq_len % 2 == 0
        if gpu and fused_dtype and shape_ok and not dropout_active:
            return "cudnn"
        return "blockwise" if backend == "cpu" and blocks_ok and not dropout_active else "default"
    if requested not in ("default", "integer") and dropout_active:
        raise ValueError(
            f"attention_implementation={requested!r} has no attention dropout; set "
            "attention_probs_dropout_prob=0 or use 'default'/'auto'"
        )
    if requested == "blockwise" and not (isinstance(seq_len, int) and seq_len % QUERY_BLOCK == 0):
        raise ValueError(
            f"attention_implementation='blockwise' needs a static length that is a multiple of "
            f"{QUERY_BLOCK}, got {seq_len}"
        )
    if requested == "cudnn" and not fused_dtype:
        raise ValueError(
            f"attention_implementation='cudnn' needs bf16 or fp16 compute, got {jnp.dtype(dtype)}"
        )
    return requested


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask_bias: jax.Array | None, num_heads: int, implementation: str
) -> tuple[jax.Array, jax.Array]:
    """`jax.nn.dot_product_attention` on projected q, k, v [B, T, N*d] → (context [B, T, N*d], probs).

    `mask_bias` is the padding bias of `encoder.attention_bias` ([B, 1, 1, T], 0 or float32 min); it is
    passed as a boolean mask, so each kernel uses a large negative number its dtype can hold. The
    probabilities [B, N, T, T] (float32) are computed apart, from q and k; XLA drops them unless the
    caller uses them (`output_attentions`).
    """
    b, t, nd = q.shape
    d = nd // num_heads
    q4, k4, v4 = (x.reshape(b, t, num_heads, d) for x in (q, k, v))  # the kernel's [B, T, N, d] layout
    mask = None
    if mask_bias is not None:
        mask = mask_bias > jnp.finfo(jnp.float32).min / 2
        if implementation == "cudnn":  # cuDNN wants the query length in the mask: [B, 1, T, T]
            mask = jnp.broadcast_to(mask, (b, 1, t, t))
    ctx = jax.nn.dot_product_attention(q4, k4, v4, mask=mask, scale=d**-0.5, implementation=implementation)
    scores = jnp.einsum("btnd,bsnd->bnts", q4, k4).astype(jnp.float32) * (d**-0.5)
    if mask_bias is not None:
        scores = scores + mask_bias
    probs = jax.nn.softmax(scores, axis=-1)
    return ctx.reshape(b, t, nd), probs
