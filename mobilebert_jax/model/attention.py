"""The selectable attention kernel: our own einsum attention, or `jax.nn.dot_product_attention`.

`MobileBertSelfAttention` (layers.py) runs its own attention ("default": float32 softmax, attention
dropout, HF's numerics) unless `choose_attention` picks a fused kernel:

| implementation | what runs | when `"auto"` picks it |
| --- | --- | --- |
| `"default"` | our einsum attention | everywhere else |
| `"cudnn"` | `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention) | GPU backend, bf16/fp16 compute, head dim a multiple of 8 and ≤ 128, even length, no active attention dropout |
| `"xla"` | `jax.nn.dot_product_attention(implementation="xla")` | never (the portable twin of "cudnn", for tests and other backends) |

The fused kernels have no attention dropout: they run in eval/inference and in training with
`attention_probs_dropout_prob=0`; asked for explicitly while dropout is active, they raise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "default", "cudnn", "xla")
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
    """The implementation to run ("default", "cudnn" or "xla") for a request ("auto" or one of those).

    Args:
        requested: "auto" or a concrete implementation.
        backend: `jax.default_backend()` ("cpu", "gpu", "tpu").
        dtype: the attention compute dtype.
        head_dim, seq_len: d and T.
        dropout_active: attention dropout will be applied (train mode, rate > 0).
    """
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention_implementation must be one of {IMPLEMENTATIONS}, got {requested!r}")
    fused_dtype = jnp.dtype(dtype) in [jnp.dtype(t) for t in _FUSED_DTYPES]
    if requested == "auto":
        gpu = backend in ("gpu", "cuda")
        shape_ok = head_dim % 8 == 0 and head_dim <= 128 and seq_len % 2 == 0
        return "cudnn" if gpu and fused_dtype and shape_ok and not dropout_active else "default"
    if requested != "default" and dropout_active:
        raise ValueError(
            f"attention_implementation={requested!r} has no attention dropout; set "
            "attention_probs_dropout_prob=0 or use 'default'/'auto'"
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
