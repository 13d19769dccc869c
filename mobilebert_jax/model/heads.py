"""`MobileBertModel` (from `encoder.py`) and the seven heads, with HF's names, inputs and losses."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.model import losses
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel, _ModelBase
from mobilebert_jax.model.layers import _Base, activation, constrain, with_axes
from mobilebert_jax.model.outputs import (
    MaskedLMOutput,
    MobileBertForPreTrainingOutput,
    MobileBertModelOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


class MobileBertLMPredictionHead(_Base):
    """`cls/predictions`: transform (dense, act, real LayerNorm) then t @ [E_wordᵀ; dense] + bias.

    `single_gemm` (float32 only): the logits as one GEMM with the bias folded in (below). The LiteRT
    export turns it off: there the folded weight would be a second copy of the tied word embeddings.
    """

    single_gemm: bool = True

    @nn.compact
    def __call__(self, h, word_embeddings):
        cfg = self.config
        E, H, V = cfg.embedding_size, cfg.hidden_size, cfg.vocab_size
        if E > H:  # HF fails here too (a negative-size dense); the six classes without an MLM head build
            raise ValueError(
                f"MobileBertConfig: embedding_size ({E}) > hidden_size ({H}) cannot have an MLM head "
                "(MobileBertForMaskedLM, MobileBertForPreTraining): its decoder is the tied E-wide embedding "
                "plus an (H-E)-wide matrix; use embedding_size <= hidden_size or a class without an MLM head"
            )
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
        if self.single_gemm and jnp.dtype(self.dtype) == jnp.float32:
            # One GEMM [t, 1] @ [decᵀ; extra; bias] writes the [B, T, V] logits once. Two GEMMs plus
            # the bias add write three such buffers, and on CPU each fresh buffer costs about as much in
            # page faults as the GEMM spends writing it. The (H+1, V) weight copy costs less than one
            # logits buffer.
            # As a 2-D [B·T, H+1] operand, like the dense layers (`token_major_dot_general`).
            t1 = jnp.concatenate([t, jnp.ones(t.shape[:-1] + (1,), t.dtype)], axis=-1).reshape(-1, H + 1)
            w = jnp.concatenate([dec, extra, bias[None, :]], axis=0)  # extra is (0, V) when H == E
            logits = jnp.dot(t1, w.astype(self.dtype), precision=self.precision)
            return constrain(logits.reshape(t.shape[:-1] + (V,)), ("batch", "length", "vocab"))
        # Two GEMMs and the bias added in float32 (in bf16/fp16, out of the low-precision operands).
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
    single_gemm: bool = True

    @nn.compact
    def __call__(self, seq, pooled, word_table):
        mlm = None
        if self.mlm:
            head = MobileBertLMPredictionHead(**self.kw, single_gemm=self.single_gemm, name="predictions")
            mlm = head(seq, word_table)
        nsp = (
            self.dense(2, ("embed", None), "seq_relationship")(pooled).astype(jnp.float32)
            if self.nsp
            else None
        )
        return mlm, nsp


def _extras(out: MobileBertModelOutput) -> dict[str, Any]:
    return dict(hidden_states=out.hidden_states, attentions=out.attentions)


class _HeadBase(_ModelBase):
    """`single_gemm_lm_head` (the MLM head's classes): see `MobileBertLMPredictionHead.single_gemm`."""

    single_gemm_lm_head: bool = True

    def encoder_model(self, pooling: bool) -> MobileBertModel:
        return MobileBertModel(
            **self.kw,
            scan_layers=self.scan_layers,
            remat=self.remat,
            unroll_layers=self.unroll_layers,
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
        mlm, nsp = _Cls(**self.kw, single_gemm=self.single_gemm_lm_head, name="cls")(
            out.last_hidden_state, out.pooler_output, _word_table(mb)
        )
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = losses.mean_of_terms(losses.pretraining_terms(mlm, nsp, labels, next_sentence_label))
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
        mlm, _ = _Cls(**self.kw, nsp=False, single_gemm=self.single_gemm_lm_head, name="cls")(
            out.last_hidden_state, None, _word_table(mb)
        )
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
    """HF's loss for `config.problem_type` (inferred from num_labels and the label dtype when unset)."""
    kind = losses.problem_type_of(config, labels)
    s, n = losses.sequence_classification_sum_and_count(kind, logits, labels)
    return s / n


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
    return losses.mean_of_terms(
        losses.question_answering_terms(start_logits, end_logits, start_positions, end_positions)
    )


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
