"""How the jobs load a model and its tokenizer, and write an HF model directory.

The one module of the jobs that reads models: `load_model`, `load_tokenizer` and `check_compatible`
are the rule the jobs apply (a preset is random init sized to the tokenizer; a directory or hub id is
read by `checkpoints.loader.load_model`; a tokenizer's ids must fit the embedding table).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from mobilebert_jax.checkpoints import loader
from mobilebert_jax.checkpoints.errors import CheckpointError
from mobilebert_jax.checkpoints.hub import save_pretrained
from mobilebert_jax.jobs.config import JobConfig, UsageError
from mobilebert_jax.jobs.run_dir import say
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.tasks import Task
from mobilebert_jax.text.tokenizer import MobileBertTokenizer


def saved_model_config(model: str) -> MobileBertConfig | None:
    """The config.json of a model directory (a run folder's hf_model/, a hub id's files; strictly
    type-checked), else None (a preset, a checkpoint without one). A name that resolves to nothing is
    an error naming it (`loader.resolve_model`), not a missing --task_name."""
    folder = loader.model_folder(model)
    if folder is None or not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    return MobileBertConfig.from_json_file(os.path.join(folder, "config.json"))


def load_tokenizer(model: str) -> MobileBertTokenizer:
    """The model's tokenizer by the loader's one rule (its files, else the packaged uncased vocab)."""
    return loader.load_tokenizer(loader.model_folder(model))


def load_model(job: JobConfig, task: Task, rng: jax.Array):
    """(config, model, params or None) through `checkpoints.loader`: a preset gives random init (params
    created sharded later; its vocab_size is the packaged tokenizer's unless `model_config` sets it)."""
    dtype = jnp.bfloat16 if job.bf16 else jnp.float32
    overrides = {**task.config_overrides(), **job.model_config}
    kw = dict(dtype=dtype, scan_layers=job.scan_layers, remat=job.remat, unroll_layers=job.unroll_layers)
    attn = dict(attention_implementation=job.attention_implementation, pad_invariant=job.pad_invariant)
    try:  # init=False: a preset's params are created sharded later; a checkpoint's are read
        loaded = loader.load_model(job.model, task.model_class, rng=rng, init=False, **overrides)
    except (TypeError, ValueError) as e:
        if loader.resolve_model(job.model).kind != "preset":
            raise
        raise UsageError(f"--model_config: {e}") from None
    if loaded.source == "preset":
        return loaded.config, loaded.model_class(loaded.config, **kw, **attn), None
    model, params = loaded.build(**kw, rng=rng)
    return loaded.config, model.clone(**attn), params


DEFAULT_MAX_SEQ_LENGTH = 128


def resolve_max_seq_length(job: JobConfig, config: MobileBertConfig) -> JobConfig:
    """`job` with `max_seq_length` decided: the flag's, else the fine-tune's (saved in config.json's
    extra by the finetune job), else 128, or the model's positions where it has fewer (a tiny preset)."""
    if job.max_seq_length is not None:
        return job
    if config.saved_max_seq_length is not None:
        length, why = config.saved_max_seq_length, "the model's fine-tuning length, from its config.json"
    else:
        length = min(DEFAULT_MAX_SEQ_LENGTH, config.max_position_embeddings)
        why = "default" if length == DEFAULT_MAX_SEQ_LENGTH else "the model's max_position_embeddings"
    say(f"max_seq_length {length} ({why}; --max_seq_length sets it)")
    return dataclasses.replace(job, max_seq_length=length)


def load_params(folder: str, task: Task, scan_layers: bool) -> Any:
    """The params of an HF directory this job wrote (the best model, reloaded for the end)."""
    return loader.load_model(folder, task.model_class).build(scan_layers=scan_layers)[1]


def check_compatible(
    config: MobileBertConfig, tok: MobileBertTokenizer, max_seq_length: int, model: str
) -> None:
    """Ids past the embedding table would be silently filled inside jit, and the packaged vocab's ids
    mean other words to a checkpoint trained on another one: refuse both up front (`loader.check_vocab`)."""
    packaged = loader.packaged_tokenizer(model)
    try:
        loader.check_vocab(tok, config, packaged=packaged)
    except CheckpointError as e:
        hint = "" if packaged else f" (e.g. --model_config '{{\"vocab_size\": {tok.vocab_size}}}')"
        raise UsageError(f"{e}{hint}") from None
    if max_seq_length > config.max_position_embeddings:
        raise UsageError(
            f"--max_seq_length {max_seq_length} > the model's max_position_embeddings "
            f"{config.max_position_embeddings}"
        )


def save_hf_model(
    path: str, params: Any, config: MobileBertConfig, model: Any, tok: MobileBertTokenizer
) -> None:
    """Writes an HF directory; `params` on the host (`to_host`, which every process must call first)."""
    save_pretrained(path, params, config, type(model).__name__)
    tok.save_pretrained(path)
