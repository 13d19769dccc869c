"""Device-ready LiteRT exports in the real app clients.

MediaPipe Tasks' `TextClassifier` (pip `mediapipe`, in the test extra) loads the file as is and scores
real SST-2 text like HF PyTorch on the same weights; the TFLite Metadata is read back with MediaPipe's
generated schema classes. The TFLite Task Library (tflite-support 0.4.4, whose pins clash with ours) is
checked by `scripts/check_task_library.sh` in its own venv (docs/deploy_clients.md).

MediaPipe pads every text to the exported length; HF scores it unpadded. Until the padding-invariance
work lands, the reference model's [PAD] embedding row is zero, as in every HF-trained checkpoint (the
trigram embedding of the last real token reads its right neighbour: [PAD] there, zeros unpadded).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from conftest import SHARED_DATA, TINY, perturbed_hf_model

from mobilebert_jax import MobileBertConfig

pytest.importorskip("litert_converter", reason="litert-converter (the export extra) is not installed")
SST2_DEV = os.path.join(SHARED_DATA, "glue", "SST-2", "dev.tsv")
LENGTH = 128
N_TEXTS = 48  # one text at a time through the client and through HF
LABELS = {0: "negative", 1: "positive"}


def _sst2(n: int) -> list[str]:
    if not os.path.exists(SST2_DEV):
        pytest.skip(f"real data not found at {os.path.abspath(SST2_DEV)} (SST-2 dev.tsv)")
    with open(SST2_DEV, encoding="utf-8") as f:
        rows = [ln.rstrip("\n").split("\t") for ln in f][1:]
    return [r[0].strip() for r in rows[:n]]


def _hf_export(tmp_path, problem_type=None, seed=3, quantize="none"):
    """HF PT classifier (perturbed, [PAD] row zero) with the packaged uncased vocab → HF folder →
    `from_pretrained` → device-ready LiteRT export. Returns (pt model, HF tokenizer, export dir)."""
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    transformers = pytest.importorskip("transformers", reason="transformers is the test reference")
    from mobilebert_jax import export as ex
    from mobilebert_jax.checkpoints.hub import from_pretrained
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    tok = MobileBertTokenizer.default()
    cfg = MobileBertConfig(
        **{**TINY, "vocab_size": tok.vocab_size, "max_position_embeddings": 512, "num_labels": 2},
        id2label=LABELS,
        problem_type=problem_type,
    )
    pt = perturbed_hf_model(cfg, "MobileBertForSequenceClassification", seed=seed)
    with torch.no_grad():
        pt.mobilebert.embeddings.word_embeddings.weight[cfg.pad_token_id].zero_()
        pt.classifier.weight.mul_(30.0)  # scores spread over (0, 1) across texts, not all near 0.5
    hf_dir = tmp_path / "hf"
    pt.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    model, params = from_pretrained(str(hf_dir))
    out = tmp_path / "device"
    ex.export(
        model,
        params,
        str(out),
        format="litert",
        seq_lengths=(LENGTH,),
        tokenizer=tok,
        device_ready=True,
        quantize=quantize,
    )
    return pt, transformers.BertTokenizerFast.from_pretrained(hf_dir), out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _hf_export(tmp_path_factory.mktemp("cls"))


def _hf_scores(pt, hf_tok, texts, fn):
    import torch

    out = []
    with torch.no_grad():
        for t in texts:  # one text at a time, unpadded
            logits = pt(**hf_tok(t, return_tensors="pt")).logits[0]
            out.append(fn(logits).numpy())
    return np.stack(out)


def _mediapipe_scores(path, texts):
    pytest.importorskip("mediapipe", reason="mediapipe (the test extra) is not installed")
    from mediapipe.tasks.python import BaseOptions, text

    opts = text.TextClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
    rows = []
    with text.TextClassifier.create_from_options(opts) as clf:
        for t in texts:
            cats = clf.classify(t).classifications[0].categories
            assert sorted(c.category_name for c in cats) == sorted(LABELS.values())
            rows.append([next(c.score for c in cats if c.index == i) for i in sorted(LABELS)])
    return np.asarray(rows, np.float64)


def test_mediapipe_text_classifier_matches_hf_pytorch_on_sst2(classifier):
    """MediaPipe's tokenizer lowercases but keeps accents ("amélie" → [UNK]; HF's uncased BERT strips
    them → "amelie"): on every text it equals HF with `strip_accents=False`, and on ASCII text (all but
    6 of the 872 SST-2 dev sentences) HF's default tokenizer."""
    import torch
    import transformers

    pt, hf_tok, out = classifier
    texts = _sst2(N_TEXTS)
    got = _mediapipe_scores(out / "model.tflite", texts)
    softmax = lambda x: torch.softmax(x, -1)  # noqa: E731
    ref = _hf_scores(pt, hf_tok, texts, softmax)
    keep_accents = transformers.BertTokenizerFast.from_pretrained(out.parent / "hf", strip_accents=False)
    ref_accents = _hf_scores(pt, keep_accents, texts, softmax)
    ascii_rows = np.array([t.isascii() for t in texts])
    assert 0 < (~ascii_rows).sum() < len(texts)  # both kinds of text are in the sample
    err_same_ids = np.abs(got - ref_accents).max()
    err_ascii = np.abs(got - ref)[ascii_rows].max()
    spread = ref[:, 1].std()
    print(
        f"MediaPipe vs HF PyTorch, {len(texts)} SST-2 texts: {err_same_ids:.3g} (HF keeping accents), "
        f"{err_ascii:.3g} ({ascii_rows.sum()} ASCII texts, HF default); score spread {spread:.3g}"
    )
    assert err_same_ids <= 1e-4, f"MediaPipe vs HF PyTorch probabilities differ by {err_same_ids:.3g}"
    assert err_ascii <= 1e-4, f"MediaPipe vs HF PyTorch probabilities differ by {err_ascii:.3g}"
    # the scores must vary across texts, else agreement says little
    assert spread > 0.05, spread
    manifest = json.loads((out / "export.json").read_text())
    assert "MediaPipe Tasks TextClassifier" in manifest["clients"]["model.tflite"]
    assert manifest["signatures"][0]["outputs"][0]["name"] == "probability"


def test_mediapipe_dynamic_int8_agrees_with_hf_pytorch(tmp_path):
    """The device-ready dynamic-int8 file (per-tensor weight scales, which the Task Library's older
    TFLite also runs) in MediaPipe: the same label as HF PyTorch fp32 on >= 99% of 48 SST-2 texts."""
    import torch

    pt, hf_tok, out = _hf_export(tmp_path, quantize="dynamic-int8")
    texts = [t for t in _sst2(N_TEXTS) if t.isascii()]
    got = _mediapipe_scores(out / "model.tflite", texts)
    ref = _hf_scores(pt, hf_tok, texts, lambda x: torch.softmax(x, -1))
    agree = (got.argmax(1) == ref.argmax(1)).mean()
    err = np.abs(got - ref).max()
    print(f"MediaPipe dynamic-int8 vs HF PyTorch fp32: agreement {agree:.3f}, max|diff| {err:.3g}")
    assert agree >= 0.99, agree
    assert 1e-6 < err < 0.05, err  # quantized (not the fp32 file), and close
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["weight_scales"] == "per-tensor"
    assert "TFLite Task Library BertNLClassifier" in manifest["clients"]["model.tflite"]


def test_mediapipe_multi_label_scores_are_sigmoids(tmp_path):
    import torch

    pt, hf_tok, out = _hf_export(tmp_path, problem_type="multi_label_classification", seed=5)
    texts = _sst2(6)
    got = _mediapipe_scores(out / "model.tflite", texts)
    ref = _hf_scores(pt, hf_tok, texts, torch.sigmoid)
    assert np.abs(got - ref).max() <= 1e-4, np.abs(got - ref).max()


def _read_metadata(path):
    """(model flatbuffer, ModelMetadataT, zip of associated files), read with the schema classes."""
    pytest.importorskip("mediapipe", reason="mediapipe's generated metadata schema classes")
    from ai_edge_litert import schema_py_generated as schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as mfb

    raw = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    entry = [m for m in model.metadata if m.name == b"TFLITE_METADATA"]
    assert len(entry) == 1
    buf = bytes(model.buffers[entry[0].buffer].data)
    assert mfb.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    meta = mfb.ModelMetadataT.InitFromPackedBuf(bytearray(buf), 0)
    return model, meta, zipfile.ZipFile(io.BytesIO(raw))


def test_metadata_reads_back_with_the_schema_classes(classifier):
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    _, _, out = classifier
    model, meta, zf = _read_metadata(out / "model.tflite")
    from mediapipe.tasks.metadata import metadata_schema_py_generated as mfb

    assert len(model.subgraphs) == 1 and all(b.offset == 0 for b in model.buffers)  # weights inline
    assert meta.name and meta.version and meta.license and meta.description
    assert meta.minParserVersion == b"1.1.0"
    (sg,) = meta.subgraphMetadata
    sig = model.signatureDefs[0]
    by_tensor = {t.tensorIndex: t.name.decode() for t in sig.inputs + sig.outputs}
    names = {"input_ids": b"ids", "attention_mask": b"mask", "token_type_ids": b"segment_ids"}
    assert [t.name for t in sg.inputTensorMetadata] == [
        names[by_tensor[i]] for i in model.subgraphs[0].inputs
    ]
    (unit,) = sg.inputProcessUnits
    assert unit.optionsType == mfb.ProcessUnitOptions.BertTokenizerOptions
    (vocab,) = unit.options.vocabFile
    assert (vocab.name, vocab.type) == (b"vocab.txt", mfb.AssociatedFileType.VOCABULARY)
    (prob,) = sg.outputTensorMetadata
    (labels,) = prob.associatedFiles
    assert prob.name == b"probability"
    assert (labels.name, labels.type) == (b"labels.txt", mfb.AssociatedFileType.TENSOR_AXIS_LABELS)
    assert zf.read("labels.txt") == b"negative\npositive\n"
    tok = MobileBertTokenizer.default()
    tok.save_pretrained(out / "tok")
    assert zf.read("vocab.txt") == (out / "tok" / "vocab.txt").read_bytes()
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_token_classification_export_carries_the_tokenizer(tmp_path):
    from mobilebert_jax import MODEL_CLASSES, init_params
    from mobilebert_jax import export as ex
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    tok = MobileBertTokenizer.default()
    cfg = MobileBertConfig(**{**TINY, "vocab_size": tok.vocab_size, "num_hidden_layers": 1})
    model = MODEL_CLASSES["MobileBertForTokenClassification"](cfg)
    m = ex.export(
        model,
        init_params(model, 0),
        str(tmp_path),
        format="litert",
        seq_lengths=(16,),
        tokenizer=tok,
        device_ready=True,
    )
    assert m["verification"]["max_rel_error"] <= ex.FP32_TOLERANCE
    _, meta, zf = _read_metadata(tmp_path / "model.tflite")
    (sg,) = meta.subgraphMetadata
    assert [t.name for t in sg.outputTensorMetadata] == [b"logits"]
    assert sg.inputProcessUnits[0].options.vocabFile[0].name == b"vocab.txt"
    assert zf.read("labels.txt").decode().splitlines() == [cfg.id2label[i] for i in range(cfg.num_labels)]


def test_device_ready_requests_that_cannot_work_fail_clearly(tmp_path):
    from mobilebert_jax import MODEL_CLASSES, init_params
    from mobilebert_jax import export as ex
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    tok = MobileBertTokenizer.default()
    cfg = MobileBertConfig(**{**TINY, "vocab_size": tok.vocab_size, "num_hidden_layers": 1})
    model = MODEL_CLASSES["MobileBertForSequenceClassification"](cfg)
    params = init_params(model, 0)
    cased = tmp_path / "vocab.txt"
    tok.save_pretrained(tmp_path)
    cases = [
        (dict(seq_lengths=(8, 16), tokenizer=tok), "one --seq-lengths"),
        (dict(seq_lengths=(16,), batch_size=2, tokenizer=tok), "batch size 2"),
        (dict(seq_lengths=(16,)), "needs the tokenizer"),
        (
            dict(
                seq_lengths=(16,), tokenizer=MobileBertTokenizer.from_vocab_file(cased, do_lower_case=False)
            ),
            "uncased",
        ),
    ]
    for i, (kw, msg) in enumerate(cases):
        with pytest.raises(ex.ExportError, match=msg):
            ex.export(model, params, str(tmp_path / str(i)), format="litert", device_ready=True, **kw)
    with pytest.raises(ex.ExportError, match="litert only"):
        ex.export(model, params, str(tmp_path / "o"), format="onnx", device_ready=True, tokenizer=tok)


def test_clients_say_who_loads_each_file():
    from mobilebert_jax.export.common import OUR_RUNTIME, clients

    seq, qa = "MobileBertForSequenceClassification", "MobileBertForQuestionAnswering"
    assert clients("litert", seq, [8, 16]) == [OUR_RUNTIME, clients("litert", seq, [8])[1]]
    assert "MediaPipe Tasks TextClassifier" in clients("litert", seq, [128], device_ready=True)
    assert "TFLite Task Library BertQuestionAnswerer" in clients("litert", qa, [384], device_ready=True)
    assert "TFLite Task Library BertQuestionAnswerer" not in clients("litert", qa, [128], device_ready=True)
    assert clients("onnx", seq, [128])[0] == OUR_RUNTIME
    # dynamic-int8 device files have per-tensor weight scales, which the Task Library's TFLite runs
    # (scripts/check_task_library.sh); static int8 files are not checked in it
    dyn = clients("litert", seq, [128], device_ready=True, quantize="dynamic-int8")
    assert "MediaPipe Tasks TextClassifier" in dyn and "TFLite Task Library BertNLClassifier" in dyn
    int8 = clients("litert", seq, [128], device_ready=True, quantize="int8")
    assert "MediaPipe Tasks TextClassifier" in int8 and not any("Task Library" in c for c in int8)
