"""The encoder stack and `MobileBertModel` (embeddings → L layers → pooler), with HF's inputs.

Shapes: B batch, T length, H hidden_size. The heads built on `MobileBertModel` live in `heads.py`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.model import attention
from mobilebert_jax.model.layers import MobileBertEmbeddings, MobileBertLayer, _Base
from mobilebert_jax.model.outputs import MobileBertModelOutput


def _is_concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def _check_ids(name: str, x, upper: int, upper_name: str) -> None:
    """Raises a ValueError naming the bad id and where it is (only for concrete inputs)."""
    if not _is_concrete(x):
        return
    a = np.asarray(x)
    if a.size == 0:
        return
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    bad = (a < 0) | (a >= upper)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}{list(idx)} = {int(a[idx])} is out of range [0, {upper}) ({upper_name}={upper})"
        )


def attention_bias(attention_mask: jax.Array | None, dtype=jnp.float32) -> jax.Array | None:
    """[B, T] mask (1 = attend) → additive [B, 1, 1, T] bias: 0 or finfo(float32).min, as HF PyTorch."""
    if attention_mask is None:
        return None
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(dtype).min).astype(dtype)


class MobileBertEncoder(_Base):
    """`encoder/layer/{i}` (or one scanned `encoder/layer` with a leading layer axis).

    `scan_layers` chooses the param layout: False (default) is HF's `layer/0 .. layer/L-1`, True one
    stacked `layer` subtree with a leading [L] axis. `unroll_layers` chooses how the loop layout runs
    (same math either way; float rounding differs):
      - True: the L layers as separate ops. Best for small inputs: at B=1..8, L=128 on CPU a scan's
        per-iteration overhead and its per-call stack of the layer params cost 10-50% of the time.
        Compiles 3-4x slower than the scan.
      - False: the per-layer params are stacked inside `apply` and the layers run as one `lax.scan` (the
        stack costs one copy of the layer weights per call). Best for large inputs: unrolled, XLA's CPU
        fusions re-read earlier layers' residuals and lose 15-40% at 4096 tokens and more.
      - None (default): unrolled when the input has at most `AUTO_UNROLL_MAX_TOKENS` (1024) tokens
        (B·T), else the scan; shapes are static under jit, so the choice is made once per compiled shape
        (symbolic shapes, as in `jax.export` with a symbolic batch, take the scan).
    """

    scan_layers: bool = False
    remat: bool = False
    unroll_layers: bool | None = None

    @nn.compact
    def __call__(self, h, mask_bias, deterministic=True, output_hidden_states=False, output_attentions=False):
        cfg = self.config
        L = cfg.num_hidden_layers
        layer_cls = nn.remat(MobileBertLayer, static_argnums=(3,)) if self.remat else MobileBertLayer
        if self.scan_layers:

            def body(layer, carry, bias):
                out, probs = layer(carry, bias, deterministic)
                return out, (out if output_hidden_states else None, probs if output_attentions else None)

            scanned = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,),
                length=L,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            h_out, (hs, probs) = scanned(layer_cls(**self.kw, name="layer"), h, mask_bias)
            return _split_outputs(h, h_out, hs, probs, L, output_hidden_states, output_attentions)
        container = _LayerList(
            **self.kw, layer_cls=layer_cls, remat=self.remat, unroll=self.unroll_layers, name="layer"
        )
        return container(h, mask_bias, deterministic, output_hidden_states, output_attentions)


def _split_outputs(h_in, h_out, hs, probs, L, output_hidden_states, output_attentions):
    """(last, all hidden states or None, attentions or None) from a scan's stacked [L, ...] outputs."""
    all_h = (h_in,) + tuple(hs[i] for i in range(L)) if output_hidden_states else None
    attn = tuple(probs[i] for i in range(L)) if output_attentions else None
    return h_out, all_h, attn


AUTO_UNROLL_MAX_TOKENS = 1024
"""`unroll_layers=None` unrolls the layers up to this many tokens (B·T) per call, else scans them.

Measured on a 2-core AVX-512 CPU, full-size SeqCls inference, same-run ratios against HF PT
(benchmarks/bench.py --layers unroll / scan), unrolled vs scanned: B1L128 1.05x vs 0.51x, B2L128 1.43x
vs 0.97x, B4L128 1.41x vs 1.29x, B8L128 1.81x vs 1.64x, B1L512 1.57x vs 1.33x; above, the scan wins:
B32L128 1.31x vs 1.81x, B8L512 1.43x vs 1.70x, B32L512 1.91x vs 3.05x."""


def unroll_for(unroll: bool | None, shape: tuple) -> bool:
    """Whether the `layer/{i}` loop runs unrolled for an input of `shape` ([B, T, ...]): `unroll` when
    given, else B·T <= `AUTO_UNROLL_MAX_TOKENS` (False for symbolic shapes)."""
    if unroll is not None:
        return bool(unroll)
    b, t = shape[0], shape[1]
    return isinstance(b, int) and isinstance(t, int) and b * t <= AUTO_UNROLL_MAX_TOKENS


class _LayerList(_Base):
    """Container named `layer` whose children are `0 .. L-1`, as PT's ModuleList.

    Unless unrolled (`unroll`, or `unroll=None` and a small input: `unroll_for`), `apply` under a jax
    transform (jit, grad) stacks the children's params and runs one `lax.scan` over them. Init always
    creates the children one by one, so the tree and its init values do not depend on it.
    """

    layer_cls: Any = MobileBertLayer
    remat: bool = False
    unroll: bool | None = None

    @nn.compact
    def __call__(self, h, mask_bias, deterministic, output_hidden_states, output_attentions):
        L = self.config.num_hidden_layers
        # Eagerly (no jit), a scan would compile anew on every call: op-by-op unrolled layers are faster.
        traced = isinstance(h, jax.core.Tracer)
        if not unroll_for(self.unroll, h.shape) and traced and not self.is_initializing() and L > 1:
            return self._scanned(h, mask_bias, deterministic, output_hidden_states, output_attentions)
        all_h = [h] if output_hidden_states else None
        attn = [] if output_attentions else None
        for i in range(L):
            h, probs = self.layer_cls(**self.kw, name=str(i))(h, mask_bias, deterministic)
            if output_hidden_states:
                all_h.append(h)
            if output_attentions:
                attn.append(probs)
        return h, (tuple(all_h) if all_h is not None else None), (tuple(attn) if attn is not None else None)

    def _scanned(self, h, mask_bias, deterministic, output_hidden_states, output_attentions):
        L = self.config.num_hidden_layers
        params = nn.meta.unbox(self.variables.get("params", {}))
        missing = [str(i) for i in range(L) if str(i) not in params]
        if missing:
            raise ValueError(
                f"encoder/layer has no params for layer(s) {missing} of num_hidden_layers={L} "
                f"(present: {sorted(params, key=lambda k: (len(k), k))})"
            )
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[str(i)] for i in range(L)))
        layer = MobileBertLayer(**self.kw, parent=None)  # unbound: applied to one layer's params
        keys = None if deterministic else jax.random.split(self.make_rng("dropout"), L)

        def body(carry, xs):
            p, key = xs
            rngs = None if key is None else {"dropout": key}
            out, probs = layer.apply({"params": p}, carry, mask_bias, deterministic, rngs=rngs)
            return out, (out if output_hidden_states else None, probs if output_attentions else None)

        if self.remat:
            body = jax.checkpoint(body)
        h_out, (hs, probs) = jax.lax.scan(body, h, (stacked, keys))
        return _split_outputs(h, h_out, hs, probs, L, output_hidden_states, output_attentions)


class MobileBertPooler(_Base):
    """CLS vector [B, H], through tanh(Dense) when `classifier_activation` (else no params)."""

    @nn.compact
    def __call__(self, h):
        c = h[:, 0]
        if not self.config.classifier_activation:
            return c
        return jnp.tanh(self.dense(self.config.hidden_size, ("embed", None), "dense")(c))


class _ModelBase(_Base):
    """Fields shared by all eight public classes.

    `scan_layers`: stacked `[L, ...]` layer params instead of HF's `layer/{i}` tree. `remat`:
    recompute each layer in the backward pass. `unroll_layers`: run the `layer/{i}` tree as L separate
    layers (True), as one scan over its stacked params (False), or by the input size (None, the default:
    unrolled up to `AUTO_UNROLL_MAX_TOKENS` tokens); see `MobileBertEncoder`. `pad_invariant` (a field of
    every module, set with `model.clone(pad_invariant=True)`): zero the word embeddings where
    `attention_mask` is 0 before the trigram, so each text's outputs at its real positions equal HF
    PyTorch's on that text unpadded, whatever the batch and padding (off: equal to HF on the padded batch;
    see `MobileBertEmbeddings`).
    """

    scan_layers: bool = False
    remat: bool = False
    unroll_layers: bool | None = None


class MobileBertModel(_ModelBase):
    """The bare encoder. Params: `embeddings`, `encoder`, `pooler` (when it has parameters)."""

    add_pooling_layer: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MobileBertModelOutput:
        """Inputs [B, T] (ints; `inputs_embeds` [B, T, E]); returns a `MobileBertModelOutput`."""
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if getattr(input_ids, "ndim", None) != 2:
                raise ValueError(f"input_ids must have shape [batch, length], got {np.shape(input_ids)}")
            b, t = input_ids.shape
        else:
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != cfg.embedding_size:
                raise ValueError(
                    f"inputs_embeds must have shape [batch, length, embedding_size={cfg.embedding_size}], "
                    f"got {inputs_embeds.shape}"
                )
            b, t = inputs_embeds.shape[:2]
        if t > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {t} exceeds max_position_embeddings={cfg.max_position_embeddings}; "
                "truncate the input (e.g. tokenizer max_length)"
            )
        for name, x in (
            ("attention_mask", attention_mask),
            ("token_type_ids", token_type_ids),
            ("position_ids", position_ids),
        ):
            if x is not None and tuple(x.shape) != (b, t):
                raise ValueError(f"{name} must have shape {(b, t)} like the input, got {tuple(x.shape)}")
        _check_ids("input_ids", input_ids, cfg.vocab_size, "vocab_size")
        _check_ids("token_type_ids", token_type_ids, cfg.type_vocab_size, "type_vocab_size")
        _check_ids("position_ids", position_ids, cfg.max_position_embeddings, "max_position_embeddings")

        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, t), jnp.int32)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        input_ids = None if input_ids is None else jnp.asarray(input_ids)
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        mask_bias = attention_bias(attention_mask)
        if self.attention_implementation == "integer" and attention_mask is not None:
            # a fill a quantized tensor can hold beside the real scores (model/attention.py), made from
            # the int mask once here (from the float bias: a float comparison in every layer)
            fill = -attention.INTEGER_MASK_FILL
            mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, fill).astype(jnp.float32)

        h = MobileBertEmbeddings(**self.kw, name="embeddings")(
            input_ids,
            jnp.asarray(token_type_ids),
            jnp.asarray(position_ids),
            inputs_embeds,
            deterministic,
            attention_mask,
        )
        h, all_h, attn = MobileBertEncoder(
            **self.kw,
            scan_layers=self.scan_layers,
            remat=self.remat,
            unroll_layers=self.unroll_layers,
            name="encoder",
        )(h, mask_bias, deterministic, output_hidden_states, output_attentions)
        pooled = MobileBertPooler(**self.kw, name="pooler")(h) if self.add_pooling_layer else None
        return MobileBertModelOutput(
            last_hidden_state=h, pooler_output=pooled, hidden_states=all_h, attentions=attn
        )
