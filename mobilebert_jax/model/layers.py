"""MobileBERT encoder as Flax linen modules, numerically equal to HF transformers' PyTorch model.

Module and parameter names mirror the PyTorch module tree (`embeddings/word_embeddings`,
`encoder/layer/3/attention/self/query`, `ffn/0/output/LayerNorm`), so weight ports are a table.
Shapes: B batch, T length, E embedding_size, H hidden_size, I true_hidden_size, M intermediate_size,
N heads, d head width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.model import attention
from mobilebert_jax.model.attention import choose_attention, fused_attention
from mobilebert_jax.model.config import MobileBertConfig

Dtype = Any
Array = jax.Array

# Partitioning is by logical axis name only; `mobilebert_jax.training.sharding` maps names to mesh axes.
with_axes = nn.with_logical_partitioning
constrain = nn.with_logical_constraint


def token_major_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`Dense`'s contraction of `[..., in]` with `[in, out]`; on CPU one 2-D `[B·T, in] @ [in, out]` GEMM.

    Same math and params as `nn.Dense`. The point is the backward pass: autodiff of the 2-D product gives
    the weight gradient as `xᵀ·dy` over two 2-D operands, which XLA CPU runs as one GEMM; over the 3-D
    `[B, T, in]` operand it contracts two axes at once, which XLA CPU runs slower (measured in
    docs/benchmarks.md). Other backends keep `nn.Dense`'s contraction.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    token_major = lhs.ndim > 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,)
    if token_major and not (lb or rb) and jax.default_backend() == "cpu":
        y = jax.lax.dot_general(
            lhs.reshape(-1, lhs.shape[-1]),
            rhs,
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        return y.reshape(*lhs.shape[:-1], rhs.shape[-1])
    return jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
    )


# HF's PyTorch builds `embeddings.LayerNorm` and `layer.N.output.LayerNorm` without eps: torch's 1e-5.
PT_DEFAULT_LN_EPS = 1e-5


def activation(name: str) -> Callable[[Array], Array]:
    """HF `ACT2FN` semantics ("gelu" is the exact erf form, "gelu_new" the tanh approximation)."""
    table: dict[str, Callable[[Array], Array]] = {
        "relu": jax.nn.relu,
        "relu6": jax.nn.relu6,
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "linear": lambda x: x,
    }
    return table[name]


class _Base(nn.Module):
    """Fields every module takes: the config, compute dtype, storage dtype, matmul precision."""

    config: MobileBertConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    # attention kernel: "auto" | "default" | "blockwise" | "cudnn" | "xla" (model/attention.py says
    # which runs when)
    attention_implementation: str = "auto"
    # zero the word embeddings where attention_mask == 0 before the trigram concat, so that padding
    # changes no real position's output (HF PyTorch, and this option off, let the [PAD] row leak in)
    pad_invariant: bool = False

    def dense(self, features: int, axes: tuple[str | None, str | None], name: str, use_bias: bool = True):
        """A Dense with params `name/kernel` (in, out) = PT weight.T and `name/bias`."""
        return nn.Dense(
            features,
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            kernel_init=with_axes(nn.initializers.normal(self.config.initializer_range), axes),
            bias_init=with_axes(nn.initializers.zeros, (axes[1],)),
            dot_general=token_major_dot_general,
            name=name,
        )

    def norm(self, features: int, axis_name: str, eps: float, name: str = "LayerNorm"):
        """NoNorm or a LayerNorm with PyTorch's two-pass variance, per `normalization_type`."""
        if self.config.normalization_type == "no_norm":
            return NoNorm(features, axis_name, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        return nn.LayerNorm(
            epsilon=eps,
            use_fast_variance=False,  # the fast variance loses ~1e-1 at means of 1e3 (REFERENCE §0.8)
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            scale_init=with_axes(nn.initializers.ones, (axis_name,)),
            bias_init=with_axes(nn.initializers.zeros, (axis_name,)),
            name=name,
        )

    @property
    def kw(self) -> dict[str, Any]:
        return dict(
            config=self.config,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            attention_implementation=self.attention_implementation,
            pad_invariant=self.pad_invariant,
        )


class NoNorm(nn.Module):
    """MobileBERT's NoNorm: `x * weight + bias`, elementwise; params named as in PyTorch."""

    features: int
    axis_name: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        axes = (self.axis_name,)
        w = self.param("weight", with_axes(nn.initializers.ones, axes), (self.features,), self.param_dtype)
        b = self.param("bias", with_axes(nn.initializers.zeros, axes), (self.features,), self.param_dtype)
        # In float32: this op carries the residual stream, whose values reach 1e7.
        y = x.astype(jnp.float32) * w.astype(jnp.float32) + b.astype(jnp.float32)
        return y.astype(self.dtype)


class MobileBertEmbeddings(_Base):
    """Word (E) → trigram [t+1, t, t-1] (3E) → projection (H) + position + token type → norm.

    With `pad_invariant`, the [B, T, E] word embeddings at positions where `attention_mask` is 0 are
    zeroed before the trigram: the last real token then sees the zero that ends an unpadded text
    instead of the [PAD] row, so each real position equals the text run alone, unpadded (attention
    already hides padded keys; position and type embeddings at padded positions reach no real one).
    """

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids,
        position_ids,
        inputs_embeds=None,
        deterministic=True,
        attention_mask=None,
    ):
        """Returns [B, T, H]. `inputs_embeds` is the pre-trigram [B, T, E] tensor, as in HF;
        `attention_mask` [B, T] is read only with `pad_invariant`."""
        cfg = self.config
        word = nn.Embed(
            cfg.vocab_size,
            cfg.embedding_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=with_axes(
                _normal_zero_row(cfg.initializer_range, cfg.pad_token_id), ("vocab", "word_embed")
            ),
            name="word_embeddings",
        )
        if inputs_embeds is None:
            x = word(input_ids)
            # PT's padding_idx: the lookup sends no gradient into the pad row (the tied decoder still does).
            x = jnp.where((input_ids == cfg.pad_token_id)[..., None], jax.lax.stop_gradient(x), x)
        else:
            x = inputs_embeds.astype(self.dtype)
            if self.is_initializing():
                word(jnp.zeros((1, 1), jnp.int32))  # the table must exist: the MLM decoder is tied to it
        if self.pad_invariant and attention_mask is not None:
            x = jnp.where((jnp.asarray(attention_mask) > 0)[..., None], x, jnp.zeros((), x.dtype))
        if cfg.trigram_input:
            # shifts by padding (not concatenating a zero row): jax2onnx keeps a symbolic length through pad
            nxt = jnp.pad(x[:, 1:], ((0, 0), (0, 1), (0, 0)))
            prv = jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0)))
            x = jnp.concatenate([nxt, x, prv], axis=-1)
        if cfg.trigram_input or cfg.embedding_size != cfg.hidden_size:
            x = self.dense(cfg.hidden_size, (None, "embed"), "embedding_transformation")(x)
        init = nn.initializers.normal(cfg.initializer_range)
        pos = nn.Embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            embedding_init=with_axes(init, (None, "embed")),
            name="position_embeddings",
        )
        typ = nn.Embed(
            cfg.type_vocab_size,
            cfg.hidden_size,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            embedding_init=with_axes(init, (None, "embed")),
            name="token_type_embeddings",
        )
        h = self._sum(x, pos(position_ids), typ(token_type_ids))
        h = self.norm(cfg.hidden_size, "embed", PT_DEFAULT_LN_EPS)(h)
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        return constrain(h.astype(self.dtype), ("batch", "length", "embed"))

    def _sum(self, x, pos, typ):
        """[B, T, H] projected trigram + position rows + token-type rows, in HF's add order (so the float
        rounding matches); a method so that `finetune --qat int8-full` (export/full_integer.py) reaches it."""
        return (x.astype(jnp.float32) + pos) + typ


def _normal_zero_row(stddev: float, row: int):
    def init(key, shape, dtype=jnp.float32):
        return nn.initializers.normal(stddev)(key, shape, dtype).at[row].set(0)

    return init


class DenseNorm(_Base):
    """PT's Bottleneck/Output pattern: `Norm(dropout(dense(x)) + residual)`."""

    features: int = 0
    axes: tuple = (None, None)
    norm_axis: str = "bottleneck"
    eps: float = 1e-12
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, residual=None, deterministic: bool = True):
        y = self.dense(self.features, self.axes, "dense")(x)
        if self.dropout > 0:
            y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = y.astype(jnp.float32)
        if residual is not None:
            y = y + residual.astype(jnp.float32)
        return self.norm(self.features, self.norm_axis, self.eps)(y)


class MobileBertBottleneck(_Base):
    """`bottleneck.input` (H→I, the attention residual) and, with kq sharing, `bottleneck.attention`."""

    @nn.compact
    def __call__(self, h):
        cfg = self.config
        mk = lambda name: DenseNorm(  # noqa: E731
            **self.kw,
            features=cfg.true_hidden_size,
            axes=("embed", "bottleneck"),
            eps=cfg.layer_norm_eps,
            name=name,
        )
        li = mk("input")(h)
        if cfg.use_bottleneck_attention:
            return li, li, li, li
        if cfg.key_query_shared_bottleneck:
            s = mk("attention")(h)
            return li, s, s, h
        return li, h, h, h


class MobileBertSelfAttention(_Base):
    """Scaled dot-product attention; context [B, T, I] and probabilities [B, N, T, T].

    The probabilities returned are the softmax before dropout (a distribution, as attention transfer
    needs); HF's eager path returns them after dropout. In eval mode the two are the same.
    """

    @nn.compact
    def __call__(self, q_in, k_in, v_in, mask_bias, deterministic: bool = True):
        cfg = self.config
        n, d = cfg.num_attention_heads, cfg.head_dim
        in_axis = "bottleneck" if q_in.shape[-1] == cfg.true_hidden_size else "embed"
        v_axis = "bottleneck" if v_in.shape[-1] == cfg.true_hidden_size else "embed"
        q = self.dense(n * d, (in_axis, "heads"), "query")(q_in)
        k = self.dense(n * d, (in_axis, "heads"), "key")(k_in)
        v = self.dense(n * d, (v_axis, "heads"), "value")(v_in)
        b, t = q.shape[:2]
        dropout_active = not deterministic and cfg.attention_probs_dropout_prob > 0
        impl = choose_attention(
            self.attention_implementation,
            backend=jax.default_backend(),
            dtype=self.dtype,
            head_dim=d,
            seq_len=t,
            dropout_active=dropout_active,
        )
        if impl in ("cudnn", "xla"):
            return fused_attention(q, k, v, mask_bias, n, impl)
        if impl == "integer":
            # the scaling on the query projection, where the converter folds it into its weights: on
            # the [B, N, T, T] scores it is an int8 MUL whose scales XNNPACK cannot take in early layers
            q = q * d**-0.5
        # [B, N, T, d]: heads-major operands make both attention matmuls plain batched GEMMs.
        q, k, v = (x.reshape(b, t, n, d).transpose(0, 2, 1, 3) for x in (q, k, v))
        if impl == "blockwise":
            return self._blockwise(q, k, v, mask_bias)
        if impl == "integer":
            probs = self._integer_softmax(self._integer_scores(q, k, mask_bias))
            drop = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
            ctx = jnp.einsum("bnqk,bnkd->bnqd", drop.astype(self.dtype), v, precision=self.precision)
            return ctx.transpose(0, 2, 1, 3).reshape(b, t, n * d), probs
        scores = self._scores(q, k, mask_bias)
        # softmax(s) @ v computed as (exp(s - max) @ v) / sum(exp(s - max)): the normalisation moves
        # from the [B, N, T, T] probabilities to the [B, N, T, d] context (same math, rounding ~1e-7).
        # Dropout on the probabilities commutes with the per-row division, so it applies to exp(...).
        m = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
        e = jnp.exp(scores - m)
        denom = jnp.sum(e, axis=-1, keepdims=True)
        probs = e / denom  # float32; only materialised when a caller uses it (output_attentions)
        e = nn.Dropout(cfg.attention_probs_dropout_prob)(e, deterministic=deterministic)
        ctx = jnp.einsum("bnqk,bnkd->bnqd", e.astype(self.dtype), v, precision=self.precision)
        ctx = (ctx.astype(jnp.float32) / denom).astype(self.dtype)
        return ctx.transpose(0, 2, 1, 3).reshape(b, t, n * d), probs

    def _scores(self, q, k, mask_bias):
        """Float32 scaled scores [B, N, Tq, Tk] (plus the padding bias) of heads-major q and k."""
        scores = jnp.einsum("bnqd,bnkd->bnqk", q, k, precision=self.precision).astype(jnp.float32)
        scores = scores * (q.shape[-1] ** -0.5)
        return scores if mask_bias is None else scores + mask_bias

    # The "integer" attention's two steps are methods so that `finetune --qat int8-full`'s fake
    # quantization (export/full_integer.py) reaches the tensors the full-integer graph quantizes.
    def _integer_scores(self, q, k, mask_bias):
        """Scores [B, N, Tq, Tk] of the pre-scaled query plus the padding bias (0, or
        -INTEGER_MASK_FILL at padded keys: encoder.py), as two int8 ops of the full-integer graph."""
        scores = self._integer_matmul(q, k)
        return scores if mask_bias is None else scores + mask_bias

    def _integer_matmul(self, q, k):
        return jnp.einsum("bnqd,bnkd->bnqk", q, k, precision=self.precision).astype(jnp.float32)

    def _integer_softmax(self, scores):
        return jax.nn.softmax(scores, axis=-1)

    def _blockwise(self, q, k, v, mask_bias):
        """The same attention over blocks of `attention.QUERY_BLOCK` queries, one block at a time
        (`lax.map`; model/attention.py says when it runs). Each query row's softmax sees only its own
        row, so every row is computed as on the full path. The probabilities are computed apart and
        dropped by XLA unless the caller uses them.
        """
        b, n, t, d = q.shape
        qb = attention.QUERY_BLOCK
        blocks = q.reshape(b, n, t // qb, qb, d).transpose(2, 0, 1, 3, 4)

        def block(qb):
            s = self._scores(qb, k, mask_bias)
            e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
            ctx = jnp.einsum("bnqk,bnkd->bnqd", e.astype(self.dtype), v, precision=self.precision)
            return (ctx.astype(jnp.float32) / jnp.sum(e, axis=-1, keepdims=True)).astype(self.dtype)

        ctx = jax.lax.map(block, blocks)  # [T/128, B, N, 128, d]
        probs = jax.nn.softmax(self._scores(q, k, mask_bias), axis=-1)
        return ctx.transpose(1, 0, 3, 2, 4).reshape(b, t, n * d), probs


class MobileBertAttention(_Base):
    """`attention.self` then `attention.output` (dense + norm with the bottlenecked residual)."""

    @nn.compact
    def __call__(self, q_in, k_in, v_in, residual, mask_bias, deterministic: bool = True):
        cfg = self.config
        ctx, probs = MobileBertSelfAttention(**self.kw, name="self")(
            q_in, k_in, v_in, mask_bias, deterministic
        )
        out = DenseNorm(
            **self.kw,
            features=cfg.true_hidden_size,
            axes=("heads", "bottleneck"),
            eps=cfg.layer_norm_eps,
            dropout=0.0 if cfg.use_bottleneck else cfg.hidden_dropout_prob,
            name="output",
        )(ctx, residual, deterministic)
        return out, probs


class MobileBertIntermediate(_Base):
    """`intermediate`: act(Dense_I→M)."""

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        return activation(cfg.hidden_act)(
            self.dense(cfg.intermediate_size, ("bottleneck", "mlp"), "dense")(x)
        )


class MobileBertFFN(_Base):
    """One of the F-1 stacked FFNs (`ffn.j`): Norm(Dense_M→I(act(Dense_I→M(a))) + a)."""

    @nn.compact
    def __call__(self, a):
        cfg = self.config
        m = MobileBertIntermediate(**self.kw, name="intermediate")(a)
        return DenseNorm(
            **self.kw,
            features=cfg.true_hidden_size,
            axes=("mlp", "bottleneck"),
            eps=cfg.layer_norm_eps,
            name="output",
        )(m, a)


class MobileBertFFNStack(_Base):
    """Container `ffn` holding `ffn/0 .. ffn/F-2`."""

    @nn.compact
    def __call__(self, a):
        for j in range(self.config.num_feedforward_networks - 1):
            a = MobileBertFFN(**self.kw, name=str(j))(a)
        return a


class MobileBertOutput(_Base):
    """`output`: dense M→I, norm (eps 1e-5 quirk), then `output.bottleneck` I→H with the layer input."""

    @nn.compact
    def __call__(self, m, a, h, deterministic: bool = True):
        cfg = self.config
        o = self.dense(cfg.true_hidden_size, ("mlp", "bottleneck"), "dense")(m)
        if not cfg.use_bottleneck:
            o = nn.Dropout(cfg.hidden_dropout_prob)(o, deterministic=deterministic)
        o = o.astype(jnp.float32) + a.astype(jnp.float32)
        o = self.norm(cfg.true_hidden_size, "bottleneck", PT_DEFAULT_LN_EPS)(o)
        if not cfg.use_bottleneck:
            return o
        return DenseNorm(
            **self.kw,
            features=cfg.hidden_size,
            axes=("bottleneck", "embed"),
            norm_axis="embed",
            eps=cfg.layer_norm_eps,
            dropout=cfg.hidden_dropout_prob,
            name="bottleneck",
        )(o, h, deterministic)


class MobileBertLayer(_Base):
    """One MobileBERT block: h [B, T, H] → [B, T, H], plus attention probs [B, N, T, T]."""

    @nn.compact
    def __call__(self, h, mask_bias, deterministic: bool = True):
        cfg = self.config
        if cfg.use_bottleneck:
            li, q_in, k_in, v_in = MobileBertBottleneck(**self.kw, name="bottleneck")(h)
        else:
            li = q_in = k_in = v_in = h
        a, probs = MobileBertAttention(**self.kw, name="attention")(
            q_in, k_in, v_in, li, mask_bias, deterministic
        )
        if cfg.num_feedforward_networks > 1:
            a = MobileBertFFNStack(**self.kw, name="ffn")(a)
        m = MobileBertIntermediate(**self.kw, name="intermediate")(a)
        out = MobileBertOutput(**self.kw, name="output")(m, a, h, deterministic)
        return constrain(out.astype(self.dtype), ("batch", "length", "embed")), probs
