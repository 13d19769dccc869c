"""Writes tests/fixtures/tf/ with REAL TensorFlow and transformers 4.57 (the committed TF fixtures).

Run it in the TensorFlow venv (never in .venv: it needs tensorflow, tf-keras and transformers 4.x):

    python3 -m venv .venv-tf
    .venv-tf/bin/pip install torch==2.13.0            # first: any other torch pulls CUDA wheels
    .venv-tf/bin/pip install transformers==4.57.6 tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py numpy
    .venv-tf/bin/python scripts/make_tf_fixtures.py

What it writes (all tiny configs; the whole folder is well under 1 MB):

- `h5/<head>/`: `tf_model.h5` + `config.json` from `TFMobileBert<Head>.save_pretrained` with perturbed
  random weights (NoNorm weights != 1, biases != 0; the untied TF decoder set equal to the word
  embeddings, as in every converted checkpoint), and `outputs.npz`: the inputs and the TF outputs on
  UNPADDED inputs with token types (HF-TF masks with -10000, so padded rows would not be a fair
  target). The layer_norm head also records the PyTorch outputs of `from_pretrained(from_tf=True)`
  (`pt_*`), since HF PT uses eps 1e-5 on two LayerNorms where TF uses 1e-12.
- `tf1/`: a TF1 name-based checkpoint (`tf.compat.v1.train.Saver`) with the original google-research
  names (`bert/encoder/layer_0/...`, `FakeLayerNorm`, `ffn_layer_j`, `extra_output_weights`, NSP and
  `cls/squad` heads), Adam slots `*/adam_m`, `*/adam_v`, `global_step`, and a `teacher/` copy of a
  second (layer_norm, gelu) model; `bert_config.json` / `teacher_config.json` in google format; the HF
  configs used for the references; `outputs.npz` with the outputs of transformers 4.57's
  `load_tf_weights_in_mobilebert` (into PT MobileBertForPreTraining, on a padded batch) for the student
  and the teacher, and the QA outputs with `cls/squad` mapped by hand into `qa_outputs`; `pt_digests.json`
  with the sha256 of every tensor of the PT state dicts that loader produced.
- `bundle/`: two more bundles (an object-based `tf.train.Checkpoint` with bfloat16, float16, int64,
  bool and string tensors, and a 2-shard `Saver(sharded=True)` checkpoint).
- `tensors.json`: dtype, shape and sha256 of every tensor of every bundle above, as read by
  `tf.train.load_checkpoint`, so the default suite can prove our reader bit-exact without TensorFlow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.modeling_tf_pytorch_utils import load_tf2_checkpoint_in_pytorch_model  # noqa: E402
from transformers.models.mobilebert.modeling_mobilebert import load_tf_weights_in_mobilebert  # noqa: E402

tf1 = tf.compat.v1
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tf")
SEED = 20240606

# --------------------------------------------------------------------------------------------- configs
# HF configs for the h5 fixtures. A: the OPT structure (no_norm, kq-shared, F=2) with a pooler dense;
# B: layer_norm + gelu + bottleneck attention; C: a one-layer model for the other heads.
H5_A = dict(
    vocab_size=64,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    intra_bottleneck_size=16,
    max_position_embeddings=24,
    num_feedforward_networks=2,
    hidden_act="relu",
    classifier_activation=True,
    key_query_shared_bottleneck=True,
)
H5_B = dict(
    vocab_size=64,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=20,
    intra_bottleneck_size=8,
    max_position_embeddings=16,
    num_feedforward_networks=1,
    hidden_act="gelu",
    normalization_type="layer_norm",
    use_bottleneck_attention=True,
    key_query_shared_bottleneck=False,
    classifier_activation=False,
)
H5_C = dict(
    vocab_size=48,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=12,
    intra_bottleneck_size=8,
    max_position_embeddings=16,
    num_feedforward_networks=1,
    hidden_act="relu",
    classifier_activation=True,
)

# google-research format (like uncased_L-24_H-128_B-512_A-4_F-4_OPT.json: every key present).
STUDENT_GOOGLE = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 24,
    "initializer_range": 0.02,
    "intermediate_size": 16,
    "max_position_embeddings": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "type_vocab_size": 2,
    "vocab_size": 64,
    "embedding_size": 8,
    "trigram_input": True,
    "use_bottleneck": True,
    "intra_bottleneck_size": 12,
    "key_query_shared_bottleneck": True,
    "num_feedforward_networks": 3,
    "normalization_type": "no_norm",
    "classifier_activation": True,
}
# Like uncased_L-24_H-1024_B-512_A-4.json (the IB-BERT teacher): normalization, kq-sharing, F and
# classifier_activation are left to google's BertConfig defaults (layer_norm, False, 1, True). I == H
# here (the real teacher has I > H, which HF PyTorch cannot build).
TEACHER_GOOGLE = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 24,
    "initializer_range": 0.02,
    "intermediate_size": 32,
    "max_position_embeddings": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "type_vocab_size": 2,
    "vocab_size": 64,
    "embedding_size": 8,
    "trigram_input": True,
    "use_bottleneck": True,
    "intra_bottleneck_size": 24,
}
# The same teacher as an HF config, written by hand from google's defaults; google's "gelu" is the tanh
# approximation, HF's "gelu_new".
TEACHER_HF = dict(
    vocab_size=64,
    embedding_size=8,
    hidden_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    hidden_act="gelu_new",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=16,
    type_vocab_size=2,
    trigram_input=True,
    use_bottleneck=True,
    intra_bottleneck_size=24,
    use_bottleneck_attention=False,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    classifier_activation=True,
)


def perturbed(name: str, shape, rng: np.random.Generator) -> np.ndarray:
    """Random values whose role shows in the name: norms 1 +- 0.2, biases 0 +- 0.1, embeddings N(0, 0.5),
    matrices N(0, 0.15). Larger matrices make NoNorm stacks so ill-conditioned that float32 TF itself
    drifts ~1e-5 from a float64 evaluation."""
    leaf = name.split("/")[-1].split(":")[0]
    shape = tuple(int(s) for s in shape)
    if leaf in ("gamma",) or (leaf == "weight" and "LayerNorm" in name):
        return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    if leaf in ("beta", "bias", "output_bias"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if "embeddings" in name:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    return (0.15 * rng.standard_normal(shape)).astype(np.float32)


def digest(a: np.ndarray) -> str:
    """sha256 of a tensor's bytes (C order); strings hash each element with its 8-byte length."""
    a = np.asarray(a)
    if a.dtype == object:
        h = hashlib.sha256()
        for x in a.ravel():
            h.update(len(x).to_bytes(8, "little") + bytes(x))
        return h.hexdigest()
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write_json(path: str, obj, compact: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            obj, f, indent=None if compact else 2, sort_keys=True, separators=(",", ":") if compact else None
        )
        f.write("\n")


# -------------------------------------------------------------------------------------------- h5 part
def make_inputs(rng, vocab, batch=2, length=7, choices=None):
    shape = (batch, choices, length) if choices else (batch, length)
    ids = rng.integers(1, vocab, size=shape).astype(np.int32)
    tt = np.zeros(shape, np.int32)
    tt[..., length // 2 :] = 1
    tt[0, ..., 1:3] = 1  # token types that are not a plain split
    return ids, tt


def make_h5(name: str, head: str, cfg_kwargs: dict, rng, choices=None, record_pt=False) -> None:
    out = os.path.join(ROOT, "h5", name)
    os.makedirs(out, exist_ok=True)
    config = transformers.MobileBertConfig(
        **cfg_kwargs, num_labels=3 if head == "ForSequenceClassification" else 2
    )
    if head == "ForTokenClassification":
        config.num_labels = 4
    cls = getattr(transformers, f"TFMobileBert{head}")
    model = cls(config)
    ids, tt = make_inputs(rng, config.vocab_size, choices=choices)
    model(input_ids=ids, token_type_ids=tt, training=False)  # builds the weights
    values = {}
    for w in model.weights:
        values[w.name] = perturbed(w.name, w.shape, rng)
    emb = next(v for k, v in values.items() if k.endswith("word_embeddings/weight:0"))
    for w in model.weights:
        v = emb if w.name.endswith("decoder/weight:0") else values[w.name]
        w.assign(v)
    arrays = {"input_ids": ids, "token_type_ids": tt}

    def run(tag=""):
        res = model(
            input_ids=ids,
            attention_mask=np.ones_like(ids),
            token_type_ids=tt,
            output_hidden_states=True,
            training=False,
        )
        for key, val in res.items():
            if key == "hidden_states":
                for i, h in enumerate(val):
                    arrays[f"{tag}hidden_states_{i}"] = np.asarray(h)
            elif val is not None:
                arrays[f"{tag}{key}"] = np.asarray(val)

    run()
    model.save_pretrained(out)
    if record_pt:
        # HF PT builds embeddings.LayerNorm and layer.N.output.LayerNorm without eps (PyTorch's 1e-5);
        # TF uses layer_norm_eps everywhere. Rerun TF with PT's eps on those two: `pteps_*`.
        main = model.mobilebert
        for norm in [main.embeddings.LayerNorm] + [
            lay.mobilebert_output.LayerNorm for lay in main.encoder.layer
        ]:
            norm.epsilon = 1e-5
        run("pteps_")
        # from_pretrained(from_tf=True) of 4.57 trips on torch 2.13's meta-device init; load by hand.
        pt = getattr(transformers, f"MobileBert{head}")(config).eval()
        pt, info = load_tf2_checkpoint_in_pytorch_model(
            pt, os.path.join(out, "tf_model.h5"), output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        with torch.no_grad():
            r = pt(
                input_ids=torch.tensor(ids, dtype=torch.long),
                token_type_ids=torch.tensor(tt, dtype=torch.long),
            )
        for key, val in r.items():
            if isinstance(val, torch.Tensor):
                arrays[f"pt_{key}"] = val.numpy()
    np.savez_compressed(os.path.join(out, "outputs.npz"), **arrays)
    print(f"h5/{name}: TFMobileBert{head}, {len(model.weights)} weights, outputs {sorted(arrays)}")


# ------------------------------------------------------------------------------------------- TF1 part
def google_variables(g: dict) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the original google-research MobileBERT pretraining graph (modeling.py)."""
    H, V, E = g["hidden_size"], g["vocab_size"], g.get("embedding_size") or g["hidden_size"]
    norm = "FakeLayerNorm" if g.get("normalization_type", "layer_norm") == "no_norm" else "LayerNorm"
    use_bn = g.get("use_bottleneck", False)
    I = g.get("intra_bottleneck_size") or H if use_bn else H  # noqa: E741
    bn_att, kq = g.get("use_bottleneck_attention", False), g.get("key_query_shared_bottleneck", False)
    M, F = g["intermediate_size"], g.get("num_feedforward_networks", 1)
    v = {"bert/embeddings/word_embeddings": (V, E)}
    if g.get("trigram_input") or E != H:
        v["bert/embeddings/embedding_transformation/kernel"] = (3 * E if g.get("trigram_input") else E, H)
        v["bert/embeddings/embedding_transformation/bias"] = (H,)
    v["bert/embeddings/token_type_embeddings"] = (g["type_vocab_size"], H)
    v["bert/embeddings/position_embeddings"] = (g["max_position_embeddings"], H)
    v[f"bert/embeddings/{norm}/gamma"] = v[f"bert/embeddings/{norm}/beta"] = (H,)

    def dense(scope, n_in, n_out, norm_width=None):
        v[f"{scope}/dense/kernel"], v[f"{scope}/dense/bias"] = (n_in, n_out), (n_out,)
        if norm_width:
            v[f"{scope}/{norm}/gamma"] = v[f"{scope}/{norm}/beta"] = (norm_width,)

    for i in range(g["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}"
        if use_bn:
            dense(f"{p}/bottleneck/input", H, I, I)
            if not bn_att and kq:
                dense(f"{p}/bottleneck/attention", H, I, I)
        qk_in = I if (use_bn and (bn_att or kq)) else H
        v_in = I if (use_bn and bn_att) else H
        for n, d_in in (("query", qk_in), ("key", qk_in), ("value", v_in)):
            v[f"{p}/attention/self/{n}/kernel"], v[f"{p}/attention/self/{n}/bias"] = (d_in, I), (I,)
        dense(f"{p}/attention/output", I, I, I)
        for j in range(F - 1):
            dense(f"{p}/ffn_layer_{j}/intermediate", I, M)
            dense(f"{p}/ffn_layer_{j}/output", M, I, I)
        dense(f"{p}/intermediate", I, M)
        dense(f"{p}/output", M, I, I if use_bn else H)
        if use_bn:
            dense(f"{p}/output/bottleneck", I, H, H)
    if g.get("classifier_activation", True):
        dense("bert/pooler", H, H)
    v["cls/predictions/transform/dense/kernel"], v["cls/predictions/transform/dense/bias"] = (H, H), (H,)
    v["cls/predictions/transform/LayerNorm/gamma"] = v["cls/predictions/transform/LayerNorm/beta"] = (H,)
    v["cls/predictions/output_bias"] = (V,)
    if E != H:
        v["cls/predictions/extra_output_weights"] = (V, H - E)
    v["cls/seq_relationship/output_weights"], v["cls/seq_relationship/output_bias"] = (2, H), (2,)
    return v


def save_v1(path: str, tensors: dict[str, np.ndarray], sharded: bool = False) -> str:
    """Writes a name-based checkpoint with tf.compat.v1.train.Saver; names are exactly the dict keys."""
    graph = tf.Graph()
    with graph.as_default():
        variables = []
        for k, (name, value) in enumerate(tensors.items()):
            with tf.device(f"/cpu:{k % 2}" if sharded else "/cpu:0"):
                variables.append(tf1.get_variable(name, initializer=tf.constant(value), use_resource=False))
        saver = tf1.train.Saver(variables, sharded=sharded)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            return saver.save(sess, path, write_meta_graph=False, write_state=False)


def pt_reference(ckpt: str, config, inputs, qa_from=None):
    """HF's own loader into a NaN-filled MobileBertForPreTraining; returns (outputs, digests, model)."""
    model = transformers.MobileBertForPreTraining(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    load_tf_weights_in_mobilebert(model, config, ckpt)
    bad = [k for k, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"load_tf_weights_in_mobilebert left {bad} unset"
    with torch.no_grad():
        r = model(**inputs, output_hidden_states=True)
    out = {
        "prediction_logits": r.prediction_logits.numpy(),
        "seq_relationship_logits": r.seq_relationship_logits.numpy(),
    }
    for i, h in enumerate(r.hidden_states):
        out[f"hidden_states_{i}"] = h.numpy()
    skip = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    digests = {
        k: digest(t.numpy())
        for k, t in model.state_dict().items()
        if k not in skip and "position_ids" not in k
    }
    return out, digests, model


def make_tf1(rng) -> None:
    out = os.path.join(ROOT, "tf1")
    os.makedirs(out, exist_ok=True)
    student = {n: perturbed(n, s, rng) for n, s in google_variables(STUDENT_GOOGLE).items()}
    teacher = {f"teacher/{n}": perturbed(n, s, rng) for n, s in google_variables(TEACHER_GOOGLE).items()}
    squad = {
        "cls/squad/output_weights": perturbed("output_weights", (2, STUDENT_GOOGLE["hidden_size"]), rng),
        "cls/squad/output_bias": perturbed("output_bias", (2,), rng),
    }
    tensors = {**student, **squad, **teacher}
    slots = {}  # the teacher is frozen during distillation: Adam slots for the student and head only
    for n, a in {**student, **squad}.items():
        slots[f"{n}/adam_m"] = (0.01 * rng.standard_normal(a.shape)).astype(np.float32)
        slots[f"{n}/adam_v"] = (0.001 * np.abs(rng.standard_normal(a.shape))).astype(np.float32)
    everything = {**tensors, **slots, "global_step": np.int64(12345)}
    prefix = save_v1(os.path.join(out, "mobilebert_variables.ckpt"), everything)
    write_json(os.path.join(out, "bert_config.json"), STUDENT_GOOGLE)
    write_json(os.path.join(out, "teacher_config.json"), TEACHER_GOOGLE)

    # Inputs: a padded batch (HF PT masks with finfo.min, as our Flax model) with token types.
    ids = rng.integers(1, STUDENT_GOOGLE["vocab_size"], size=(2, 8)).astype(np.int64)
    mask = np.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 0, 0
    tt = np.zeros_like(ids)
    tt[:, 4:] = 1
    tt[1, 6:] = 0
    inputs = {
        k: torch.tensor(v) for k, v in dict(input_ids=ids, attention_mask=mask, token_type_ids=tt).items()
    }
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        # HF's loader walks `teacher/...` into the student and maps cls/squad to a missing `classifier`:
        # give it a copy without them (slots and global_step stay, to exercise its own skipping).
        keep = {k: v for k, v in everything.items() if not k.startswith(("teacher/", "cls/squad/"))}
        student_ckpt = save_v1(os.path.join(tmp, "student.ckpt"), keep)
        s_cfg = transformers.MobileBertConfig.from_json_file(os.path.join(out, "bert_config.json"))
        s_out, digests["student"], s_model = pt_reference(student_ckpt, s_cfg, inputs)
        arrays.update({f"student_{k}": v for k, v in s_out.items()})
        write_json(os.path.join(out, "student_hf_config.json"), s_cfg.to_dict())

        qa = transformers.MobileBertForQuestionAnswering(s_cfg).eval()
        missing, unexpected = qa.load_state_dict(s_model.state_dict(), strict=False)
        assert set(missing) == {"qa_outputs.weight", "qa_outputs.bias"}, missing
        with torch.no_grad():  # google's output_weights are [2, H] = PT (out, in): no transpose
            qa.qa_outputs.weight.copy_(torch.from_numpy(squad["cls/squad/output_weights"]))
            qa.qa_outputs.bias.copy_(torch.from_numpy(squad["cls/squad/output_bias"]))
            r = qa(**inputs)
        arrays["qa_start_logits"], arrays["qa_end_logits"] = r.start_logits.numpy(), r.end_logits.numpy()

        t_only = {k[len("teacher/") :]: v for k, v in everything.items() if k.startswith("teacher/")}
        t_only["global_step"] = everything["global_step"]
        teacher_ckpt = save_v1(os.path.join(tmp, "teacher.ckpt"), t_only)
        t_cfg = transformers.MobileBertConfig(**TEACHER_HF)
        t_out, digests["teacher"], _ = pt_reference(teacher_ckpt, t_cfg, inputs)
        arrays.update({f"teacher_{k}": v for k, v in t_out.items()})
        write_json(os.path.join(out, "teacher_hf_config.json"), t_cfg.to_dict())
    np.savez_compressed(os.path.join(out, "outputs.npz"), **arrays)
    write_json(os.path.join(out, "pt_digests.json"), digests, compact=True)
    print(f"tf1: {prefix} with {len(everything)} variables; outputs {sorted(arrays)}")


# ---------------------------------------------------------------------------------------- bundle part
def make_bundles(rng) -> None:
    out = os.path.join(ROOT, "bundle")
    os.makedirs(out, exist_ok=True)
    ckpt = tf.train.Checkpoint(
        bf16=tf.Variable(tf.constant(rng.standard_normal((3, 4)), dtype=tf.bfloat16)),
        f16=tf.Variable(rng.standard_normal((5,)).astype(np.float16)),
        f64=tf.Variable(rng.standard_normal((2, 2))),
        i64=tf.Variable(np.arange(-3, 3, dtype=np.int64)),
        i32=tf.Variable(np.int32(-7)),
        flag=tf.Variable(np.array([True, False, True])),
        empty=tf.Variable(np.zeros((0, 3), np.float32)),
    )
    ckpt.write(os.path.join(out, "objects"))
    sharded = {f"block_{k}/kernel": perturbed("kernel", (3, k + 1), rng) for k in range(4)}
    save_v1(os.path.join(out, "sharded.ckpt"), sharded, sharded=True)
    print(f"bundle: {sorted(os.listdir(out))}")


def record_tensors() -> None:
    """dtype/shape/sha256 of every tensor of every bundle, as tf.train.load_checkpoint reads them."""
    table = {}
    for sub, prefix in (
        ("tf1", "mobilebert_variables.ckpt"),
        ("bundle", "objects"),
        ("bundle", "sharded.ckpt"),
    ):
        reader = tf.train.load_checkpoint(os.path.join(ROOT, sub, prefix))
        dtypes = reader.get_variable_to_dtype_map()
        entries = {}
        for name, shape in sorted(reader.get_variable_to_shape_map().items()):
            a = reader.get_tensor(name)
            a = np.asarray(a, dtype=object) if dtypes[name] == tf.string else np.asarray(a)
            entries[name] = {"dtype": dtypes[name].name, "shape": list(shape), "sha256": digest(a)}
        table[f"{sub}/{prefix}"] = entries
    write_json(os.path.join(ROOT, "tensors.json"), table, compact=True)


def main() -> None:
    global ROOT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default=ROOT, help="fixture folder (default: tests/fixtures/tf; it is replaced)"
    )
    ROOT = os.path.abspath(parser.parse_args().out)
    print(f"tensorflow {tf.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    if os.path.isdir(ROOT) and os.listdir(ROOT):
        if not os.path.exists(os.path.join(ROOT, "tensors.json")):
            sys.exit(f"{ROOT} is not empty and holds no fixtures (no tensors.json): refusing to replace it")
        shutil.rmtree(ROOT)
    os.makedirs(ROOT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    tf.keras.utils.set_random_seed(SEED)
    torch.manual_seed(SEED)
    make_h5("pretraining", "ForPreTraining", H5_A, rng)
    make_h5("qa_layer_norm", "ForQuestionAnswering", H5_B, rng, record_pt=True)
    # Every HF-TF head but these two uses names covered above (MLM/NSP/base: `mobilebert`,
    # `predictions___cls`, `seq_relationship___cls`; token classification: `classifier`, as these).
    for name, head, choices in (
        ("sequence_classification", "ForSequenceClassification", None),
        ("multiple_choice", "ForMultipleChoice", 3),
    ):
        make_h5(name, head, H5_C, rng, choices=choices)
    make_tf1(rng)
    make_bundles(rng)
    record_tensors()
    versions = {
        "tensorflow": tf.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    write_json(
        os.path.join(ROOT, "versions.json"), {**versions, "python": sys.version.split()[0], "seed": SEED}
    )
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print(f"wrote {ROOT}: {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
