"""Live TensorFlow comparisons (marker `tensorflow`): skipped unless tensorflow is importable.

Run in an environment with tensorflow-cpu 2.21, tf-keras and transformers 4.57 (the `.venv-tf` of
scripts/make_tf_fixtures.py with this package installed); the default suite checks the recorded
fixtures instead (tests/test_tf_convert.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

tf = pytest.importorskip(
    "tensorflow",
    reason="tensorflow is not installed: live TF checks skipped (test_tf_convert.py checks the recorded fixtures)",
)

from conftest import rel_err  # noqa: E402

from mobilebert_jax import MODEL_CLASSES  # noqa: E402
from mobilebert_jax.checkpoints import tf_bundle as tb  # noqa: E402
from mobilebert_jax.checkpoints.pytorch import to_pytorch  # noqa: E402
from mobilebert_jax.checkpoints.tensorflow import load_tf1_checkpoint, load_tf_h5, save_tf1_checkpoint  # noqa: E402

pytestmark = pytest.mark.tensorflow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "tf")
TF1 = os.path.join(FIX, "tf1", "mobilebert_variables.ckpt")
tf1 = tf.compat.v1


def transformers_4():
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip(
            f"needs transformers 4.x (TF classes, load_tf_weights_in_mobilebert); have {transformers.__version__}"
        )
    pytest.importorskip("torch")
    return transformers


def assert_same_as_tf(prefix: str) -> None:
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    ours = tb.load_checkpoint(prefix)
    assert sorted(ours) == sorted(dtypes)
    for name, dt in dtypes.items():
        ref = reader.get_tensor(name)
        if dt == tf.string:
            assert list(np.ravel(ours[name])) == list(np.ravel(np.asarray(ref, dtype=object))), name
        else:
            ref = np.asarray(ref)
            assert ours[name].dtype == ref.dtype and ours[name].shape == ref.shape, name
            assert ours[name].tobytes() == ref.tobytes(), name


def test_fixture_bundles_live():
    for prefix in (TF1, os.path.join(FIX, "bundle", "objects"), os.path.join(FIX, "bundle", "sharded.ckpt")):
        assert_same_as_tf(prefix)
    via_tf = tb.load_checkpoint(TF1, use_tensorflow=True)  # the optional TF path gives the same
    ours = tb.load_checkpoint(TF1)
    assert via_tf.keys() == ours.keys() and all(via_tf[k].tobytes() == ours[k].tobytes() for k in ours)


def test_fresh_random_bundles_live(tmp_path):
    rng = np.random.default_rng(1)
    values = {
        "a/kernel": rng.standard_normal((37, 5)).astype(np.float32),
        "a/kernel/adam_m": rng.standard_normal((37, 5)).astype(np.float32),
        "b/half": rng.standard_normal((4, 3, 2)).astype(np.float16),
        "c/big": rng.standard_normal((300, 257)).astype(np.float32),  # > one 256 KiB table block of data
        "d/int": rng.integers(-9, 9, (6,)).astype(np.int64),
        "global_step": np.int64(3),
    }
    with tf.Graph().as_default() as g:
        vs = [tf1.get_variable(k, initializer=tf.constant(v), use_resource=False) for k, v in values.items()]
        saver = tf1.train.Saver(vs)
        with tf1.Session(graph=g) as sess:
            sess.run(tf1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "m.ckpt"), write_meta_graph=False)
    assert_same_as_tf(prefix)
    assert tb.resolve_checkpoint_prefix(tmp_path) == prefix  # via the `checkpoint` state file
    # 4000 long names: an index bigger than one 256 KiB table block (several data blocks)
    names = [f"scope_{i:04d}/" + "long_variable_name_" * 5 for i in range(4000)]
    tf.raw_ops.SaveV2(
        prefix=str(tmp_path / "many"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(np.float32(i)) for i in range(len(names))],
    )
    assert os.path.getsize(tmp_path / "many.index") > 262144  # TF table blocks are 256 KiB
    assert_same_as_tf(str(tmp_path / "many"))


def test_save_tf1_checkpoint_round_trip(tmp_path):
    params, report = load_tf1_checkpoint(TF1, None, "MobileBertForPreTraining")
    prefix = save_tf1_checkpoint(params, report.config, tmp_path / "export" / "model.ckpt")
    exported = dict(tf.train.list_variables(prefix))
    loaded = {n for n, k in report.mapped.items() if k in report.load.loaded}  # not the squad head
    want = {n: s for n, s in tb.list_variables(TF1) if n in loaded}
    assert exported == want  # the original google names and shapes, nothing else
    back, _ = load_tf1_checkpoint(prefix, report.config, "MobileBertForPreTraining")
    a, b = to_pytorch(params, report.config), to_pytorch(back, report.config)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_hf_loader_reads_our_tf1_export(tmp_path):
    transformers = transformers_4()
    import torch
    from transformers.models.mobilebert.modeling_mobilebert import load_tf_weights_in_mobilebert

    params, report = load_tf1_checkpoint(TF1, None, "MobileBertForPreTraining")
    prefix = save_tf1_checkpoint(params, report.config, tmp_path / "model.ckpt")
    hf_config = transformers.MobileBertConfig(
        **{k: v for k, v in report.config.to_dict().items() if k != "extra"}
    )
    pt = transformers.MobileBertForPreTraining(hf_config).eval()
    load_tf_weights_in_mobilebert(pt, hf_config, prefix)
    ids = np.array([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 0, 0]])
    mask = (ids > 0).astype(np.int64)
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    with jax.default_matmul_precision("highest"):
        out = MODEL_CLASSES["MobileBertForPreTraining"](report.config).apply(
            {"params": params}, input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32)
        )
    assert rel_err(out.prediction_logits, ref.prediction_logits.numpy()) < 1e-5


def test_h5_live_without_bottleneck_or_trigram(tmp_path):
    """A config the fixtures do not cover: no bottleneck, no trigram, E == H (HF-TF's dead projection)."""
    transformers = transformers_4()
    config = transformers.MobileBertConfig(
        vocab_size=50,
        embedding_size=16,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        use_bottleneck=False,
        trigram_input=False,
        num_feedforward_networks=2,
        max_position_embeddings=16,
        classifier_activation=False,
        num_labels=4,
    )
    model = transformers.TFMobileBertForTokenClassification(config)
    ids = np.random.default_rng(0).integers(1, 50, (2, 9)).astype(np.int32)
    model(input_ids=ids)
    rng = np.random.default_rng(2)
    for w in model.weights:
        w.assign(w + 0.1 * rng.standard_normal(w.shape).astype(np.float32))
    ref = model(input_ids=ids, attention_mask=np.ones_like(ids), training=False).logits.numpy()
    model.save_pretrained(tmp_path)
    params, report = load_tf_h5(tmp_path, None, "MobileBertForTokenClassification")
    assert "mobilebert.embeddings.embedding_transformation.weight" in report.load.dropped
    with jax.default_matmul_precision("highest"):
        out = MODEL_CLASSES["MobileBertForTokenClassification"](report.config).apply(
            {"params": params}, input_ids=ids
        )
    assert rel_err(out.logits, ref) < 1e-5


@pytest.mark.timeout(600)
def test_regenerated_fixtures_match_committed(tmp_path):
    """Rerunning scripts/make_tf_fixtures.py reproduces the committed fixtures (bundles bit for bit)."""
    transformers_4()
    out = tmp_path / "tf"
    script = os.path.join(ROOT, "scripts", "make_tf_fixtures.py")
    subprocess.run([sys.executable, script, "--out", str(out)], check=True, capture_output=True)
    for rel in ("tensors.json", os.path.join("tf1", "pt_digests.json")):
        assert (out / rel).read_text() == open(os.path.join(FIX, rel)).read(), rel
    for npz in (
        os.path.join("tf1", "outputs.npz"),
        *(os.path.join("h5", d, "outputs.npz") for d in os.listdir(out / "h5")),
    ):
        new, old = np.load(out / npz), np.load(os.path.join(FIX, npz))
        assert sorted(new.files) == sorted(old.files), npz
        for k in new.files:
            if new[k].dtype.kind == "f":
                assert rel_err(new[k], old[k]) <= 1e-6, (npz, k)
            else:
                assert np.array_equal(new[k], old[k]), (npz, k)
