"""ONNX exports (dynamic batch and length) in HF optimum's `ORTModelFor*` and HF pipelines, against HF
PyTorch on the same weights.

optimum-onnx needs transformers 4.x, which clashes with the project's pins (transformers 5), so it
runs in its own venv (`scripts/check_optimum.sh` builds it). Two steps, two interpreters:

    python scripts/check_optimum.py export OUT   # project venv: HF PT models → our ONNX exports
    python scripts/check_optimum.py check OUT    # optimum venv: optimum + HF pipelines vs HF PyTorch

`export` builds small HF PyTorch models of the four heads with the packaged uncased vocab (perturbed
weights, [PAD] row zero as in HF-trained checkpoints), saves them (OUT/<head>/hf), loads them with
`from_pretrained` and exports each as fp32 (OUT/<head>/fp32) and dynamic-int8 (OUT/<head>/int8) ONNX.
`check` loads each export with `ORTModelFor*.from_pretrained(dir)` and runs HF's pipeline on it and on
the HF PyTorch model: real SST-2 dev sentences (text-classification, token-classification, fill-mask
with a word masked) and SQuAD dev questions (question-answering), one text at a time, unpadded, and
once in padded batches of 8 (what the fixed-length graph refused). fp32: scores within 1e-4 and the
same labels, spans and tokens; int8: how often the top answer agrees with HF PyTorch's, at least 99%
for a trained model (`--classifier-model`, `--qa-model`; random weights' answers are near-ties, so
their agreement is only reported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the goals of issue 34, shared with the Task Library check: fp32 scores within TOLERANCE of HF
# PyTorch, dynamic-int8 top answers agreeing on at least AGREEMENT of the inputs (trained models)
from check_task_library import AGREEMENT, DATA, TOLERANCE  # noqa: E402

N_TEXTS, N_SQUAD = 64, 24
TRAINED = "trained.json"  # in a head's folder: a trained model was given (`export --classifier-model`)
HEADS = {
    "MobileBertForSequenceClassification": ("text-classification", "ORTModelForSequenceClassification"),
    "MobileBertForQuestionAnswering": ("question-answering", "ORTModelForQuestionAnswering"),
    "MobileBertForTokenClassification": ("token-classification", "ORTModelForTokenClassification"),
    "MobileBertForMaskedLM": ("fill-mask", "ORTModelForMaskedLM"),
}


def _sst2(n: int, skip: int = 0) -> list[str]:
    """n SST-2 dev sentences after the first `skip` (those a trained classifier learned from)."""
    with open(os.path.join(DATA, "glue", "SST-2", "dev.tsv"), encoding="utf-8") as f:
        return [ln.split("\t")[0].strip() for ln in list(f)[1 + skip : 1 + skip + n]]


def _squad(n: int, trained: bool = False) -> list[dict[str, str]]:
    """n SQuAD dev questions spread over the file; for a trained QA model, the Task Library check's 96
    (`check_task_library._squad`: the paragraphs its QA model was trained without)."""
    if trained:
        from check_task_library import N_SQUAD as held_out
        from check_task_library import _squad as task_library_squad

        return [{"question": q, "context": c} for q, c in task_library_squad(held_out)]
    with open(os.path.join(DATA, "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        data = json.load(f)["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return [{"question": q, "context": c} for q, c in pairs[:: max(1, len(pairs) // n)][:n]]


# ----------------------------------------------------------------------------- export (project venv)
def _hf_model(class_name: str, cfg, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    pt = getattr(transformers, class_name)(transformers.MobileBertConfig.from_dict(cfg.to_dict())).eval()
    with torch.no_grad():
        for p in pt.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        pt.mobilebert.embeddings.word_embeddings.weight[cfg.pad_token_id].zero_()
        for name in ("classifier", "qa_outputs"):  # scores that vary across texts
            if hasattr(pt, name):
                getattr(pt, name).weight.mul_(30.0)
    return pt


def export(
    out: str, trained: dict[str, str] | None = None, sst2_skip: int = 0, sst2_texts: int = N_TEXTS
) -> None:
    """Small random HF PyTorch models of the four heads, or `trained` ({class name: HF folder}) for
    those given (checked on `sst2_texts` SST-2 dev sentences after the first `sst2_skip`, and on the
    held-out SQuAD questions); each exported fp32 and dynamic-int8."""
    from mobilebert_jax import MobileBertConfig
    from mobilebert_jax import export as ex
    from mobilebert_jax.checkpoints.hub import from_pretrained
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    tok = MobileBertTokenizer.default()
    small = dict(
        vocab_size=tok.vocab_size,
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        intra_bottleneck_size=32,
    )
    labels = {
        "MobileBertForSequenceClassification": {0: "negative", 1: "positive"},
        "MobileBertForQuestionAnswering": {0: "start", 1: "end"},
        "MobileBertForTokenClassification": dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])),
        "MobileBertForMaskedLM": {0: "LABEL_0", 1: "LABEL_1"},
    }
    for seed, class_name in enumerate(HEADS):
        folder = os.path.join(out, class_name)
        cfg = MobileBertConfig(**small, num_labels=len(labels[class_name]), id2label=labels[class_name])
        if class_name in (trained or {}):
            import transformers

            pt = getattr(transformers, class_name).from_pretrained(trained[class_name]).eval()
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, TRAINED), "w", encoding="utf-8") as f:  # read by `check`
                json.dump({"from": trained[class_name], "sst2_skip": sst2_skip, "sst2_texts": sst2_texts}, f)
        else:
            pt = _hf_model(class_name, cfg, seed)
        pt.save_pretrained(os.path.join(folder, "hf"))
        tok.save_pretrained(os.path.join(folder, "hf"))
        model, params = from_pretrained(os.path.join(folder, "hf"))
        for quantize, sub in (("none", "fp32"), ("dynamic-int8", "int8")):
            m = ex.to_onnx(
                model, params, os.path.join(folder, sub), tokenizer=tok, quantize=quantize, overwrite=True
            )
            print(
                f"{class_name} {sub}: dynamic axes {m['dynamic_axes']['input_ids']}, "
                f"vs JAX {m['verification']['max_rel_error']:.2g} (max rel)"
            )


# ---------------------------------------------------------------------------- check (optimum venv)
def _flat_scores(result) -> list[float]:
    """Every float in a pipeline result (token classification's are numpy floats), in order."""
    import numpy as np

    if isinstance(result, dict):
        return [x for k in sorted(result) for x in _flat_scores(result[k])]
    if isinstance(result, (list, tuple)):
        return [x for r in result for x in _flat_scores(r)]
    return [float(result)] if isinstance(result, (float, np.floating)) else []


def _answers(result) -> list:
    """What a pipeline result says besides its scores (labels, spans, tokens, words), in order."""
    if isinstance(result, dict):
        return [(k, _answers(v)) for k, v in sorted(result.items()) if k != "score"]
    if isinstance(result, (list, tuple)):
        return [_answers(r) for r in result]
    return [] if _flat_scores(result) else result


def _max_diff(got: list, ref: list) -> float:
    pairs = [(a, b) for g, r in zip(got, ref) for a, b in zip(_flat_scores(g), _flat_scores(r))]
    if not pairs:
        raise ValueError("the pipeline results carry no scores")
    return max(abs(a - b) for a, b in pairs)


def _tops(result, task: str) -> list:
    """The top answers of one input: its label, span or masked token; each token's label."""
    if task == "text-classification":
        return [max(result, key=lambda r: r["score"])["label"]]
    if task == "question-answering":
        return [(result["start"], result["end"])]
    if task == "fill-mask":
        return [result[0]["token"]]
    return [(r["index"], r["entity"]) for r in result]


def _inputs(task: str, trained: dict | None = None) -> tuple[list, dict]:
    if task == "question-answering":
        return _squad(N_SQUAD, trained=trained is not None), {}
    texts = _sst2(trained["sst2_texts"], trained["sst2_skip"]) if trained else _sst2(N_TEXTS)
    if task == "fill-mask":
        masked = []
        for t in texts:
            words = t.split()
            words[len(words) // 2] = "[MASK]"
            masked.append(" ".join(words))
        return masked, {"top_k": 5}
    if task == "token-classification":
        return texts, {"ignore_labels": []}
    return texts, {"top_k": None}


def _run(pipe, inputs: list, kw: dict, batch_size: int | None = None) -> list:
    if batch_size is None:  # one text at a time: unpadded
        return [pipe(x, **kw) for x in inputs]
    return list(pipe(inputs, batch_size=batch_size, **kw))


def _check_head(out: str, class_name: str, failures: list[str]) -> None:
    import numpy as np
    import transformers
    from optimum import onnxruntime as ort_models

    task, ort_class = HEADS[class_name]
    folder = os.path.join(out, class_name)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(folder, "fp32"))
    pt = getattr(transformers, class_name).from_pretrained(os.path.join(folder, "hf")).eval()
    ref_pipe = transformers.pipeline(task, model=pt, tokenizer=tok)
    trained = None
    if os.path.exists(os.path.join(folder, TRAINED)):
        with open(os.path.join(folder, TRAINED), encoding="utf-8") as f:
            trained = json.load(f)
    inputs, kw = _inputs(task, trained)
    ref = _run(ref_pipe, inputs, kw)
    ref_batched = _run(ref_pipe, inputs, kw, batch_size=8)
    for sub in ("fp32", "int8"):
        model = getattr(ort_models, ort_class).from_pretrained(os.path.join(folder, sub))
        shapes = {i.name: i.shape for i in model.session.get_inputs()}
        pipe = transformers.pipeline(task, model=model, tokenizer=tok)
        got = _run(pipe, inputs, kw)
        agree = np.mean([a == b for g, r in zip(got, ref) for a, b in zip(_tops(g, task), _tops(r, task))])
        line = (
            f"{ort_class} {sub}{' (trained: ' + trained['from'] + ')' if trained else ''} "
            f"(inputs {shapes['input_ids']}), {task} on {len(inputs)} "
            f"{'SQuAD dev questions' if task == 'question-answering' else 'SST-2 dev texts'}: "
        )
        if sub == "int8":
            unit = "tokens" if task == "token-classification" else "inputs"
            print(
                line
                + f"top answer agrees with HF PyTorch on {agree:.1%} of the {unit}"
                + ("" if trained else " (random weights: reported, not checked)")
            )
            if trained and agree < AGREEMENT:
                failures.append(f"{ort_class} int8 ({agree:.1%} < {AGREEMENT:.0%})")
            continue
        diff = _max_diff(got, ref)
        same = all(_answers(g) == _answers(r) for g, r in zip(got, ref))
        batched = _run(pipe, inputs, kw, batch_size=8)
        bdiff = _max_diff(batched, ref_batched)
        bsame = all(_answers(g) == _answers(r) for g, r in zip(batched, ref_batched))
        print(
            line + f"scores max|diff| vs HF PyTorch {diff:.2g} one at a time (same answers: {same}), "
            f"{bdiff:.2g} in padded batches of 8 (same answers: {bsame})"
        )
        if not (diff <= TOLERANCE and bdiff <= TOLERANCE and same and bsame):
            failures.append(f"{ort_class} {sub}")


def check(out: str) -> int:
    import importlib.metadata

    import torch

    torch.set_num_threads(1)
    versions = ", ".join(
        f"{d} {importlib.metadata.version(d)}"
        for d in ("optimum", "optimum-onnx", "onnxruntime", "transformers")
    )
    print(f"{versions}, torch {torch.__version__}, Python {sys.version.split()[0]}")
    failures: list[str] = []
    for class_name in HEADS:
        _check_head(out, class_name, failures)
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=("export", "check"))
    p.add_argument("out", help="folder for the HF models and their exports")
    p.add_argument("--classifier-model", help="export: a trained sequence classifier (HF folder) to check")
    p.add_argument(
        "--qa-model",
        help="export: a trained QA model (HF folder; checked on the Task Library "
        "check's held-out SQuAD questions)",
    )
    p.add_argument(
        "--sst2-skip",
        type=int,
        default=0,
        help="export: skip the first N SST-2 dev sentences (those --classifier-model was trained on)",
    )
    p.add_argument(
        "--sst2-texts",
        type=int,
        default=N_TEXTS,
        help=f"export: SST-2 dev sentences to check a trained classifier on (default {N_TEXTS})",
    )
    a = p.parse_args(argv)
    if a.step == "export":
        os.makedirs(a.out, exist_ok=True)
        trained = {
            "MobileBertForSequenceClassification": a.classifier_model,
            "MobileBertForQuestionAnswering": a.qa_model,
        }
        export(a.out, {k: v for k, v in trained.items() if v}, a.sst2_skip, a.sst2_texts)
        return 0
    return check(a.out)


if __name__ == "__main__":
    sys.exit(main())
