"""The one loader: a model name (directory, checkpoint file, training output dir, preset, hub id) → a model.

    loaded = load_model("runs/sst2")            # its hf_model/: config, class, params, tokenizer
    model, params = loaded.build(scan_layers=True)

`resolve_model` is the one rule from a name to its files (the Python API, the CLI's `--model`, the
pipelines and the jobs all go through it); `formats.py` tells the checkpoint formats apart and reads
them; `load_tokenizer` is the one tokenizer rule. `hub.from_pretrained` is a thin wrapper over
`load_model`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

from mobilebert_jax import storage
from mobilebert_jax.checkpoints.errors import CheckpointError
from mobilebert_jax.checkpoints.formats import READERS, detect_source, dominant_float_dtype
from mobilebert_jax.checkpoints.pytorch import LoadReport, loop_to_scan, to_pytorch
from mobilebert_jax.checkpoints.tensorflow import TFConversionReport
from mobilebert_jax.checkpoints.tf_bundle import resolve_checkpoint_prefix
from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.heads import MODEL_CLASSES, init_params
from mobilebert_jax.text.tokenizer import MobileBertTokenizer

__all__ = [
    "LoadedModel",
    "ModelSource",
    "all_initialised",
    "check_vocab",
    "packaged_tokenizer",
    "load_model",
    "load_tokenizer",
    "model_folder",
    "resolve_model",
    "tokenizer_folder",
]

logger = logging.getLogger("mobilebert_jax")

# A Hugging Face Hub repo id: "name" or "owner/name" (what huggingface_hub's validator accepts).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_FILES = ["config.json", "*.safetensors", "*.json", "pytorch_model.bin", "tf_model.h5"]
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# a training output directory's model folder: distill writes final_model/, finetune and pretrain hf_model/
_RUN_MODEL_DIRS = ("final_model", "hf_model")


# --------------------------------------------------------------------------------------- names
@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model name points: `kind` is "preset", "local", "url" (gs://) or "hub".

    `folder` is the directory holding its files, or for a local checkpoint file (`.h5`, `.safetensors`,
    `.bin`, a TF1 prefix) that file (for a URL: its local copy, `storage.local_copy`); None for a preset.
    """

    kind: str
    name: str
    folder: str | None = None


def _is_checkpoint_file(name: str) -> bool:
    return os.path.isfile(name) or os.path.exists(resolve_checkpoint_prefix(name) + ".index")


def resolve_model(name_or_path: str | os.PathLike) -> ModelSource:
    """The one rule that turns a model name into a source, for the Python API and the CLI alike.

    In order: a gs:// URL (a folder, a run dir or a file in a bucket, copied locally); an existing
    directory (so a clone named like a preset loads its weights) or checkpoint
    file (a TF1 prefix counts); a preset name from `PRESETS` (random init, no files); anything that
    looks like a path (absolute, `./`, `~`, two or more `/`, a backslash): an error that there is no
    such directory; else a Hugging Face Hub id, fetched with huggingface_hub. Every error names what
    was tried.
    """
    name = os.fspath(name_or_path)
    if storage.is_url(name):  # read from a local copy (the readers and tokenizers take local files)
        return ModelSource("url", name, storage.local_copy(_remote_model_dir(name)))
    if os.path.isdir(name) or _is_checkpoint_file(name):
        return ModelSource("local", name, name)
    if name in PRESETS:
        return ModelSource("preset", name)
    expanded = os.path.expanduser(name)
    if expanded != name and (os.path.isdir(expanded) or _is_checkpoint_file(expanded)):
        return ModelSource("local", name, expanded)
    if not _HUB_ID.match(name):
        raise CheckpointError(
            f"{name}: no such directory (read as a local path: it is not a preset, {sorted(PRESETS)}, "
            "and not a hub id of the form owner/name)"
        )
    tried = f"{name!r} is not a local directory nor a preset ({', '.join(sorted(PRESETS))}); as a hub id"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{tried} it needs huggingface_hub, which is not installed (pip install huggingface_hub)"
        ) from None
    try:
        return ModelSource("hub", name, snapshot_download(name, allow_patterns=_HUB_FILES))
    except Exception as e:
        raise CheckpointError(f"{tried} it could not be fetched: {type(e).__name__}: {e}") from None


def _run_model_dir(path: str) -> str:
    """A training output directory's model folder (`final_model/`, else `hf_model/`), else `path`."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        for sub in _RUN_MODEL_DIRS:
            if os.path.isfile(os.path.join(path, sub, "config.json")):
                return os.path.join(path, sub)
    return path


def _remote_model_dir(url: str) -> str:
    """`_run_model_dir` on a bucket, so that only the model folder of a run is copied."""
    if not storage.isfile(storage.join(url, "config.json")) and storage.isdir(url):
        for sub in _RUN_MODEL_DIRS:
            if storage.isfile(storage.join(url, sub, "config.json")):
                return storage.join(url, sub)
    return url


def model_folder(name_or_path: str | os.PathLike) -> str | None:
    """The folder `load_model` reads for a name (a training output dir: its model folder); None for a
    preset. Raises `CheckpointError` naming the name when it resolves to nothing."""
    source = resolve_model(name_or_path)
    return None if source.folder is None else _run_model_dir(source.folder)


# --------------------------------------------------------------------------------------- tokenizer
def check_vocab(tokenizer: MobileBertTokenizer, config: MobileBertConfig, packaged: bool = False) -> None:
    """The one reaction to a tokenizer/model mismatch: ids past the embedding table are an error, and so
    is the packaged uncased vocab standing in for a checkpoint's missing tokenizer files (`packaged`)
    when the sizes differ: the checkpoint was trained on another vocabulary, whose ids mean other words.
    """
    if packaged and tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"the model has no tokenizer files (vocab.txt / tokenizer.json) and its vocab_size "
            f"{config.vocab_size} is not the packaged uncased vocab's {tokenizer.vocab_size}: it was trained "
            "on another vocabulary; put that vocab.txt beside the model (or pass its tokenizer)"
        )
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {config.vocab_size}; "
            "use a matching tokenizer or a model config with that vocab_size"
        )


def packaged_tokenizer(name_or_path: str | os.PathLike) -> bool:
    """True when a checkpoint (not a preset) has no tokenizer files, so `load_tokenizer` gives the
    packaged uncased vocab in their place (`check_vocab(..., packaged=True)` then applies)."""
    return _stands_in(model_folder(name_or_path))


def _stands_in(model_path: str | None) -> bool:
    """The packaged vocab stands in for a checkpoint's tokenizer (`model_path` None: a preset)."""
    return model_path is not None and tokenizer_folder(model_path) is None


def tokenizer_folder(path: str | None) -> str | None:
    """The folder whose `tokenizer.json` / `vocab.txt` go with the model at `path` (a directory, or the
    folder of a checkpoint file or TF1 prefix); None when there are none."""
    if path is None:
        return None
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return folder if any(os.path.isfile(os.path.join(folder, f)) for f in _TOKENIZER_FILES) else None


def load_tokenizer(folder: str | None, config: MobileBertConfig | None = None) -> MobileBertTokenizer:
    """The one tokenizer rule: `tokenizer.json` / `vocab.txt` in `folder`, else the packaged uncased vocab.

    With `config`, a tokenizer read from `folder` must fit the model (`check_vocab`). The packaged vocab
    is a stand-in, not part of the checkpoint: whoever feeds its ids to a model checks them.
    """
    found = tokenizer_folder(folder)
    if found is None:
        return MobileBertTokenizer.default()
    tok = MobileBertTokenizer.from_pretrained(found)
    if config is not None:
        check_vocab(tok, config)
    return tok


# --------------------------------------------------------------------------------------- the loader
@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """What `load_model` read.

    Attributes:
        config: the architecture (with the caller's overrides).
        model_class: one of `model.heads.MODEL_CLASSES`.
        params: host param tree in the loop (`layer/{i}`) layout; None for a preset loaded with init=False.
        tokenizer: the checkpoint's tokenizer, else the packaged uncased vocab (`load_tokenizer`).
        source: "preset" | "hf" | "h5" | "tf1" | "orbax" | "hub" (hub: HF files fetched from the hub).
        path: the directory or file read (None for a preset).
        report: names mapped/skipped and params loaded/initialised/dropped (None: preset, init=False).
    """

    config: MobileBertConfig
    model_class: type
    params: dict | None
    tokenizer: MobileBertTokenizer
    source: str
    path: str | None
    report: TFConversionReport | None

    @property
    def packaged_tokenizer(self) -> bool:
        """`tokenizer` is the packaged uncased vocab standing in for files a checkpoint lacks."""
        return _stands_in(self.path)

    def build(
        self,
        *,
        dtype: Any = None,
        param_dtype: Any = None,
        scan_layers: bool = False,
        remat: bool = False,
        unroll_layers: bool | None = None,
        rng: Any = 0,
    ) -> tuple[Any, dict]:
        """`(model, params)`: the module with these options, its params laid out to match.

        `param_dtype` None: the loaded params' dominant float dtype (a preset: float32). A preset
        loaded with init=False is initialised here from `rng`.
        """
        import jax
        import jax.numpy as jnp

        if param_dtype is None:
            leaves = jax.tree.leaves(self.params) if self.params is not None else []
            param_dtype = dominant_float_dtype(leaves)
        model = self.model_class(
            self.config,
            dtype=dtype or jnp.float32,
            param_dtype=param_dtype,
            scan_layers=scan_layers,
            remat=remat,
            unroll_layers=unroll_layers,
        )
        if self.params is None:
            return model, init_params(model, rng)
        return model, loop_to_scan(self.params) if scan_layers else self.params


def all_initialised(params: Any, config: MobileBertConfig) -> LoadReport:
    """The report of randomly initialised params (a preset's): every PT key initialised, none loaded."""
    return LoadReport(initialised=sorted(to_pytorch(params, config, include_tied=False)))


def _class_name(model_class: Any) -> str | None:
    if model_class is None:
        return None
    name = model_class if isinstance(model_class, str) else getattr(model_class, "__name__", None)
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {model_class!r}; known: {sorted(MODEL_CLASSES)}")
    return name


def _load_preset(
    name: str,
    cls: str | None,
    strict: bool,
    param_dtype: Any,
    rng: Any,
    init: bool,
    overrides: dict[str, Any],
) -> LoadedModel:
    import jax.numpy as jnp

    if strict:
        raise CheckpointError(f"{name!r} is a preset: it has no weights to load (strict=True)")
    tok = MobileBertTokenizer.default()
    # a preset's embedding table is sized to the tokenizer it is used with, the packaged one
    sized = "" if "vocab_size" in overrides else f" (vocab_size {tok.vocab_size}: the packaged tokenizer's)"
    config = MobileBertConfig.from_preset(name, **{"vocab_size": tok.vocab_size, **overrides})
    model_class = MODEL_CLASSES[cls or "MobileBertForPreTraining"]
    logger.warning(
        "%s is a preset, not a checkpoint: %s params are randomly initialised, no pretrained weights%s",
        name,
        model_class.__name__,
        sized,
    )
    params = report = None
    if init:
        dtype = jnp.float32 if param_dtype is None or isinstance(param_dtype, str) else param_dtype
        params = init_params(model_class(config, param_dtype=dtype), rng)
        report = TFConversionReport(source=name, load=all_initialised(params, config), config=config)
    return LoadedModel(config, model_class, params, tok, "preset", None, report)


def load_model(
    name_or_path: str | os.PathLike,
    model_class: Any = None,
    *,
    config_file: str | None = None,
    teacher: bool = False,
    strict: bool = False,
    param_dtype: Any = None,
    rng: Any = 0,
    init: bool = True,
    **config_overrides: Any,
) -> LoadedModel:
    """Reads a model: its config, class, params, tokenizer and where they came from.

    Args:
        name_or_path: an HF directory (safetensors, sharded safetensors, `pytorch_model.bin`,
            `tf_model.h5`) or one such file; a google TF1 checkpoint (prefix, `.index`, or its folder);
            an orbax checkpoint (`convert --to orbax` output, a trainer checkpoint folder or one step of
            it); a training output directory (its `final_model/` or `hf_model/`); a preset name (random
            init); or a hub id (needs huggingface_hub). Resolved by `resolve_model`.
        model_class: one of the eight classes or its name; default: the config's `architectures[0]`,
            else inferred from the checkpoint's heads (a preset: `MobileBertForPreTraining`).
        config_file: an HF `config.json` or google `bert_config.json`, when none sits beside the weights.
        teacher: read the `teacher/` model of a TF1 distillation checkpoint.
        strict: fail instead of initialising or dropping head params (or loading a preset).
        param_dtype: None: float32 (an fp16/bf16 checkpoint is cast up exactly); "checkpoint": the
            file's dominant float precision; any dtype: cast to it.
        rng: seeds head params the checkpoint lacks (and a preset's params).
        init: for a preset, initialise its params (False: `params` is None, to initialise later with
            `LoadedModel.build`, e.g. sharded).
        **config_overrides: config fields to change (e.g. `num_labels=3`).

    Raises:
        CheckpointError: the name resolves to nothing, the files are unreadable, or the checkpoint's
            tokenizer has more ids than its model.
    """
    import jax.numpy as jnp

    cls = _class_name(model_class)
    source = resolve_model(name_or_path)
    if source.kind == "preset":
        if teacher:
            raise CheckpointError("teacher (--teacher) applies to TF1 distillation checkpoints only")
        return _load_preset(source.name, cls, strict, param_dtype, rng, init, config_overrides)
    path = _run_model_dir(source.folder)
    fmt = detect_source(path)
    if teacher and fmt != "tf1":
        raise CheckpointError("teacher (--teacher) applies to TF1 distillation checkpoints only")
    params, config, cls, report = READERS[fmt](
        path,
        config_file=config_file,
        overrides=config_overrides,
        model_class=cls,
        teacher=teacher,
        strict=strict,
        rng=rng,
        dtype=jnp.float32 if param_dtype is None else param_dtype,
    )
    tokenizer = load_tokenizer(path, config)
    kind = "hub" if source.kind == "hub" else fmt
    return LoadedModel(config, MODEL_CLASSES[cls], params, tokenizer, kind, path, report)
