"""Model outputs: pytree dataclasses with HF transformers' field names."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax


class _OutputMixin:
    """HF `ModelOutput` conveniences: `out["logits"]`, `to_tuple()` (drops None), `keys()`."""

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no field {key!r} set; set fields: {self.keys()}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


_f = flax.struct.dataclass


@_f
class MobileBertModelOutput(_OutputMixin):
    """last_hidden_state [B, T, H]; pooler_output [B, H] (None without a pooler); hidden_states:
    L+1 arrays [B, T, H] (embeddings first); attentions: L arrays [B, N, T, T] (post-softmax)."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@_f
class MobileBertForPreTrainingOutput(_OutputMixin):
    """prediction_logits [B, T, V]; seq_relationship_logits [B, 2]; loss = MLM CE + NSP CE."""

    loss: jax.Array | None = None
    prediction_logits: jax.Array | None = None
    seq_relationship_logits: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@_f
class MaskedLMOutput(_OutputMixin):
    """logits [B, T, V]."""

    loss: jax.Array | None = None
    logits: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@_f
class NextSentencePredictorOutput(_OutputMixin):
    """logits [B, 2]."""

    loss: jax.Array | None = None
    logits: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@_f
class SequenceClassifierOutput(_OutputMixin):
    """logits [B, num_labels]."""

    loss: jax.Array | None = None
    logits: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@_f
class MultipleChoiceModelOutput(_OutputMixin):
    """logits [B, num_choices]."""

    loss: jax.Array | None = None
    logits: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@_f
class TokenClassifierOutput(_OutputMixin):
    """logits [B, T, num_labels]."""

    loss: jax.Array | None = None
    logits: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@_f
class QuestionAnsweringModelOutput(_OutputMixin):
    """start_logits, end_logits [B, T]."""

    loss: jax.Array | None = None
    start_logits: jax.Array | None = None
    end_logits: jax.Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
