"""HF directories both ways, safe .bin reading, truncated files, and clear errors on bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import TINY, perturbed_hf_model, rel_err
from test_parity import make_inputs

from mobilebert_jax import MobileBertConfig, MobileBertModel, from_pretrained, save_pretrained
from mobilebert_jax.checkpoints.errors import CheckpointError
from mobilebert_jax.checkpoints.torch_pickle import load_pytorch_bin

torch = pytest.importorskip("torch", reason="torch is the test reference")
transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")
CFG = MobileBertConfig(**TINY)


def _hf_out(pt, inputs):
    with torch.no_grad():
        return pt(**{k: torch.tensor(v) for k, v in inputs.items()})


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded"])
def test_load_hf_directory(tmp_path, fmt):
    pt = perturbed_hf_model(CFG, "MobileBertForPreTraining")
    if fmt == "safetensors":
        pt.save_pretrained(tmp_path)
    elif fmt == "bin":  # what transformers 4.x and the hub's old checkpoints hold
        pt.config.save_pretrained(tmp_path)
        torch.save(pt.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        pt.save_pretrained(tmp_path, max_shard_size="100KB")
        assert os.path.exists(tmp_path / "model.safetensors.index.json")
    model, params = from_pretrained(str(tmp_path))
    assert type(model).__name__ == "MobileBertForPreTraining"  # from config.architectures
    inputs, _ = make_inputs(CFG, "MobileBertForPreTraining")
    ref = _hf_out(pt, inputs)
    ours = model.apply({"params": params}, **inputs)
    assert rel_err(ours.prediction_logits, ref.prediction_logits.numpy()) < 1e-5


@pytest.mark.parametrize(
    "class_name",
    [
        "MobileBertForPreTraining",
        "MobileBertForSequenceClassification",
        "MobileBertForQuestionAnswering",
        "MobileBertForMultipleChoice",
    ],
)
def test_save_pretrained_loads_in_transformers_with_no_missing_keys(tmp_path, class_name):
    cfg = CFG.replace(num_labels=2) if "Question" in class_name else CFG
    pt = perturbed_hf_model(cfg, class_name)
    pt.save_pretrained(tmp_path / "src")
    model, params = from_pretrained(str(tmp_path / "src"), class_name)
    save_pretrained(str(tmp_path / "out"), params, cfg, class_name)
    reloaded, info = getattr(transformers, class_name).from_pretrained(
        tmp_path / "out", output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    original = pt.state_dict()
    for k, v in reloaded.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), original[k].numpy(), err_msg=k)
    inputs, _ = make_inputs(cfg, class_name)
    ref, again = _hf_out(pt, inputs), _hf_out(reloaded.eval(), inputs)
    for k in ref.keys():  # same weights; torch itself varies by ~1e-7 between runs
        assert rel_err(again[k].numpy(), ref[k].numpy()) < 1e-6, k


def test_base_directory_into_head_and_overrides(tmp_path):
    pt = perturbed_hf_model(CFG, "MobileBertModel")
    pt.save_pretrained(tmp_path)
    model, params, report = from_pretrained(
        str(tmp_path), "MobileBertForSequenceClassification", num_labels=5, return_report=True
    )
    assert model.config.num_labels == 5 and params["classifier"]["kernel"].shape == (48, 5)
    assert sorted(report.initialised) == ["classifier.bias", "classifier.weight"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    _Evil.marker = str(marker)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": evil}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle global posix.system"):
        load_pytorch_bin(str(path))
    assert not marker.exists()


def test_truncated_files_give_clear_errors(tmp_path):
    pt = perturbed_hf_model(CFG, "MobileBertModel")
    pt.save_pretrained(tmp_path / "st")
    f = tmp_path / "st" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors"):
        from_pretrained(str(tmp_path / "st"))
    pt.config.save_pretrained(tmp_path / "bin")
    torch.save(pt.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    f = tmp_path / "bin" / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        from_pretrained(str(tmp_path / "bin"))
    with pytest.raises(CheckpointError, match="no weights found"):
        os.remove(f)
        from_pretrained(str(tmp_path / "bin"))


def test_missing_directory_without_hub(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere-org/nothing: no such directory"):
        from_pretrained(str(tmp_path / "nowhere-org/nothing"))
    with pytest.raises(CheckpointError, match="not a local directory nor a preset .*as a hub id"):
        from_pretrained("nowhere-org/nothing")


def test_bad_inputs_raise_clear_errors():
    from mobilebert_jax import init_params

    model = MobileBertModel(CFG)
    params = init_params(model)
    ids = np.ones((2, 5), np.int32)
    run = lambda **kw: model.apply({"params": params}, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"input_ids\[1, 3\] = 99 is out of range \[0, 99\)"):
        bad = ids.copy()
        bad[1, 3] = 99
        run(input_ids=bad)
    with pytest.raises(ValueError, match="out of range"):
        run(input_ids=-ids)
    with pytest.raises(ValueError, match="sequence length 33 exceeds max_position_embeddings=32"):
        run(input_ids=np.ones((1, 33), np.int32))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 5\)"):
        run(input_ids=ids, attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"token_type_ids\[0, 0\] = 2 is out of range"):
        run(input_ids=ids, token_type_ids=np.full((2, 5), 2))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        run()
    with pytest.raises(ValueError, match="embedding_size=16"):
        run(inputs_embeds=np.ones((2, 5, 7), np.float32))
