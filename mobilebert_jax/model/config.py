"""`MobileBertConfig`: HF's MobileBERT configuration, as a frozen dataclass with presets.

Every field has HF transformers' name, default and meaning (`configuration_mobilebert.py`), so a
`config.json` written by HF reads here and one written here reads in HF. Keys we do not know are
kept in `extra` and written back. `true_hidden_size` is derived, never stored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from typing import Any

SUPPORTED_ACTIVATIONS = (
    "relu",
    "relu6",
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "quick_gelu",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
    "linear",
)
NORMALIZATION_TYPES = ("no_norm", "layer_norm")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass(frozen=True)
class MobileBertConfig:
    """The MobileBERT architecture. Field names, defaults and meanings are HF's.

    Attributes:
        vocab_size: rows of the word-embedding table and width of the MLM logits.
        embedding_size: E, width of a word embedding (before the trigram projection).
        hidden_size: H, the inter-block width (residual stream between layers, pooler, heads).
        num_hidden_layers: number of `MobileBertLayer`s.
        num_attention_heads: attention heads; head width is `true_hidden_size // num_attention_heads`.
        intermediate_size: inner width of every feed-forward network.
        hidden_act: activation of every FFN and of the MLM transform ("gelu" is the exact erf form).
        hidden_dropout_prob: dropout on embeddings, bottleneck outputs and (default) classifiers.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        max_position_embeddings: rows of the position table; the longest sequence the model takes.
        type_vocab_size: rows of the token-type table.
        initializer_range: std of the normal initialiser of kernels and embeddings.
        layer_norm_eps: eps of real LayerNorms (HF's embeddings and layer-output norms use 1e-5).
        pad_token_id: id of [PAD]; its row gets no gradient through the embedding lookup.
        trigram_input: concatenate embeddings of tokens [t+1, t, t-1] before the projection.
        use_bottleneck: add the input/output bottlenecks; the block width becomes intra_bottleneck_size.
        intra_bottleneck_size: I, the intra-block width when use_bottleneck.
        use_bottleneck_attention: q = k = v = the bottlenecked input (MobileBERT-TINY).
        key_query_shared_bottleneck: q = k = a second bottleneck of the input, v = the wide input.
        num_feedforward_networks: F, stacked FFNs per layer (F-1 extra plus the final one).
        normalization_type: "no_norm" (x * w + b) or "layer_norm".
        classifier_activation: pooler is tanh(Dense(CLS)) when True, the raw CLS vector when False.
        classifier_dropout: dropout before classifiers; None means hidden_dropout_prob.
        tie_word_embeddings: the MLM decoder reuses the word-embedding table.
        num_labels: classifier width (QA uses 2).
        id2label: label names, indexed by class id (keys are ints).
        problem_type: sequence-classification loss; None infers it from num_labels and label dtype.
        extra: every other config.json key, kept as read so a round trip loses nothing.
    """

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 512
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    trigram_input: bool = True
    use_bottleneck: bool = True
    intra_bottleneck_size: int = 128
    use_bottleneck_attention: bool = False
    key_query_shared_bottleneck: bool = True
    num_feedforward_networks: int = 4
    normalization_type: str = "no_norm"
    classifier_activation: bool = True
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    num_labels: int = 2
    id2label: Mapping[int, str] | None = None
    problem_type: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is None:
            object.__setattr__(self, "id2label", {i: f"LABEL_{i}" for i in range(self.num_labels)})
        else:
            labels = {int(k): str(v) for k, v in dict(self.id2label).items()}
            if sorted(labels) != list(range(len(labels))):
                raise ValueError(f"id2label keys must be 0..n-1, got {sorted(labels)}")
            if self.num_labels != len(labels):
                # HF derives num_labels from id2label when both are given; we insist they agree.
                object.__setattr__(self, "num_labels", len(labels))
            object.__setattr__(self, "id2label", labels)
        object.__setattr__(self, "extra", dict(self.extra))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raises ValueError naming the field for combinations that cannot run."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"MobileBertConfig: {msg}")

        for name in (
            "vocab_size",
            "embedding_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            v = getattr(self, name)
            need(
                isinstance(v, int) and not isinstance(v, bool) and v > 0,
                f"{name} must be a positive int, got {v!r}",
            )
        need(
            isinstance(self.num_feedforward_networks, int) and self.num_feedforward_networks >= 1,
            f"num_feedforward_networks must be >= 1 (HF crashes on 0), got {self.num_feedforward_networks!r}",
        )
        need(self.num_labels >= 1, f"num_labels must be >= 1, got {self.num_labels}")
        need(
            self.hidden_act in SUPPORTED_ACTIVATIONS,
            f"hidden_act={self.hidden_act!r} is not supported; choose one of {SUPPORTED_ACTIVATIONS}",
        )
        need(
            self.normalization_type in NORMALIZATION_TYPES,
            f"normalization_type={self.normalization_type!r} is not supported; choose one of {NORMALIZATION_TYPES}",
        )
        # embedding_size > hidden_size is valid (HF's own tests use H=37, E=128): only the MLM decoder needs
        # E <= H, and `MobileBertLMPredictionHead` says so for the two classes that have it.
        if self.use_bottleneck:
            need(
                isinstance(self.intra_bottleneck_size, int) and self.intra_bottleneck_size > 0,
                f"intra_bottleneck_size must be a positive int, got {self.intra_bottleneck_size!r}",
            )
        need(
            self.true_hidden_size % self.num_attention_heads == 0,
            f"true_hidden_size ({self.true_hidden_size}) must be divisible by num_attention_heads "
            f"({self.num_attention_heads})",
        )
        need(
            0 <= self.pad_token_id < self.vocab_size,
            f"pad_token_id ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})",
        )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            v = getattr(self, name)
            need(0.0 <= v < 1.0, f"{name} must be in [0, 1), got {v}")
        if self.classifier_dropout is not None:
            need(
                0.0 <= self.classifier_dropout < 1.0,
                f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}",
            )
        need(
            self.problem_type is None or self.problem_type in PROBLEM_TYPES,
            f"problem_type={self.problem_type!r} must be None or one of {PROBLEM_TYPES}",
        )

    # ------------------------------------------------------------------ derived
    @property
    def true_hidden_size(self) -> int:
        """The width inside a block: I with a bottleneck, H without."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.true_hidden_size // self.num_attention_heads

    @property
    def saved_max_seq_length(self) -> int | None:
        """The `max_seq_length` a fine-tune saved in `extra` (its config.json), when it is a length this
        model can run; None otherwise. Evaluation, prediction and the pipelines default to it."""
        v = self.extra.get("max_seq_length")
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 < v <= self.max_position_embeddings
        return v if ok else None

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def hf_compatible(self) -> bool:
        """False for configs HF PyTorch cannot build (e.g. the IB-BERT teacher)."""
        if (
            self.use_bottleneck
            and not self.use_bottleneck_attention
            and not self.key_query_shared_bottleneck
            and self.intra_bottleneck_size != self.hidden_size
        ):
            return False
        return True

    def replace(self, **changes: Any) -> MobileBertConfig:
        """A copy with fields changed; unknown names go to `extra` only via `extra=`."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise TypeError(f"MobileBertConfig has no field(s) {bad}; known fields: {sorted(known)}")
        if "num_labels" in changes and "id2label" not in changes:
            changes["id2label"] = None
        return dataclasses.replace(self, **changes)

    def __hash__(self) -> int:  # dict fields make the generated hash fail; hash the JSON instead
        return hash(self.to_json_string())

    # ------------------------------------------------------------------ HF config.json
    def to_dict(self) -> dict[str, Any]:
        """The HF `config.json` content (with `model_type` and the derived `true_hidden_size`)."""
        d: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "num_labels", "id2label"):
                continue
            d[f.name] = getattr(self, f.name)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["label2id"] = {v: k for k, v in self.id2label.items()}
        d["true_hidden_size"] = self.true_hidden_size
        d["model_type"] = "mobilebert"
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Writes `config.json` into the directory `path` (or to `path` if it ends in .json)."""
        path = os.fspath(path)
        if not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> MobileBertConfig:
        d = dict(d)
        if "num_labels" in overrides and "id2label" not in overrides:
            d.pop("id2label", None)  # an explicit num_labels replaces the file's label names
            d.pop("label2id", None)
        d.update(overrides)
        mt = d.get("model_type", "mobilebert")
        if mt != "mobilebert":
            raise ValueError(f"config has model_type={mt!r}, expected 'mobilebert'")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = dict(d.pop("extra", {}) or {})
        for k, v in d.items():
            if k in ("true_hidden_size", "label2id", "model_type"):
                continue  # derived
            if k in known:
                kwargs[k] = v
            else:
                extra[k] = v
        check_field_types(kwargs)
        if "id2label" in kwargs and kwargs["id2label"] is not None:
            kwargs["id2label"] = {int(k): v for k, v in kwargs["id2label"].items()}
            kwargs["num_labels"] = len(kwargs["id2label"])
        elif "num_labels" in kwargs:
            kwargs["id2label"] = None
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> MobileBertConfig:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields")
        try:
            return cls.from_dict(d, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MobileBertConfig:
        """A named configuration: see `PRESETS`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        check_field_types(overrides)
        return cls(**{**PRESETS[name], **overrides})


def check_field_types(values: Mapping[str, Any]) -> None:
    """Strict JSON types for known fields, naming the field: `"false"` is not a bool (Python would
    read the string as true), `"0.1"` is not a number, `true` is not an integer."""
    hints = typing.get_type_hints(MobileBertConfig)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None or name == "extra":
            continue
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            continue
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        base = typing.get_origin(base) or base
        if base is bool:
            ok, want = isinstance(value, bool), "true or false"
        elif base is int:
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif base is float:
            ok, want = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        elif base is str:
            ok, want = isinstance(value, str), "a string"
        else:  # Mapping (id2label)
            ok, want = isinstance(value, Mapping), "a JSON object"
        if not ok:
            kind = "a string" if isinstance(value, str) else type(value).__name__
            null = " or null" if type(None) in args else ""
            raise ValueError(f"config field {name!r} must be {want}{null}, got {value!r} ({kind})")


PRESETS: dict[str, dict[str, Any]] = {
    # google/mobilebert-uncased config.json (the OPT model): no pooler dense.
    "mobilebert-uncased": dict(classifier_activation=False),
    # google-research uncased_L-24_H-128_B-512_A-4_F-2_tiny_OPT.json: bottleneck attention, 2 FFNs.
    "mobilebert-tiny": dict(
        use_bottleneck_attention=True,
        key_query_shared_bottleneck=False,
        num_feedforward_networks=2,
        classifier_activation=False,
    ),
    # The IB-BERT-LARGE teacher (uncased_L-24_H-1024_B-512_A-4.json): HF PyTorch cannot build it.
    "ibbert-large-teacher": dict(
        intra_bottleneck_size=1024,
        intermediate_size=4096,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        key_query_shared_bottleneck=False,
        use_bottleneck_attention=False,
        num_feedforward_networks=1,
        normalization_type="layer_norm",
        classifier_activation=False,
    ),
    # A small config for tests, demos and CPU smoke runs (same structure as mobilebert-uncased).
    "mobilebert-test": dict(
        vocab_size=1000,
        embedding_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        intra_bottleneck_size=16,
        max_position_embeddings=64,
        classifier_activation=False,
    ),
}
