"""TensorFlow MobileBERT checkpoints → Flax params, without TensorFlow.

Two sources, both mapped first to an HF PyTorch-named state dict of numpy arrays in PT layout and then
handed to `convert.from_pytorch` (which checks shapes, reports missing/unexpected keys and handles the
base/head prefix):

- HF's TF2 `tf_model.h5` (`TFMobileBert*`, transformers 4.x), read with h5py (REFERENCE §3.b).
- The original google-research TF1 name-based checkpoints (`mobilebert_variables.ckpt.{index,data-*}`),
  read by our own tensor-bundle reader `tf_bundle` (REFERENCE §3.c): `FakeLayerNorm`, `ffn_layer_j`,
  `extra_output_weights` (transposed), the NSP/SQuAD/GLUE `output_weights` (already PT layout),
  optimizer slots and `global_step` skipped, `teacher/` variables selectable.

Google's own `bert_config.json` is read with google's `BertConfig` defaults (`config_from_google`),
not HF's: the two differ for keys the official files omit (normalization, kq-sharing, FFN count).

Example:
    >>> params, report = load_tf1_checkpoint("mobilebert/mobilebert_variables.ckpt", None)
    >>> print(report.summary())
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.checkpoints.pytorch import LoadReport, from_pytorch, to_pytorch
from mobilebert_jax.checkpoints.tf_bundle import BundleReader
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.heads import MobileBertForPreTraining

__all__ = [
    "TFConversionReport",
    "config_from_google",
    "h5_to_pytorch_names",
    "load_config",
    "load_tf1_checkpoint",
    "load_tf_h5",
    "map_tf1_names",
    "pytorch_to_tf1_names",
    "save_tf1_checkpoint",
    "tf1_to_pytorch_names",
    "tf2_to_pytorch_names",
]


@dataclasses.dataclass
class TFConversionReport:
    """What a TF conversion did: TF names mapped and skipped, then `from_pytorch`'s own report.

    Attributes:
        source: the checkpoint read.
        mapped: source name (TF, or PT for HF/orbax sources) → HF PyTorch key.
        skipped: TF name → why it was not used (optimizer slot, teacher/student, unrecognised, ...).
        load: `from_pytorch`'s report (PT keys loaded, initialised, dropped).
        config: the config the params were built for.
        notes: anything else worth saying (e.g. an untied TF decoder).
    """

    source: str
    mapped: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    load: LoadReport = dataclasses.field(default_factory=LoadReport)
    config: MobileBertConfig | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def initialised(self) -> list[str]:
        return self.load.initialised

    def summary(self) -> str:
        lines = [f"{self.source}: mapped {len(self.mapped)} tensors"]
        by_reason: dict[str, list[str]] = {}
        for k, r in self.skipped.items():
            by_reason.setdefault(r, []).append(k)
        for r, ks in sorted(by_reason.items()):
            shown = ", ".join(ks[:4]) + (f", ... ({len(ks)} in all)" if len(ks) > 4 else "")
            lines.append(f"skipped ({r}): {shown}")
        lines.append(self.load.summary())
        lines += self.notes
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ configs
# google-research mobilebert/modeling.py BertConfig defaults (vocab_size has none).
_GOOGLE_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=16,
    initializer_range=0.02,
    embedding_size=None,
    trigram_input=False,
    use_bottleneck=False,
    intra_bottleneck_size=None,
    use_bottleneck_attention=False,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    classifier_activation=True,
)
# google's activations: its "gelu" is the tanh approximation, HF's "gelu_new".
_GOOGLE_ACT = {
    "gelu": "gelu_new",
    "relu": "relu",
    "relu6": "relu6",
    "tanh": "tanh",
    "linear": "linear",
    "": "linear",
}


def config_from_google(d: Mapping[str, Any], **overrides: Any) -> MobileBertConfig:
    """A google-research `bert_config.json` dict → `MobileBertConfig`, with google's defaults.

    Raises:
        ValueError: for settings HF's architecture cannot express (manual_layer_norm, unknown act).
    """
    g = {**_GOOGLE_DEFAULTS, **dict(d)}
    if "vocab_size" not in d:
        raise ValueError("google config has no vocab_size")
    act = str(g["hidden_act"] or "").lower()
    if act not in _GOOGLE_ACT:
        raise ValueError(f"google config hidden_act={g['hidden_act']!r} is not one of {sorted(_GOOGLE_ACT)}")
    if g["normalization_type"] not in ("layer_norm", "no_norm"):
        raise ValueError(
            f"google config normalization_type={g['normalization_type']!r}: only layer_norm and no_norm exist in "
            "HF's MobileBERT (manual_layer_norm, eps 1e-6, does not)"
        )
    known = {k for k in _GOOGLE_DEFAULTS} | {"vocab_size"}
    fields = {k: g[k] for k in known}
    fields["hidden_act"] = _GOOGLE_ACT[act]
    fields["embedding_size"] = g["embedding_size"] or g["hidden_size"]
    fields["intra_bottleneck_size"] = g["intra_bottleneck_size"] or g["hidden_size"]
    extra = {k: v for k, v in dict(d).items() if k not in known}
    return MobileBertConfig(**{**fields, **overrides}, extra=extra)


def load_config(path: str | os.PathLike, **overrides: Any) -> MobileBertConfig:
    """An HF `config.json` or a google `bert_config.json` (told apart by HF's `model_type` key)."""
    path = os.fspath(path)
    try:
        d = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"no config file at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if "model_type" in d or "architectures" in d:
        return MobileBertConfig.from_dict(d, **overrides)
    try:
        return config_from_google(d, **overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------- TF1 names
# Variables that are training state, not weights: Adam/LAMB slots, step counters, loss scale,
# QAT fake-quant ranges. Matched on any path component.
_OPTIMIZER_PARTS = re.compile(
    r"^(adam_m|adam_v|Adam|Adam_\d+|Momentum|global_step|beta1_power|beta2_power|"
    r"AdamWeightDecayOptimizer(_\d+)?|LAMB(Optimizer)?(_\d+)?|loss_scale|good_steps)$"
)
_FAKE_QUANT = re.compile(r"FakeQuantWithMinMaxVars")
_LEAF = {
    "kernel": ("weight", True),
    "gamma": ("weight", False),
    "beta": ("bias", False),
    "bias": ("bias", False),
}
_HEADS = {  # (scope, leaf) → PT key; google's output_weights are [out, in] = PT layout, no transpose
    ("cls/predictions", "output_bias"): "cls.predictions.bias",
    ("cls/seq_relationship", "output_weights"): "cls.seq_relationship.weight",
    ("cls/seq_relationship", "output_bias"): "cls.seq_relationship.bias",
    ("cls/squad", "output_weights"): "qa_outputs.weight",
    ("cls/squad", "output_bias"): "qa_outputs.bias",
    ("", "output_weights"): "classifier.weight",  # run_classifier.py (GLUE) heads live at the root
    ("", "output_bias"): "classifier.bias",
}


def tf1_name_to_pytorch(name: str) -> tuple[str, bool] | None:
    """One google TF1 variable name (without `teacher/`) → (HF PT key, transpose?), or None."""
    scope, _, leaf = name.rpartition("/")
    if (scope, leaf) in _HEADS:
        return _HEADS[(scope, leaf)], False
    if name == "cls/predictions/extra_output_weights":
        return "cls.predictions.dense.weight", True  # [V, H-E] → PT's raw (H-E, V) matrix
    parts = name.split("/")
    if parts[0] == "bert":
        out = ["mobilebert"]
    elif parts[:3] == ["cls", "predictions", "transform"]:
        out = ["cls", "predictions", "transform"]
        parts = parts[2:]
    else:
        return None
    for p in parts[1:-1]:
        m = re.fullmatch(r"(layer|ffn_layer)_(\d+)", p)
        if m:
            out += ["layer" if m.group(1) == "layer" else "ffn", m.group(2)]
        elif p == "FakeLayerNorm":
            out.append("LayerNorm")
        elif re.fullmatch(r"[A-Za-z_]+", p):
            out.append(p)
        else:
            return None
    leaf = parts[-1]
    if leaf.endswith("_embeddings") and len(parts) == 3:
        return ".".join([*out, leaf, "weight"]), False
    if leaf not in _LEAF:
        return None
    pt_leaf, transpose = _LEAF[leaf]
    return ".".join([*out, pt_leaf]), transpose


def map_tf1_names(names: Any, teacher: bool = False) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """Google TF1 variable names → ({TF name: (PT key, transpose?)}, {TF name: reason skipped}).

    Optimizer state (Adam/LAMB slots, `global_step`, loss scale), QAT ranges and the other model of a
    distillation checkpoint (`teacher/...` unless `teacher`, the student if `teacher`) are skipped.
    """
    mapped: dict[str, tuple[str, bool]] = {}
    skipped: dict[str, str] = {}
    for name in sorted(names):
        parts = name.split("/")
        if any(_OPTIMIZER_PARTS.match(p) for p in parts):
            skipped[name] = "optimizer state"
            continue
        if _FAKE_QUANT.search(name):
            skipped[name] = "quantization range"
            continue
        is_teacher = parts[0] == "teacher"
        if is_teacher != teacher:
            skipped[name] = "student variable" if teacher else "teacher variable (load it with teacher=True)"
            continue
        hit = tf1_name_to_pytorch("/".join(parts[1:]) if is_teacher else name)
        if hit is None:
            skipped[name] = "unrecognised name"
            continue
        taken = [k for k, (key, _) in mapped.items() if key == hit[0]]
        if taken:
            raise ValueError(f"TF variables {taken[0]!r} and {name!r} both map to {hit[0]}")
        mapped[name] = hit
    if teacher and not mapped:
        raise ValueError("teacher=True, but the checkpoint has no teacher/... variables")
    return mapped, skipped


def tf1_to_pytorch_names(
    variables: Mapping[str, np.ndarray], teacher: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Google TF1 variables → HF PT state dict (numpy, PT shapes; transposed entries are views).

    Args:
        variables: TF1 name → array, e.g. `tf_bundle.load_checkpoint(prefix)`.
        teacher: take the `teacher/...` model of a distillation checkpoint instead of the student.

    Returns:
        (state_dict, mapped {TF name: PT key}, skipped {TF name: reason}).

    Raises:
        ValueError: a kernel that is not 2-D, two TF names for one PT key, or teacher=True without
            any `teacher/` variable.
    """
    names, skipped = map_tf1_names(variables, teacher)
    return _apply_names(variables, names), {n: k for n, (k, _) in names.items()}, skipped


def _apply_names(
    variables: Mapping[str, Any], names: Mapping[str, tuple[str, bool]]
) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for name, (key, transpose) in names.items():
        a = np.asarray(variables[name])
        if transpose:
            if a.ndim != 2:
                raise ValueError(f"TF variable {name!r} should be a 2-D kernel, has shape {a.shape}")
            a = a.T  # a view: from_pytorch transposes back to TF's (in, out) layout without a copy
        state[key] = a
    return state


def _mapped_by(mapped: Mapping[str, str], key: str) -> str:
    return next(k for k, v in mapped.items() if v == key)


def pytorch_to_tf1_names(
    state_dict: Mapping[str, np.ndarray], config: MobileBertConfig
) -> dict[str, np.ndarray]:
    """HF PT state dict → google TF1 variables (the inverse of `tf1_to_pytorch_names`).

    `classifier.*` becomes run_classifier.py's root `output_weights`/`output_bias`; tied decoder
    aliases and `position_ids` are left out.
    """
    norm = "FakeLayerNorm" if config.normalization_type == "no_norm" else "LayerNorm"
    inverse = {v: k for k, v in _HEADS.items()}
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        a = np.asarray(value)
        if key.startswith("cls.predictions.decoder.") or key.endswith("position_ids"):
            continue
        if key in inverse:
            scope, leaf = inverse[key]
            out[f"{scope}/{leaf}" if scope else leaf] = a
            continue
        if key == "cls.predictions.dense.weight":
            out["cls/predictions/extra_output_weights"] = np.ascontiguousarray(a.T)
            continue
        parts = key.split(".")
        if parts[0] == "mobilebert":
            parts = parts[1:]
        if parts[0] in ("embeddings", "encoder", "pooler"):
            tf = ["bert"]
        elif parts[:3] == ["cls", "predictions", "transform"]:
            tf, parts = ["cls", "predictions"], parts[2:]
        else:
            raise ValueError(f"PT key {key!r} has no google TF1 name")
        i = 0
        while i < len(parts) - 1:
            p = parts[i]
            if p in ("layer", "ffn") and parts[i + 1].isdigit():
                tf.append(f"{'layer' if p == 'layer' else 'ffn_layer'}_{parts[i + 1]}")
                i += 2
                continue
            in_head = tf[0] == "cls"
            tf.append(norm if p == "LayerNorm" and not in_head else p)
            i += 1
        leaf = parts[-1]
        if tf[-1].endswith("_embeddings"):
            out["/".join(tf)] = a
        elif tf[-1] in (norm, "LayerNorm"):
            out["/".join([*tf, "gamma" if leaf == "weight" else "beta"])] = a
        elif leaf == "weight":
            out["/".join([*tf, "kernel"])] = np.ascontiguousarray(a.T)
        else:
            out["/".join([*tf, leaf])] = a
    return out


# --------------------------------------------------------------------------------------- TF2 names
def tf2_to_pytorch_names(weights: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """HF-TF (Keras) weight names → (HF PT state dict, {TF name: PT key}), by HF's own rules.

    Rules (`modeling_tf_pytorch_utils.convert_tf_weight_name_to_pt_weight_name`): strip `:0`; drop the
    model-class scope; `<x>___<y>` → `<y>`; `_._` → `.`; a 2-D `kernel` → transposed `weight`;
    `embeddings`/`gamma` → `weight`, `beta` → `bias`. `predictions/dense/weight` (H-E, V) and the
    embeddings are already PT layout.
    """
    state: dict[str, np.ndarray] = {}
    mapped: dict[str, str] = {}
    for name in sorted(weights):
        parts = re.sub(r":\d+$", "", name).split("/")[1:]
        parts = [p.split("___")[-1] for p in parts]
        parts = ".".join(parts).replace("_._", ".").split(".")
        a = np.asarray(weights[name])
        leaf = parts[-1]
        if leaf == "kernel":
            if a.ndim != 2:
                raise ValueError(f"TF weight {name!r} should be a 2-D kernel, has shape {a.shape}")
            parts[-1], a = "weight", a.T  # a view, as in tf1_to_pytorch_names
        elif leaf in ("embeddings", "gamma"):
            parts[-1] = "weight"
        elif leaf == "beta":
            parts[-1] = "bias"
        key = ".".join(parts)
        if key in state:
            raise ValueError(f"TF weights {_mapped_by(mapped, key)!r} and {name!r} both map to {key}")
        state[key], mapped[name] = a, key
    return state, mapped


def _read_h5(path: str) -> dict[str, np.ndarray]:
    import h5py

    weights: dict[str, np.ndarray] = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or corrupted?): {e}") from None
    with f:
        if "layer_names" not in f.attrs:
            raise ValueError(f"{path}: no 'layer_names' attribute; not a Keras weights file (tf_model.h5)")
        for layer in f.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            group = f[layer]
            for w in group.attrs.get("weight_names", []):
                w = w.decode() if isinstance(w, bytes) else str(w)
                try:
                    weights[w] = np.asarray(group[w])
                except (KeyError, OSError) as e:
                    raise ValueError(f"{path}: cannot read dataset {layer}/{w}: {e}") from None
    return weights


def h5_to_pytorch_names(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """HF `tf_model.h5` → HF PyTorch-named state dict (numpy, PT layout), read with h5py."""
    return tf2_to_pytorch_names(_read_h5(os.fspath(path)))[0]


# ------------------------------------------------------------------------------------------- loaders
_CONFIG_NAMES = ("config.json", "bert_config.json")
# HF builds these with add_pooling_layer=False: a checkpoint's pooler is unused there (HF ignores it).
_NO_POOLER = {"MobileBertForMaskedLM", "MobileBertForTokenClassification", "MobileBertForQuestionAnswering"}


def _drop_unused_pooler(
    state: dict[str, np.ndarray], model_class: Any, mapped: dict[str, str], skipped: dict
) -> None:
    name = (
        model_class
        if isinstance(model_class, str)
        else getattr(model_class, "__name__", type(model_class).__name__)
    )
    if name not in _NO_POOLER:
        return
    for key in [k for k in state if k.startswith(("mobilebert.pooler.", "pooler."))]:
        del state[key]
        tf_name = _mapped_by(mapped, key)
        del mapped[tf_name]
        skipped[tf_name] = f"pooler, unused by {name}"


def _as_config(config: Any, path: str, names: tuple[str, ...]) -> MobileBertConfig:
    """`config` as given (MobileBertConfig or json path), or the first of `names` beside `path`."""
    if isinstance(config, MobileBertConfig):
        return config
    if config is not None:
        return load_config(config)
    folder = os.path.dirname(os.path.abspath(path))
    for n in names:
        if os.path.exists(os.path.join(folder, n)):
            return load_config(os.path.join(folder, n))
    raise FileNotFoundError(
        f"no config for {path}: looked for {', '.join(names)} in {folder}; pass config= "
        "(a MobileBertConfig, an HF config.json or a google bert_config.json)"
    )


def load_tf1_checkpoint(
    prefix: str | os.PathLike,
    config: MobileBertConfig | str | os.PathLike | None = None,
    model_class: Any = MobileBertForPreTraining,
    teacher: bool = False,
    *,
    strict: bool = False,
    verify: bool = True,
    **from_pytorch_kwargs: Any,
) -> tuple[dict, TFConversionReport]:
    """A google TF1 checkpoint → (Flax params, report), read without TensorFlow.

    Args:
        prefix: checkpoint prefix (`.../mobilebert_variables.ckpt`), its `.index` file, or its folder.
        config: MobileBertConfig, or a path to an HF/google json; None looks next to the checkpoint.
        model_class: target class (or its name); heads the checkpoint lacks are initialised.
        teacher: load the `teacher/` model of a distillation checkpoint.
        strict: also fail on unrecognised TF names, and (in from_pytorch) on missing/extra heads.
        verify: check the bundle's checksums.
        **from_pytorch_kwargs: `scan_layers`, `rng`, `dtype`.
    """
    reader = BundleReader(prefix, verify=verify)
    cfg = _as_config(config, reader.prefix, ("teacher_config.json",) if teacher else _CONFIG_NAMES)
    names, skipped = map_tf1_names(reader.keys(), teacher)
    if not names:
        raise ValueError(
            f"{reader.prefix}: none of its {len(reader.entries)} variables is a google MobileBERT weight "
            f"(e.g. {reader.keys()[:3]}); TF2 object-based (Model Garden) checkpoints are not supported"
        )
    state = _apply_names(reader.read_all(select=names.__contains__), names)  # skipped ones are not read
    mapped = {n: k for n, (k, _) in names.items()}
    _drop_unused_pooler(state, model_class, mapped, skipped)
    report = TFConversionReport(
        source=reader.prefix, mapped=mapped, skipped=dict(sorted(skipped.items())), config=cfg
    )
    unknown = [n for n, r in skipped.items() if r == "unrecognised name"]
    if strict and unknown:
        raise ValueError(f"{reader.prefix}: unrecognised TF variables (strict): {', '.join(unknown)}")
    params, report.load = from_pytorch(
        state, cfg, model_class, strict=strict, return_report=True, **from_pytorch_kwargs
    )
    return params, report


def load_tf_h5(
    path: str | os.PathLike,
    config: MobileBertConfig | str | os.PathLike | None = None,
    model_class: Any = MobileBertForPreTraining,
    *,
    strict: bool = False,
    **from_pytorch_kwargs: Any,
) -> tuple[dict, TFConversionReport]:
    """HF `tf_model.h5` (or the folder holding it) → (Flax params, report), read with h5py.

    Args:
        path: the h5 file or its HF model folder.
        config: MobileBertConfig or a json path; None reads `config.json` beside the file.
        model_class: target class (or its name).
        strict: fail (in from_pytorch) on missing or extra heads instead of initialising/dropping.
        **from_pytorch_kwargs: `scan_layers`, `rng`, `dtype`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tf_model.h5")
    cfg = _as_config(config, path, ("config.json",))
    state, mapped = tf2_to_pytorch_names(_read_h5(path))
    skipped: dict[str, str] = {}
    _drop_unused_pooler(state, model_class, mapped, skipped)
    report = TFConversionReport(source=path, mapped=mapped, skipped=skipped, config=cfg)
    dec, emb = "cls.predictions.decoder.weight", "mobilebert.embeddings.word_embeddings.weight"
    if dec in state and emb in state and state[dec].shape == state[emb].shape:
        diff = float(np.abs(state[dec] - state[emb]).max())
        if diff > 0:
            report.notes.append(
                f"note: TF's untied MLM decoder differs from the word embeddings (max |diff| {diff:.3g}); "
                "the tied model uses the word embeddings, so MLM logits will differ from TF's"
            )
    params, report.load = from_pytorch(
        state, cfg, model_class, strict=strict, return_report=True, **from_pytorch_kwargs
    )
    return params, report


def save_tf1_checkpoint(params: Mapping, config: MobileBertConfig, prefix: str | os.PathLike) -> str:
    """Flax params → a google TF1 name-based checkpoint (for the original code's TFLite exporter).

    Needs TensorFlow (the bundle is written with `tf.raw_ops.SaveV2`). Returns the prefix written; a
    gs:// prefix is written locally, then its files (`.index`, `.data-*`) uploaded beside it.
    """
    prefix = os.fspath(prefix)
    if storage.is_url(prefix):
        with tempfile.TemporaryDirectory(prefix="mobilebert-jax-tf1-") as tmp:
            save_tf1_checkpoint(params, config, os.path.join(tmp, storage.basename(prefix)))
            storage.upload_dir(tmp, storage.dirname(prefix))
        return prefix
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            "save_tf1_checkpoint writes with TensorFlow, which is not installed (pip install tensorflow-cpu); "
            "reading TF checkpoints (load_tf1_checkpoint) does not need it"
        ) from None
    tensors = pytorch_to_tf1_names(to_pytorch(params, config, include_tied=False, include_dead=False), config)
    prefix = os.fspath(prefix)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    names = sorted(tensors)
    constants = [tf.constant(tensors[n]) for n in names]
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=constants
    )
    return prefix
