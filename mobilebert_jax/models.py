"""The encoder stack, `MobileBertModel` and the seven heads, with HF's names, inputs and losses."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import losses
from .config import MobileBertConfig
from .modeling import MobileBertEmbeddings, MobileBertLayer, _Base, activation, constrain, with_axes
from .outputs import (
    MaskedLMOutput,
    MobileBertForPreTrainingOutput,
    MobileBertModelOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


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
    """`encoder/layer/{i}` (or one scanned `encoder/layer` with a leading layer axis)."""

    scan_layers: bool = False
    remat: bool = False

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
            all_h = (h,) + tuple(hs[i] for i in range(L)) if output_hidden_states else None
            attn = tuple(probs[i] for i in range(L)) if output_attentions else None
            return h_out, all_h, attn
        container = _LayerList(**self.kw, layer_cls=layer_cls, name="layer")
        return container(h, mask_bias, deterministic, output_hidden_states, output_attentions)


class _LayerList(_Base):
    """Container named `layer` whose children are `0 .. L-1`, as PT's ModuleList."""

    layer_cls: Any = MobileBertLayer

    @nn.compact
    def __call__(self, h, mask_bias, deterministic, output_hidden_states, output_attentions):
        all_h = [h] if output_hidden_states else None
        attn = [] if output_attentions else None
        for i in range(self.config.num_hidden_layers):
            h, probs = self.layer_cls(**self.kw, name=str(i))(h, mask_bias, deterministic)
            if output_hidden_states:
                all_h.append(h)
            if output_attentions:
                attn.append(probs)
        return h, (tuple(all_h) if all_h is not None else None), (tuple(attn) if attn is not None else None)


class MobileBertPooler(_Base):
    """CLS vector [B, H], through tanh(Dense) when `classifier_activation` (else no params)."""

    @nn.compact
    def __call__(self, h):
        c = h[:, 0]
        if not self.config.classifier_activation:
            return c
        return jnp.tanh(self.dense(self.config.hidden_size, ("embed", None), "dense")(c))


class _ModelBase(_Base):
    """Fields shared by all eight public classes."""

    scan_layers: bool = False
    remat: bool = False


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
        mask_bias = attention_bias(None if attention_mask is None else jnp.asarray(attention_mask))

        h = MobileBertEmbeddings(**self.kw, name="embeddings")(
            input_ids, jnp.asarray(token_type_ids), jnp.asarray(position_ids), inputs_embeds, deterministic
        )
        h, all_h, attn = MobileBertEncoder(
            **self.kw, scan_layers=self.scan_layers, remat=self.remat, name="encoder"
        )(h, mask_bias, deterministic, output_hidden_states, output_attentions)
        pooled = MobileBertPooler(**self.kw, name="pooler")(h) if self.add_pooling_layer else None
        return MobileBertModelOutput(
            last_hidden_state=h, pooler_output=pooled, hidden_states=all_h, attentions=attn
        )


class MobileBertLMPredictionHead(_Base):
    """`cls/predictions`: transform (dense, act, real LayerNorm) then t @ [E_wordᵀ; dense] + bias."""

    @nn.compact
    def __call__(self, h, word_embeddings):
        cfg = self.config
        E, H, V = cfg.embedding_size, cfg.hidden_size, cfg.vocab_size
        t = _Transform(**self.kw, name="transform")(h)
        # PT's `cls.predictions.dense.weight` (H-E, V), used untransposed in the forward pass.
        extra = _RawMatrix(
            (H - E, V), (None, "vocab"), cfg.initializer_range, self.param_dtype, name="dense"
        )()
        if cfg.tie_word_embeddings:
            dec = word_embeddings.T  # (E, V)
        else:
            dec = _RawMatrix(
                (E, V),
                ("word_embed", "vocab"),
                cfg.initializer_range,
                self.param_dtype,
                name="decoder",
                param_name="kernel",
            )()
        bias = self.param("bias", with_axes(nn.initializers.zeros, ("vocab",)), (V,), self.param_dtype)
        t = t.astype(self.dtype)
        # Two matmuls instead of one over concat([decᵀ, extra]) avoid building an (H, V) copy each step.
        logits = jnp.dot(
            t[..., :E], dec.astype(self.dtype), precision=self.precision, preferred_element_type=jnp.float32
        )
        if H > E:
            logits = logits + jnp.dot(
                t[..., E:],
                extra.astype(self.dtype),
                precision=self.precision,
                preferred_element_type=jnp.float32,
            )
        return constrain(logits + bias.astype(jnp.float32), ("batch", "length", "vocab"))


class _Transform(_Base):
    @nn.compact
    def __call__(self, h):
        cfg = self.config
        t = activation(cfg.hidden_act)(self.dense(cfg.hidden_size, ("embed", None), "dense")(h))
        # Always a real LayerNorm (eps = layer_norm_eps), whatever normalization_type says.
        return nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            use_fast_variance=False,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            scale_init=with_axes(nn.initializers.ones, ("embed",)),
            bias_init=with_axes(nn.initializers.zeros, ("embed",)),
            name="LayerNorm",
        )(t)


class _RawMatrix(nn.Module):
    shape: tuple[int, int]
    axes: tuple
    stddev: float
    param_dtype: Any = jnp.float32
    param_name: str = "weight"

    @nn.compact
    def __call__(self):
        init = with_axes(nn.initializers.normal(self.stddev), self.axes)
        return self.param(self.param_name, init, self.shape, self.param_dtype)


def _word_table(mb: nn.Module) -> jax.Array:
    """The word-embedding table [V, E] of a called `MobileBertModel` submodule (tied decoder)."""
    table = mb.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    return nn.meta.unbox(table)


class _Cls(_Base):
    """The `cls` container: `predictions` (MLM) and/or `seq_relationship` (NSP)."""

    mlm: bool = True
    nsp: bool = True

    @nn.compact
    def __call__(self, seq, pooled, word_table):
        mlm = MobileBertLMPredictionHead(**self.kw, name="predictions")(seq, word_table) if self.mlm else None
        nsp = (
            self.dense(2, ("embed", None), "seq_relationship")(pooled).astype(jnp.float32)
            if self.nsp
            else None
        )
        return mlm, nsp


def _extras(out: MobileBertModelOutput) -> dict[str, Any]:
    return dict(hidden_states=out.hidden_states, attentions=out.attentions)


class _HeadBase(_ModelBase):
    def encoder_model(self, pooling: bool) -> MobileBertModel:
        return MobileBertModel(
            **self.kw,
            scan_layers=self.scan_layers,
            remat=self.remat,
            add_pooling_layer=pooling,
            name="mobilebert",
        )

    def classifier_dropout(self) -> nn.Dropout:
        cfg = self.config
        rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        return nn.Dropout(rate)


class MobileBertForPreTraining(_HeadBase):
    """MLM + NSP. Loss (only with both `labels` [B, T] and `next_sentence_label` [B]) = CE_mlm + CE_nsp."""

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        next_sentence_label=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        mb = self.encoder_model(pooling=True)
        out = mb(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            deterministic,
            output_hidden_states,
            output_attentions,
        )
        mlm, nsp = _Cls(**self.kw, name="cls")(out.last_hidden_state, out.pooler_output, _word_table(mb))
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = losses.cross_entropy(mlm, labels) + losses.cross_entropy(
                nsp, jnp.reshape(next_sentence_label, (-1,))
            )
        return MobileBertForPreTrainingOutput(
            loss=loss, prediction_logits=mlm, seq_relationship_logits=nsp, **_extras(out)
        )


class MobileBertForMaskedLM(_HeadBase):
    """MLM head on all positions; loss = CE over `labels` [B, T] (-100 ignored)."""

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        mb = self.encoder_model(pooling=False)
        out = mb(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            deterministic,
            output_hidden_states,
            output_attentions,
        )
        mlm, _ = _Cls(**self.kw, nsp=False, name="cls")(out.last_hidden_state, None, _word_table(mb))
        loss = None if labels is None else losses.cross_entropy(mlm, labels)
        return MaskedLMOutput(loss=loss, logits=mlm, **_extras(out))


class MobileBertForNextSentencePrediction(_HeadBase):
    """NSP logits [B, 2] from the pooled output; loss = CE over `labels` [B] (0 = B follows A)."""

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        mb = self.encoder_model(pooling=True)
        out = mb(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            deterministic,
            output_hidden_states,
            output_attentions,
        )
        _, nsp = _Cls(**self.kw, mlm=False, name="cls")(None, out.pooler_output, None)
        loss = None if labels is None else losses.cross_entropy(nsp, jnp.reshape(labels, (-1,)))
        return NextSentencePredictorOutput(loss=loss, logits=nsp, **_extras(out))


def sequence_classification_loss(config: MobileBertConfig, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """HF's `problem_type` rules; an unset problem_type is inferred (not written back) from
    num_labels and the label dtype: 1 → regression, integer labels → single-label, else multi-label."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif jnp.issubdtype(labels.dtype, jnp.integer):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if config.num_labels == 1:
            return losses.mse(jnp.squeeze(logits), jnp.squeeze(labels))
        return losses.mse(logits, labels)
    if problem == "single_label_classification":
        return losses.cross_entropy(logits.reshape(-1, config.num_labels), labels.reshape(-1))
    return losses.bce_with_logits(logits, labels)


class MobileBertForSequenceClassification(_HeadBase):
    """classifier(dropout(pooled)) → logits [B, num_labels]; loss per `problem_type`."""

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        cfg = self.config
        out = self.encoder_model(pooling=True)(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            deterministic,
            output_hidden_states,
            output_attentions,
        )
        x = self.classifier_dropout()(out.pooler_output, deterministic=deterministic)
        logits = self.dense(cfg.num_labels, ("embed", None), "classifier")(x).astype(jnp.float32)
        loss = None if labels is None else sequence_classification_loss(cfg, logits, jnp.asarray(labels))
        return SequenceClassifierOutput(loss=loss, logits=logits, **_extras(out))


class MobileBertForMultipleChoice(_HeadBase):
    """Inputs [B, C, T] (inputs_embeds [B, C, T, E]) → logits [B, C]; loss = CE over `labels` [B]."""

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None:
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None and input_ids.ndim != 3:
            raise ValueError(f"input_ids must have shape [batch, num_choices, length], got {input_ids.shape}")
        c = ref.shape[1]

        def flat(x):
            return None if x is None else jnp.reshape(x, (-1, x.shape[-1]))

        embeds = (
            None if inputs_embeds is None else jnp.reshape(inputs_embeds, (-1,) + inputs_embeds.shape[-2:])
        )
        out = self.encoder_model(pooling=True)(
            flat(input_ids),
            flat(attention_mask),
            flat(token_type_ids),
            flat(position_ids),
            embeds,
            deterministic,
            output_hidden_states,
            output_attentions,
        )
        x = self.classifier_dropout()(out.pooler_output, deterministic=deterministic)
        logits = self.dense(1, ("embed", None), "classifier")(x).astype(jnp.float32).reshape(-1, c)
        loss = None if labels is None else losses.cross_entropy(logits, jnp.asarray(labels))
        return MultipleChoiceModelOutput(loss=loss, logits=logits, **_extras(out))


class MobileBertForTokenClassification(_HeadBase):
    """classifier(dropout(sequence)) → logits [B, T, num_labels]; loss = CE over `labels` (-100 ignored)."""

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        cfg = self.config
        out = self.encoder_model(pooling=False)(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            deterministic,
            output_hidden_states,
            output_attentions,
        )
        x = self.classifier_dropout()(out.last_hidden_state, deterministic=deterministic)
        logits = self.dense(cfg.num_labels, ("embed", None), "classifier")(x).astype(jnp.float32)
        loss = None
        if labels is not None:
            loss = losses.cross_entropy(logits.reshape(-1, cfg.num_labels), jnp.asarray(labels).reshape(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, **_extras(out))


def question_answering_loss(start_logits, end_logits, start_positions, end_positions) -> jax.Array:
    """HF's QA loss: positions [B] (or [B, 1]) clamped to [0, T]; position T is ignored."""
    t = start_logits.shape[1]

    def one(logits, pos):
        pos = jnp.asarray(pos)
        if pos.ndim > 1:
            pos = jnp.squeeze(pos, -1)
        pos = jnp.clip(pos, 0, t)
        return losses.cross_entropy(logits, pos, ignore_index=t)

    return (one(start_logits, start_positions) + one(end_logits, end_positions)) / 2


class MobileBertForQuestionAnswering(_HeadBase):
    """qa_outputs(sequence) → start_logits, end_logits [B, T]; loss = mean of start and end CE."""

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        cfg = self.config
        if cfg.num_labels != 2:
            raise ValueError(
                f"MobileBertForQuestionAnswering needs num_labels=2 (start, end), got {cfg.num_labels}"
            )
        out = self.encoder_model(pooling=False)(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            deterministic,
            output_hidden_states,
            output_attentions,
        )
        logits = self.dense(cfg.num_labels, ("embed", None), "qa_outputs")(out.last_hidden_state).astype(
            jnp.float32
        )
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start, end, start_positions, end_positions)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end, **_extras(out))


MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        MobileBertModel,
        MobileBertForPreTraining,
        MobileBertForMaskedLM,
        MobileBertForNextSentencePrediction,
        MobileBertForSequenceClassification,
        MobileBertForMultipleChoice,
        MobileBertForTokenClassification,
        MobileBertForQuestionAnswering,
    )
}


def init_params(model: nn.Module, rng: jax.Array | int = 0, batch_size: int = 1, seq_len: int = 8) -> dict:
    """Random params (plain arrays, logical-axis boxes removed) for `model`."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    shape = (
        (batch_size, 2, seq_len) if isinstance(model, MobileBertForMultipleChoice) else (batch_size, seq_len)
    )
    ids = jnp.ones(shape, jnp.int32)
    variables = jax.jit(lambda r: model.init(r, input_ids=ids))(rng)
    return nn.meta.unbox(variables)["params"]
