"""Device-ready LiteRT exports in the TFLite Task Library (tflite-support 0.4.4), against HF PyTorch.

tflite-support pins old numpy/protobuf and Python <= 3.11, so it runs in its own venv
(`scripts/check_task_library.sh` builds it). Two steps, two interpreters:

    python scripts/check_task_library.py export OUT   # project venv: HF PT models → our exports + HF refs
    python scripts/check_task_library.py check OUT    # tflite-support venv: the Task Library vs the refs

`export` builds small HF PyTorch models with the packaged uncased vocab (perturbed weights, [PAD] row
zero as in HF-trained checkpoints: the clients pad to L), or takes trained ones (`--classifier-model`,
`--qa-model`: HF folders, e.g. a fine-tune's hf_model/), loads them with `from_pretrained`, exports
them device-ready (`export(..., device_ready=True)`), fp32 and `--quantize dynamic-int8`, and writes
HF's answers to OUT/refs.json:
- a sequence classifier at L=128: probabilities on SST-2 dev sentences, one text at a time, unpadded,
  by HF's tokenizer keeping accents (the on-device tokenizer lowercases but keeps them) and by default;
- a QA model at L=384: start/end logits on the Task Library's own features of SQuAD dev questions
  (query <= 64 tokens, context split on spaces, [PAD] to 384) and the answers its rule picks from them
  (top 5 starts x top 5 ends, inside the context, end >= start, <= 32 tokens, by start+end logit);
- a token classifier at L=128: only that the file carries the tokenizer metadata and loads.
`check` runs `BertNLClassifier` and `BertQuestionAnswerer` on the same text and prints the errors:
fp32 scores within 1e-4 of HF's and the same top-5 spans; dynamic-int8 the same argmax (classifier)
and top answer (QA) as HF on >= 99% of the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("MOBILEBERT_DATA", os.path.join(ROOT, "..", "shared", "data"))
N_SST2, N_SQUAD = 64, 96
MAX_QUERY, SEQ, TOP, MAX_ANSWER = 64, 384, 5, 32  # BertQuestionAnswerer's constants
TOLERANCE = 1e-4  # fp32 scores vs HF PyTorch
AGREEMENT = 0.99  # dynamic-int8: argmax (classifier) / top answer span (QA) agreement with HF PyTorch
QUANTIZE = ("none", "dynamic-int8")


# ----------------------------------------------------------------------------- export (project venv)
def _hf_model(class_name: str, cfg, seed: int):
    import torch
    import transformers

    hf_cfg = transformers.MobileBertConfig.from_dict(cfg.to_dict())
    torch.manual_seed(seed)
    pt = getattr(transformers, class_name)(hf_cfg).eval()
    with torch.no_grad():
        for p in pt.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        pt.mobilebert.embeddings.word_embeddings.weight[cfg.pad_token_id].zero_()
        head = pt.classifier if hasattr(pt, "classifier") else pt.qa_outputs
        head.weight.mul_(30.0)  # scores that vary across texts
    return pt


def _export(pt, tok, folder: str, length: int) -> dict[str, str]:
    """HF folder → `from_pretrained` → device-ready exports, fp32 and dynamic-int8: {quantize: file}."""
    from mobilebert_jax import export as ex
    from mobilebert_jax.checkpoints.hub import from_pretrained

    pt.save_pretrained(os.path.join(folder, "hf"))
    tok.save_pretrained(os.path.join(folder, "hf"))
    model, params = from_pretrained(os.path.join(folder, "hf"))
    files = {}
    for quantize in QUANTIZE:
        ex.export(
            model,
            params,
            os.path.join(folder, quantize),
            format="litert",
            quantize=quantize,
            seq_lengths=(length,),
            tokenizer=tok,
            device_ready=True,
            overwrite=True,
        )
        files[quantize] = os.path.join(folder, quantize, "model.tflite")
    return files


def _qa_features(hf_tok, question: str, context: str):
    """The Task Library's features: [CLS] query[:64] [SEP] context words' pieces [SEP], padded to 384;
    returns (ids, mask, segments, {feature position: context word index})."""
    query = hf_tok.tokenize(question.lower())[:MAX_QUERY]
    words = context.split(" ")
    words = [w for w in words if w]
    pieces, word_of = [], []
    for i, w in enumerate(words):
        for p in hf_tok.tokenize(w.lower()):
            pieces.append(p)
            word_of.append(i)
    pieces = pieces[: SEQ - len(query) - 3]
    tokens = ["[CLS]", *query, "[SEP]", *pieces, "[SEP]"]
    to_word = {len(query) + 2 + k: word_of[k] for k in range(len(pieces))}
    ids = hf_tok.convert_tokens_to_ids(tokens)
    segments = [0] * (len(query) + 2) + [1] * (len(pieces) + 1)
    pad = SEQ - len(tokens)
    return ids + [0] * pad, [1] * len(tokens) + [0] * pad, segments + [0] * pad, to_word, words


def _answers(start, end, to_word, words):
    """BertQuestionAnswerer's post-processing on (start, end) logits [384]."""
    import numpy as np

    starts, ends = np.argsort(-start, kind="stable")[:TOP], np.argsort(-end, kind="stable")[:TOP]
    found = [
        (int(s), int(e), float(start[s] + end[e]))
        for s in starts
        for e in ends
        if s in to_word and e in to_word and e >= s and e - s + 1 <= MAX_ANSWER
    ]
    found.sort(key=lambda a: -a[2])
    return [
        {"start": s, "end": e, "logit": g, "text": " ".join(words[to_word[s] : to_word[e] + 1])}
        for s, e, g in found[:TOP]
    ]


def _squad(n: int) -> list[tuple[str, str]]:
    """n SQuAD dev questions spread over the file, ASCII question and context only: the Task Library's
    tokenizer splits some non-ASCII words unlike HF's (e.g. "Đuka" in a Tesla paragraph)."""
    with open(os.path.join(DATA, "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        data = json.load(f)["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    pairs = [(q, c) for q, c in pairs if q.isascii() and c.isascii()]
    return pairs[:: max(1, len(pairs) // n)][:n]


def _trained(class_name: str, folder: str):
    """A trained HF PyTorch model of `class_name` from an HF folder (ours or transformers')."""
    import transformers

    return getattr(transformers, class_name).from_pretrained(folder).eval()


def export(out: str, classifier_model: str | None = None, qa_model: str | None = None) -> None:
    import numpy as np
    import torch
    import transformers

    from mobilebert_jax import MobileBertConfig
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
    with open(os.path.join(DATA, "glue", "SST-2", "dev.tsv"), encoding="utf-8") as f:
        texts = [ln.split("\t")[0].strip() for ln in list(f)[1 : N_SST2 + 1]]
    refs: dict = {}

    cfg = MobileBertConfig(**small, num_labels=2, id2label={0: "negative", 1: "positive"})
    if classifier_model:
        pt = _trained("MobileBertForSequenceClassification", classifier_model)
    else:
        pt = _hf_model("MobileBertForSequenceClassification", cfg, seed=1)
    refs["classifier"] = {"files": _export(pt, tok, os.path.join(out, "cls"), 128), "texts": texts}
    hf_dir = os.path.join(out, "cls", "hf")
    for key, kw in (("probabilities_same_tokens", {"strip_accents": False}), ("probabilities", {})):
        hf_tok = transformers.BertTokenizerFast.from_pretrained(hf_dir, **kw)
        with torch.no_grad():
            refs["classifier"][key] = [
                torch.softmax(pt(**hf_tok(t, return_tensors="pt")).logits[0], -1).tolist() for t in texts
            ]

    cfg = MobileBertConfig(**small, num_labels=2)
    if qa_model:
        pt = _trained("MobileBertForQuestionAnswering", qa_model)
    else:
        pt = _hf_model("MobileBertForQuestionAnswering", cfg, seed=2)
    qa = refs["qa"] = {"files": _export(pt, tok, os.path.join(out, "qa"), SEQ), "examples": []}
    hf_tok = transformers.BertTokenizerFast.from_pretrained(
        os.path.join(out, "qa", "hf"), strip_accents=False
    )
    for question, context in _squad(N_SQUAD):
        ids, mask, segments, to_word, words = _qa_features(hf_tok, question, context)
        n = sum(mask)
        with torch.no_grad():
            o = pt(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.tensor([mask]),
                token_type_ids=torch.tensor([segments]),
            )
            u = pt(input_ids=torch.tensor([ids[:n]]), token_type_ids=torch.tensor([segments[:n]]))
        start, end = o.start_logits[0].numpy(), o.end_logits[0].numpy()
        unpadded = (
            max(
                np.abs(start[:n] - u.start_logits[0].numpy()).max(),
                np.abs(end[:n] - u.end_logits[0].numpy()).max(),
            )
            / np.abs(start[:n]).max()
        )
        qa["examples"].append(
            {
                "question": question,
                "context": context,
                "answers": _answers(start, end, to_word, words),
                "padded_vs_unpadded_rel": float(unpadded),
                "logit_scale": float(np.abs(start).max()),
            }
        )

    cfg = MobileBertConfig(**small, num_labels=5)
    pt = _hf_model("MobileBertForTokenClassification", cfg, seed=3)
    refs["ner"] = {"files": _export(pt, tok, os.path.join(out, "ner"), 128)}
    with open(os.path.join(out, "refs.json"), "w", encoding="utf-8") as f:
        json.dump(refs, f, indent=1)
    print(f"wrote {out}/refs.json")


# ------------------------------------------------------------------------ check (tflite-support venv)
def _check_classifier(text, c: dict, quantize: str) -> list[str]:
    import numpy as np

    clf = text.BertNLClassifier.create_from_file(c["files"][quantize])
    got = []
    for t in c["texts"]:
        cats = clf.classify(t).classifications[0].categories
        got.append([next(x.score for x in cats if x.category_name == n) for n in ("negative", "positive")])
    got, ref = np.asarray(got), np.asarray(c["probabilities_same_tokens"])
    same = np.abs(got - ref).max()
    ascii_rows = np.array([t.isascii() for t in c["texts"]])
    default = np.abs(got - np.asarray(c["probabilities"]))[ascii_rows].max()
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    print(
        f"BertNLClassifier, {len(got)} SST-2 dev texts (L=128, {quantize}) vs HF PyTorch probabilities: "
        f"max|diff| {same:.2g} (HF keeping accents, same tokens); {default:.2g} on the "
        f"{ascii_rows.sum()} ASCII texts (HF default); argmax agreement {100 * agree:.1f}%"
    )
    ok = same <= TOLERANCE and default <= TOLERANCE if quantize == "none" else agree >= AGREEMENT
    return [] if ok else [f"BertNLClassifier {quantize}"]


def _check_qa(text, q: dict, quantize: str) -> list[str]:
    answerer = text.BertQuestionAnswerer.create_from_file(q["files"][quantize])
    failures, worst, same_spans, same_top, with_answers, gaps = [], 0.0, 0, 0, 0, []
    for ex in q["examples"]:
        answers = answerer.answer(ex["context"], ex["question"]).answers
        got = [(a.pos.start, a.pos.end, a.text) for a in answers]
        want = [(a["start"], a["end"], a["text"]) for a in ex["answers"]]
        same_spans += got == want
        same_top += got[:1] == want[:1]
        if got[:1] != want[:1] and len(ex["answers"]) > 1:
            gaps.append((ex["answers"][0]["logit"] - ex["answers"][1]["logit"]) / ex["logit_scale"])
        with_answers += bool(want)
        for a, w in zip(answers, ex["answers"]):
            worst = max(worst, abs(a.pos.logit - w["logit"]) / ex["logit_scale"])
        context = " ".join(ex["context"].split())  # the answers keep the context's own whitespace
        if not all(" ".join(a.text.split()) in context for a in answers):
            failures.append(f"BertQuestionAnswerer {quantize}: answer outside the context")
    n = len(q["examples"])
    gaps_text = ", ".join(f"{g:.2g}" for g in gaps)
    print(
        f"BertQuestionAnswerer, {n} SQuAD dev questions (L=384, {quantize}): same answer spans "
        f"(top {TOP}) as HF PyTorch's logits give in {same_spans}/{n}, same top answer in {same_top}/{n} "
        f"({with_answers} with answers); answer logits max rel diff {worst:.2g}; HF padded vs unpadded "
        f"{max(e['padded_vs_unpadded_rel'] for e in q['examples']):.2g}"
        + (f"; where the top answer differs, HF's top-2 gap / logit scale: {gaps_text}" if gaps else "")
    )
    if quantize == "none":
        ok = same_spans == n and worst <= TOLERANCE
    else:
        ok = same_top >= AGREEMENT * n
    return failures + ([] if ok and with_answers else [f"BertQuestionAnswerer {quantize}"])


def check(out: str) -> int:
    import importlib.metadata

    from tflite_support.task import text

    with open(os.path.join(out, "refs.json"), encoding="utf-8") as f:
        refs = json.load(f)
    print(f"tflite-support {importlib.metadata.version('tflite-support')}, Python {sys.version.split()[0]}")
    failures = []

    for quantize in QUANTIZE:
        failures += _check_classifier(text, refs["classifier"], quantize)
        failures += _check_qa(text, refs["qa"], quantize)

    # the NER file: the Task Library has no token classifier; its metadata must still parse
    from tflite_support import metadata

    shown = metadata.MetadataDisplayer.with_model_file(refs["ner"]["files"]["dynamic-int8"])
    files = shown.get_packed_associated_file_list()
    units = json.loads(shown.get_metadata_json())["subgraph_metadata"][0]["input_process_units"]
    print(
        f"NER export: metadata parses (tflite_support.metadata), packed files {sorted(files)}, "
        f"input process unit {units[0]['options_type']}"
    )
    if sorted(files) != ["labels.txt", "vocab.txt"] or units[0]["options_type"] != "BertTokenizerOptions":
        failures.append("NER metadata")
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=("export", "check"))
    p.add_argument("out", help="folder for the exports and refs.json")
    p.add_argument("--classifier-model", help="export: a trained sequence classifier (HF folder) to check")
    p.add_argument("--qa-model", help="export: a trained QA model (HF folder) to check, instead of random")
    a = p.parse_args(argv)
    if a.step == "export":
        os.makedirs(a.out, exist_ok=True)
        export(a.out, a.classifier_model, a.qa_model)
        return 0
    return check(a.out)


if __name__ == "__main__":
    sys.exit(main())
