"""SQuAD v1.1 / v2.0: reader, doc-stride features, n-best span decoding, EM/F1.

Preprocessing follows HF `run_qa.py` (`prepare_train_features` / `prepare_validation_features`):
questions are left-stripped, the pair is tokenized with `truncation="only_second"`, overflow windows
of `max_seq_length` tokens overlap by `doc_stride` tokens, the answer's token span comes from the
offsets (the window's [CLS] when the answer is not wholly inside it, or for unanswerable questions),
and offsets outside the context are masked (-1 here, None in HF). As in the legacy `run_squad.py`,
questions are first cut to `max_query_length` tokens. One deliberate difference: HF's start scan can
walk past the context into [SEP] and padding when the answer starts at the window's last context
token; here the scan stays inside the context, so such features point at the right token.
Decoding is HF's `postprocess_qa_predictions`, with one more deliberate difference: the n-best starts
and ends are taken among context tokens only (see `postprocess_qa`), so answers do not depend on the
padding. Metrics are in `squad_metric`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.tasks import squad_metric
from mobilebert_jax.tasks.base import (
    DataError,
    PathLike,
    Task,
    check_file,
    check_utf8,
    encode,
    output,
    read_records,
)


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question. `answers` / `answer_starts` are the gold texts and character offsets into
    `context` (empty for unanswerable questions); `labelled` is False for files without answers."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    labelled: bool = True

    @property
    def is_impossible(self) -> bool:
        return self.labelled and not self.answers


def _example(qid, title, context, question, answers, starts, labelled, where: str, path) -> SquadExample:
    for name, v in (("id", qid), ("context", context), ("question", question)):
        if not isinstance(v, str):
            raise DataError(f"{where}: {name!r} must be a string, got {type(v).__name__}", path)
    if len(answers) != len(starts):
        raise DataError(
            f"{where} (id {qid}): {len(answers)} answer texts but {len(starts)} answer_start", path
        )
    for text, start in zip(answers, starts):
        if not isinstance(text, str) or not text:
            raise DataError(f"{where} (id {qid}): empty or non-text answer {text!r}", path)
        if not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{where} (id {qid}): answer_start {start!r} is not an integer", path)
        if context[start : start + len(text)] != text:
            found = context[max(start, 0) : max(start, 0) + len(text)]
            raise DataError(
                f"{where} (id {qid}): answer {text!r} not in the context at {start} (found {found!r})", path
            )
    return SquadExample(qid, str(title), context, question, tuple(answers), tuple(starts), labelled)


def read_squad(path: PathLike) -> list[SquadExample]:
    """Examples from the official JSON (`{"version", "data": [{"title", "paragraphs": [...]}]}`, v1.1
    or v2.0) or from JSONL rows as in HF `datasets` (`id, title, context, question, answers: {text,
    answer_start}`). Questions without an `answers` key are unlabelled. Errors name the file and the
    JSON path (or line) of the question."""
    check_file(path)
    out: list[SquadExample] = []
    if os.fspath(path).lower().endswith((".jsonl", ".ndjson")):
        for line, rec in read_records(path):
            for k in ("id", "context", "question"):
                if k not in rec:
                    raise DataError(f"missing key {k!r}", path, line)
            ans = rec.get("answers")
            labelled = ans is not None
            ans = ans or {"text": [], "answer_start": []}
            if not isinstance(ans, Mapping) or "text" not in ans or "answer_start" not in ans:
                raise DataError('"answers" must be {"text": [...], "answer_start": [...]}', path, line)
            out.append(
                _example(
                    rec["id"],
                    rec.get("title", ""),
                    rec["context"],
                    rec["question"],
                    list(ans["text"]),
                    list(ans["answer_start"]),
                    labelled,
                    f"line {line}",
                    path,
                )
            )
    else:
        check_utf8(path)
        with storage.open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e}", path, e.lineno) from None
        if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
            raise DataError('expected the SQuAD layout {"version": ..., "data": [articles]}', path)
        for a, article in enumerate(data["data"]):
            if "paragraphs" not in article:
                raise DataError(f"data[{a}]: missing key 'paragraphs'", path)
            for p, para in enumerate(article["paragraphs"]):
                where = f"data[{a}].paragraphs[{p}]"
                for k in ("context", "qas"):
                    if k not in para:
                        raise DataError(f"{where}: missing key {k!r}", path)
                for q, qa in enumerate(para["qas"]):
                    w = f"{where}.qas[{q}]"
                    for k in ("id", "question"):
                        if k not in qa:
                            raise DataError(f"{w}: missing key {k!r}", path)
                    answers = qa.get("answers")
                    labelled = answers is not None
                    answers = answers or []
                    if qa.get("is_impossible", False) and answers:
                        raise DataError(f"{w} (id {qa['id']}): is_impossible but has answers", path)
                    for j, ans in enumerate(answers):
                        if not isinstance(ans, Mapping) or "text" not in ans or "answer_start" not in ans:
                            raise DataError(f"{w}.answers[{j}]: needs 'text' and 'answer_start'", path)
                    out.append(
                        _example(
                            qa["id"],
                            article.get("title", ""),
                            para["context"],
                            qa["question"],
                            [x["text"] for x in answers],
                            [x["answer_start"] for x in answers],
                            labelled,
                            w,
                            path,
                        )
                    )
    if not out:
        raise DataError("no questions in file", path)
    seen: set[str] = set()
    for e in out:
        if e.id in seen:
            raise DataError(f"duplicate question id {e.id!r}", path)
        seen.add(e.id)
    return out


def truncate_questions(questions: Sequence[str], tokenizer: Any, max_query_length: int) -> list[str]:
    """Cut each question after its `max_query_length`-th token (the text, so offsets stay valid)."""
    enc = encode(tokenizer, questions, max_length=max_query_length + 3, offsets=True)
    n_tokens = enc["attention_mask"].sum(axis=1) - 2  # without [CLS] and [SEP]
    out = []
    for q, n, off in zip(questions, n_tokens, enc["offset_mapping"]):
        out.append(q[: off[max_query_length, 1]] if n > max_query_length else q)
    return out


def prepare_features(
    examples: Sequence[SquadExample],
    tokenizer: Any,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> dict[str, np.ndarray]:
    """Doc-stride features for training and evaluation at once.

    Returns:
        input_ids, token_type_ids, attention_mask [F, max_seq_length]; offset_mapping [F, T, 2]
        (character offsets into the context, -1 outside it); example_index [F] (index into
        `examples`); start_positions, end_positions [F] (token indices of the first answer, 0 =
        [CLS] where it is not wholly inside the window) when all examples are labelled.
    """
    if not examples:
        raise ValueError("squad: no examples to featurise")
    if doc_stride + max_query_length + 3 >= max_seq_length:
        raise ValueError(
            f"doc_stride ({doc_stride}) + max_query_length ({max_query_length}) + 3 special tokens must be "
            f"< max_seq_length ({max_seq_length})"
        )
    questions = truncate_questions([e.question.lstrip() for e in examples], tokenizer, max_query_length)
    enc = encode(
        tokenizer,
        questions,
        [e.context for e in examples],
        max_length=max_seq_length,
        truncation="only_second",
        stride=doc_stride,
        overflow=True,
        offsets=True,
        special_mask=True,
    )
    sample = (
        enc.pop("overflow_to_sample_mapping")
        if "overflow_to_sample_mapping" in enc
        else np.arange(len(examples))
    )
    offsets = enc.pop("offset_mapping")
    ctx = (enc["token_type_ids"] == 1) & (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1)
    offsets = np.where(ctx[..., None], offsets, -1).astype(np.int32)
    enc["offset_mapping"] = offsets
    enc["example_index"] = sample.astype(np.int32)
    if all(e.labelled for e in examples):
        t = offsets.shape[1]
        answerable = np.array([bool(examples[i].answers) for i in sample])
        s_char = np.array([examples[i].answer_starts[0] if examples[i].answers else 0 for i in sample])
        e_char = s_char + np.array(
            [len(examples[i].answers[0]) if examples[i].answers else 0 for i in sample]
        )
        off_s, off_e = offsets[..., 0], offsets[..., 1]
        rows = np.arange(len(sample))
        first = np.argmax(ctx, axis=1)
        last = t - 1 - np.argmax(ctx[:, ::-1], axis=1)
        inside = answerable & ctx.any(axis=1) & (off_s[rows, first] <= s_char) & (off_e[rows, last] >= e_char)
        starts_before = ctx & (off_s <= s_char[:, None])  # last such token starts the answer
        ends_after = ctx & (off_e >= e_char[:, None])  # first such token ends it
        start = t - 1 - np.argmax(starts_before[:, ::-1], axis=1)
        end = np.argmax(ends_after, axis=1)
        enc["start_positions"] = np.where(inside, start, 0).astype(np.int32)
        enc["end_positions"] = np.where(inside, end, 0).astype(np.int32)
    return enc


def _window_candidates(
    sl: np.ndarray, el: np.ndarray, off: np.ndarray, n_best_size: int, max_answer_length: int
) -> list[dict]:
    """The spans of one window: every (start, end) pair of its n-best context starts and ends,
    start-major as HF's double loop, that is a valid answer (in the context, ordered, short enough).

    Positions outside the context are masked before the n-best cut (as HF's QA pipeline does; run_qa's
    postprocessing cuts first, so padding and question tokens can crowd real candidates out, and the
    answer would depend on how far the window is padded)."""
    in_ctx = off[:, 0] >= 0
    s_idx, e_idx = np.meshgrid(
        np.argsort(np.where(in_ctx, sl, -np.inf), kind="stable")[-1 : -n_best_size - 1 : -1],
        np.argsort(np.where(in_ctx, el, -np.inf), kind="stable")[-1 : -n_best_size - 1 : -1],
        indexing="ij",
    )
    ok = (off[s_idx, 0] >= 0) & (off[e_idx, 0] >= 0) & (e_idx >= s_idx) & (e_idx - s_idx < max_answer_length)
    return [
        {
            "offsets": (int(off[s, 0]), int(off[e, 1])),
            "score": sl[s] + el[e],
            "start_logit": sl[s],
            "end_logit": el[e],
        }
        for s, e in zip(s_idx[ok].tolist(), e_idx[ok].tolist())
    ]


def postprocess_qa(
    examples: Sequence[SquadExample],
    features: Mapping[str, np.ndarray],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, dict]:
    """HF `postprocess_qa_predictions`: best span per example over all its windows.

    Args:
        examples: the examples the features were made from.
        features: `prepare_features` output (`offset_mapping`, `example_index`).
        start_logits, end_logits: [F, T] model outputs.
        version_2_with_negative: allow "no answer"; the null score of an example is its lowest
            [CLS] start+end score over its windows, and "" is predicted when
            `null - best_non_null > null_score_diff_threshold`.
        n_best_size: candidates kept per window and per example.
        max_answer_length: longest span, in tokens.

    Returns:
        {"predictions": {id: text}, "nbest": {id: [{text, start, end, probability, start_logit,
         end_logit}]} (`start`/`end`: character offsets of `text` in the context; 0, 0 for ""),
         "null_odds": {id: score difference} (v2.0 only; pass as na_probs to `evaluate_v2`)}.
        The question-answering pipeline decodes with this function too.
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    offsets = features["offset_mapping"]
    if start_logits.shape[0] != offsets.shape[0] or end_logits.shape != start_logits.shape:
        raise ValueError(
            f"logits {start_logits.shape} / {end_logits.shape} do not match {offsets.shape[0]} features"
        )
    per_example = collections.defaultdict(list)
    for f, i in enumerate(features["example_index"]):
        per_example[int(i)].append(f)
    preds, nbest_all, null_odds = {}, {}, {}
    for i, ex in enumerate(examples):
        prelim, null = [], None
        for f in per_example[i]:
            sl, el, off = start_logits[f], end_logits[f], offsets[f]
            null_score = sl[0] + el[0]
            if null is None or null["score"] > null_score:
                null = {"offsets": (0, 0), "score": null_score, "start_logit": sl[0], "end_logit": el[0]}
            prelim += _window_candidates(sl, el, off, n_best_size, max_answer_length)
        null_score = None if null is None else null["score"]
        if version_2_with_negative and null is not None:
            prelim.append(null)
        cands = sorted(prelim, key=lambda x: x["score"], reverse=True)[:n_best_size]
        if version_2_with_negative and null is not None and not any(c["offsets"] == (0, 0) for c in cands):
            cands.append(null)
        for c in cands:
            c["start"], c["end"] = (int(x) for x in c.pop("offsets"))
            c["text"] = ex.context[c["start"] : c["end"]]
        if not cands or (len(cands) == 1 and cands[0]["text"] == ""):
            cands.insert(
                0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0, "start": 0, "end": 0}
            )
        scores = np.array([c.pop("score") for c in cands], dtype=np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        for p, c in zip(probs, cands):
            c["probability"] = float(p)
            c["start_logit"], c["end_logit"] = float(c["start_logit"]), float(c["end_logit"])
        if not version_2_with_negative:
            preds[ex.id] = cands[0]["text"]
        else:
            best = next(c for c in cands if c["text"] != "")
            diff = (
                float(null_score - best["start_logit"] - best["end_logit"])
                if null_score is not None
                else -np.inf
            )
            null_odds[ex.id] = diff
            preds[ex.id] = "" if diff > null_score_diff_threshold else best["text"]
        nbest_all[ex.id] = cands
    out = {"predictions": preds, "nbest": nbest_all}
    if version_2_with_negative:
        out["null_odds"] = null_odds
    return out


def squad_references(examples: Sequence[SquadExample]) -> list[squad_metric.Reference]:
    """(id, gold texts) per question, for `evaluate_v1` / `evaluate_v2`."""
    unlabelled = [e.id for e in examples if not e.labelled]
    if unlabelled:
        raise DataError(
            f"{len(unlabelled)} questions have no answers to score against (first: {unlabelled[0]})"
        )
    return [(e.id, list(e.answers)) for e in examples]


@dataclasses.dataclass(frozen=True)
class SquadTask(Task):
    """Extractive QA on SQuAD v1.1 (`version_2_with_negative=False`) or v2.0."""

    name: str = "squad"
    model_class: str = "MobileBertForQuestionAnswering"
    label_keys: tuple[str, ...] = ("start_positions", "end_positions")
    output_keys: tuple[str, ...] = ("start_logits", "end_logits")
    main_metric: str = "f1"
    version_2_with_negative: bool = False
    doc_stride: int = 128
    max_query_length: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0
    predictions_suffix = ".json"

    @property
    def num_labels(self) -> int:
        return 2

    def references_as_predictions(self, references: Sequence[squad_metric.Reference]) -> dict[str, str]:
        return {qid: (answers[0] if answers else "") for qid, answers in references}

    def config_overrides(self) -> dict[str, Any]:
        return {"num_labels": 2}

    def read(self, path: PathLike) -> list[SquadExample]:
        examples = read_squad(path)
        if not self.version_2_with_negative:
            bad = next((e for e in examples if e.is_impossible), None)
            if bad is not None:
                raise DataError(
                    f"question {bad.id!r} has no answer; unanswerable questions need task squad_v2", path
                )
        return examples

    def featurise(
        self, examples: Sequence[SquadExample], tokenizer: Any, max_len: int = 384
    ) -> dict[str, np.ndarray]:
        return prepare_features(examples, tokenizer, max_len, self.doc_stride, self.max_query_length)

    def loss_terms(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Start and end cross-entropy, sums halved; positions clamped to [0, T], T ignored (as HF)."""
        from mobilebert_jax.model import losses

        return losses.question_answering_terms(
            output(outputs, "start_logits"),
            output(outputs, "end_logits"),
            batch["start_positions"],
            batch["end_positions"],
        )

    def postprocess(
        self,
        examples: Sequence[SquadExample],
        features: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> dict[str, dict]:
        return postprocess_qa(
            examples,
            features,
            outputs["start_logits"],
            outputs["end_logits"],
            self.version_2_with_negative,
            self.n_best_size,
            self.max_answer_length,
            self.null_score_diff_threshold,
        )

    def references(
        self, examples: Sequence[SquadExample], features: Mapping[str, np.ndarray] | None = None
    ) -> list[squad_metric.Reference]:
        return squad_references(examples)

    def metric(
        self, predictions: Mapping[str, Any], references: Sequence[squad_metric.Reference]
    ) -> dict[str, float]:
        """v1.1: {exact_match, f1}; v2.0: the official v2 dict (best thresholds searched on the null odds)."""
        preds = predictions["predictions"] if "predictions" in predictions else predictions
        if not self.version_2_with_negative:
            return squad_metric.evaluate_v1(references, preds)
        # The null odds are the no-answer scores; thresholding them at the decoding threshold
        # reproduces the predictions, and the best-threshold search runs over them.
        return squad_metric.evaluate_v2(
            references, preds, predictions.get("null_odds"), na_prob_thresh=self.null_score_diff_threshold
        )

    def write_predictions(
        self, path: PathLike, examples: Sequence[SquadExample], predictions: Mapping[str, Any]
    ) -> None:
        """`path`: {id: text} (the official format); beside it `*_nbest.json` and (v2.0) `*_null_odds.json`."""
        preds = predictions["predictions"] if "predictions" in predictions else predictions
        stem = os.path.splitext(os.fspath(path))[0]
        with storage.open(path, "w", encoding="utf-8") as f:
            json.dump(preds, f, indent=2, ensure_ascii=False)
        for key in ("nbest", "null_odds"):
            if key in predictions:
                with storage.open(f"{stem}_{key}.json", "w", encoding="utf-8") as f:
                    json.dump(predictions[key], f, indent=2, ensure_ascii=False)


def load_hf_squad(
    version_2: bool = False, split: str = "validation", **load_kwargs: Any
) -> list[SquadExample]:
    """Examples from HF `datasets` ("rajpurkar/squad" / "rajpurkar/squad_v2"); needs `datasets` and a hub."""
    name = "rajpurkar/squad_v2" if version_2 else "rajpurkar/squad"
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ImportError(
            "loading SQuAD from the hub needs HF `datasets` (pip install datasets); "
            "or pass the official JSON file"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split, **load_kwargs)
    except Exception as e:
        raise RuntimeError(f"could not load {name} split {split!r} from HF datasets: {e}") from e
    return [
        _example(
            r["id"],
            r["title"],
            r["context"],
            r["question"],
            list(r["answers"]["text"]),
            list(r["answers"]["answer_start"]),
            True,
            f"row {i}",
            f"hf://{name}/{split}",
        )
        for i, r in enumerate(ds)
    ]
