"""One rule from a model name to a model (preset, local directory, hub id), in the API and the CLI alike."""

from __future__ import annotations

import logging
import shutil

import jax
import numpy as np
import pytest

from mobilebert_jax import MobileBertConfig, from_pretrained, save_pretrained
from mobilebert_jax.checkpoints.errors import CheckpointError
from mobilebert_jax.checkpoints.loader import resolve_model
from mobilebert_jax.jobs.config import JobConfig
from mobilebert_jax.jobs.model_io import load_model
from mobilebert_jax.tasks import get_task


def test_preset_builds_the_preset_with_random_init_and_says_so(caplog):
    assert resolve_model("mobilebert-tiny").kind == "preset"
    with caplog.at_level(logging.WARNING, logger="mobilebert_jax"):
        model, params, report = from_pretrained(
            "mobilebert-test", "MobileBertForSequenceClassification", num_labels=4, return_report=True
        )
    assert "mobilebert-test is a preset" in caplog.text and "randomly initialised" in caplog.text
    # sized to the packaged tokenizer, so its ids fit (the preset itself has 1000)
    assert "vocab_size 30522: the packaged tokenizer's" in caplog.text
    assert model.config == MobileBertConfig.from_preset("mobilebert-test", num_labels=4, vocab_size=30522)
    assert params["classifier"]["kernel"].shape == (64, 4) and not report.loaded
    assert "classifier.weight" in report.initialised
    assert {x.dtype.name for x in jax.tree.leaves(params)} == {"float32"}
    with pytest.raises(CheckpointError, match="is a preset: it has no weights to load"):
        from_pretrained("mobilebert-test", strict=True)


@pytest.mark.parametrize("name", ["/no/such/dir", "./not-here", "~/not-here-either", "runs/a/hf_model"])
def test_missing_local_path_says_no_such_directory(name):
    with pytest.raises(CheckpointError, match=f"^{name}: no such directory"):
        from_pretrained(name)


def test_hub_id_is_tried_last_and_the_error_names_all_three(saved, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def fake_download(repo_id, **kw):
        calls.append(repo_id)
        if repo_id != "google/mobilebert-like":
            raise hub.errors.LocalEntryNotFoundError("offline and not cached")
        return str(saved)

    monkeypatch.setattr(hub, "snapshot_download", fake_download)
    source = resolve_model("google/mobilebert-like")
    assert (source.kind, source.folder) == ("hub", str(saved))
    model, _ = from_pretrained("google/mobilebert-like")
    assert type(model).__name__ == "MobileBertModel"
    with pytest.raises(
        CheckpointError,
        match=r"'org/missing' is not a local directory nor a preset \(.*mobilebert-tiny"
        r".*\); as a hub id it could not be fetched: LocalEntryNotFoundError",
    ):
        from_pretrained("org/missing")
    assert calls == ["google/mobilebert-like", "google/mobilebert-like", "org/missing"]


def test_a_directory_named_like_a_preset_is_loaded_not_initialised(saved, tmp_path, monkeypatch):
    shutil.copytree(saved, tmp_path / "mobilebert-tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("mobilebert-tiny").kind == "local"
    model, _ = from_pretrained("mobilebert-tiny")
    assert model.config.hidden_size == 64  # the directory's config, not the preset's 512


def test_cli_loader_uses_the_same_rule(saved):
    task = get_task("sst2")
    rng = jax.random.key(0)
    config, model, params = load_model(JobConfig(model="mobilebert-test"), task, rng)
    assert params is None and config == MobileBertConfig.from_preset(
        "mobilebert-test", **task.config_overrides(), vocab_size=30522
    )
    with pytest.raises(CheckpointError, match="^/no/such/dir: no such directory"):
        load_model(JobConfig(model="/no/such/dir"), task, rng)
    config, model, params = load_model(JobConfig(model=str(saved)), task, rng)
    assert type(model).__name__ == "MobileBertForSequenceClassification" and params["classifier"]


def _config():
    return MobileBertConfig.from_preset("mobilebert-test")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One HF directory of a small MobileBertModel (random weights of the right shapes; nothing compiled)."""
    from mobilebert_jax import MobileBertModel
    from mobilebert_jax.checkpoints.pytorch import abstract_params

    rng = np.random.default_rng(0)
    shapes = abstract_params(MobileBertModel(_config()))
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)
    folder = tmp_path_factory.mktemp("resolution") / "model"
    save_pretrained(str(folder), params, _config(), "MobileBertModel")
    return folder
