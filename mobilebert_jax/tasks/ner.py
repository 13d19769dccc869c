"""Named-entity recognition on CoNLL-format files, entity-level metrics with seqeval's semantics.

Files: one `token ... TAG` line per word (two columns, or the 4-column CoNLL-2003 `token POS chunk
TAG`; the tag is the last column, a single column means unlabelled), blank lines between sentences,
`-DOCSTART-` lines skipped. Tags may be IOB1, BIO2 (IOB2) or IOBES (`M-` is read as `I-`, the BMES
spelling). Entities are read with seqeval's default (conlleval-compatible, not strict) chunking, which
is the same function for all these schemes; the task trains on BIO2 tags re-encoded from those
entities, so files in different schemes share one label set. The word's label goes on its first
sub-token; other sub-tokens, special tokens and padding get -100.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.tasks.base import DataError, PathLike, Task, check_file, encode, iter_lines, output

CONLL2003_TYPES = ("PER", "ORG", "LOC", "MISC")
_TAG = re.compile(r"^(O|[BIESM]-\S+)$")


@dataclasses.dataclass(frozen=True)
class NerExample:
    """One sentence: words and their tags (None when unlabelled); `guid` is `file:first line`."""

    words: tuple[str, ...]
    tags: tuple[str, ...] | None
    guid: str = ""


def read_conll(path: PathLike) -> list[NerExample]:
    """Sentences of a CoNLL file, tags as written (`M-` becomes `I-`)."""
    check_file(path)
    out: list[NerExample] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    labelled: bool | None = None

    def flush():
        nonlocal words, tags
        if words:
            out.append(
                NerExample(tuple(words), tuple(tags) if labelled else None, f"{os.fspath(path)}:{start}")
            )
        words, tags = [], []

    for i, line in iter_lines(path):
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        has_tag = len(fields) > 1
        if labelled is None:
            labelled = has_tag
        elif has_tag != labelled:
            raise DataError(f"{'missing' if labelled else 'unexpected'} tag column in {line!r}", path, i)
        if not words:
            start = i
        words.append(fields[0])
        if has_tag:
            tag = fields[-1]
            if not _TAG.match(tag):
                raise DataError(f"tag {tag!r} is not O or B-/I-/E-/S-/M-<type>", path, i)
            tags.append("I" + tag[1:] if tag.startswith("M-") else tag)
    flush()
    if not out:
        raise DataError("no sentences in file", path)
    return out


def get_entities(seq: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """(type, first, last) chunks as `seqeval.metrics.sequence_labeling.get_entities` (suffix=False).

    Nested sequences are joined with an "O" between them (so indices count those separators too).
    """
    if any(isinstance(s, list | tuple) for s in seq):
        seq = [t for sent in seq for t in [*sent, "O"]]
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*seq, "O"]):
        tag = chunk[0]
        typ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, typ):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, typ):
            begin = i
        prev_tag, prev_type = tag, typ
    return chunks


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != typ


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, typ: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != typ


def to_bio2(tags: Sequence[str]) -> list[str]:
    """Re-encode one sentence's tags (any scheme) as BIO2 from its seqeval entities."""
    out = ["O"] * len(tags)
    for typ, a, b in get_entities(list(tags)):
        out[a] = f"B-{typ}"
        for k in range(a + 1, b + 1):
            out[k] = f"I-{typ}"
    return out


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """seqeval's default-mode scores: micro precision / recall / F1 over exact (type, span) matches,
    per-type scores, and token accuracy (0 where undefined, as seqeval's zero_division="warn").

    Returns:
        {"precision", "recall", "f1", "accuracy", "per_type": {type: {precision, recall, f1, support}}}
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} reference sentences but {len(y_pred)} predicted")
    for k, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {k}: {len(t)} reference tags but {len(p)} predicted")
    true = set(get_entities([list(s) for s in y_true]))
    pred = set(get_entities([list(s) for s in y_pred]))

    def prf(t: set, p: set) -> tuple[float, float, float]:
        tp = len(t & p)
        precision = tp / len(p) if p else 0.0
        recall = tp / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return precision, recall, f1

    per_type = {}
    for typ in sorted({e[0] for e in true | pred}):
        t = {e for e in true if e[0] == typ}
        p = {e for e in pred if e[0] == typ}
        pr, rc, f = prf(t, p)
        per_type[typ] = {"precision": pr, "recall": rc, "f1": f, "support": len(t)}
    precision, recall, f1 = prf(true, pred)
    flat_t = [x for s in y_true for x in s]
    flat_p = [x for s in y_pred for x in s]
    acc = float(np.mean([a == b for a, b in zip(flat_t, flat_p)])) if flat_t else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": acc, "per_type": per_type}


@dataclasses.dataclass(frozen=True)
class WordScore:
    """One word's label from its tokens: `word` (the index given), `label` (id), `score` (the
    label's score), `first` / `last` (its first and last token index)."""

    word: int
    label: int
    score: float
    first: int
    last: int


AGGREGATIONS = ("first", "average", "max")


def aggregate_words(
    scores: np.ndarray, word_of_token: np.ndarray, strategy: str = "first"
) -> list[WordScore]:
    """Word labels from token scores, HF's word aggregation (`TokenClassificationPipeline.aggregate_word`).

    Args:
        scores: [T, num_labels] per-token scores (probabilities for the pipeline; logits give the same
            labels for "first" and "max", which is all the NER task needs).
        word_of_token: [T] the word of each token, -1 for tokens in no word (special tokens, padding,
            and for the task's features, sub-tokens after a word's first); a word's tokens are contiguous.
        strategy: "first" (the first token's argmax), "max" (the argmax of the token with the highest
            score, the first such token on ties), "average" (the argmax of the mean of the tokens' scores).

    Returns:
        One `WordScore` per word, in token order.
    """
    if strategy not in AGGREGATIONS:
        raise ValueError(f"word aggregation must be one of {AGGREGATIONS}, got {strategy!r}")
    word_of_token = np.asarray(word_of_token)
    cols = np.flatnonzero(word_of_token >= 0)
    if not len(cols):
        return []
    w = word_of_token[cols]
    starts = np.flatnonzero(np.concatenate([[True], w[1:] != w[:-1]]))
    out = []
    for a, b in zip(starts, [*starts[1:], len(cols)]):
        tokens = cols[a:b]
        s = scores[tokens]
        if strategy == "first":
            row = s[0]
        elif strategy == "max":
            row = s[int(np.argmax(s.max(axis=-1)))]
        else:
            row = np.nanmean(s, axis=0)
        label = int(np.argmax(row))
        out.append(WordScore(int(w[a]), label, float(row[label]), int(tokens[0]), int(tokens[-1])))
    return out


def bio2_labels(types: Sequence[str]) -> tuple[str, ...]:
    """("O", "B-T1", "I-T1", "B-T2", ...) for entity types in the given order."""
    return ("O", *[f"{p}-{t}" for t in types for p in ("B", "I")])


@dataclasses.dataclass(frozen=True)
class NerTask(Task):
    """Token classification with BIO2 labels; `labels` default to CoNLL-2003's (HF's order)."""

    name: str = "ner"
    model_class: str = "MobileBertForTokenClassification"
    labels: tuple[str, ...] | None = bio2_labels(CONLL2003_TYPES)
    main_metric: str = "f1"
    input_keys: tuple[str, ...] = ("input_ids", "token_type_ids", "attention_mask")
    predictions_suffix = ".txt"

    def with_model_labels(self, names: Sequence[str]) -> NerTask:
        """The model's own label set where it names its labels (not HF's generic `LABEL_i`)."""
        if any(n != f"LABEL_{i}" for i, n in enumerate(names)):
            return dataclasses.replace(self, labels=tuple(names))
        return super().with_model_labels(names)

    def adapt(self, examples: Sequence[NerExample]) -> NerTask:
        """The task with any entity types of `examples` missing from `labels` appended."""
        known = [lab[2:] for lab in self.labels if lab.startswith("B-")]
        found = sorted(
            {typ for e in examples if e.tags for typ, _, _ in get_entities(list(e.tags))} - set(known)
        )
        return self if not found else dataclasses.replace(self, labels=bio2_labels([*known, *found]))

    def read_training(self, path: PathLike) -> tuple[NerTask, list[NerExample]]:
        """(the task with the file's new entity types added to `labels`, the file's sentences)."""
        task = self.adapt(read_conll(path))
        return task, task.read(path)

    def read(self, path: PathLike) -> list[NerExample]:
        """Sentences with tags converted to BIO2; entity types outside `labels` are an error."""
        out = []
        allowed = set(self.labels)
        for e in read_conll(path):
            if e.tags is None:
                out.append(e)
                continue
            tags = to_bio2(e.tags)
            for k, tag in enumerate(tags):
                if tag not in allowed:
                    line = int(e.guid.rsplit(":", 1)[1]) + k
                    raise DataError(
                        f"tag {e.tags[k]!r}: entity type not in the label set {self.labels}", path, line
                    )
            out.append(dataclasses.replace(e, tags=tuple(tags)))
        return out

    def featurise(
        self, examples: Sequence[NerExample], tokenizer: Any, max_len: int
    ) -> dict[str, np.ndarray]:
        """Words joined by single spaces and tokenized; each token is mapped to its word by offsets.

        Returns:
            input_ids, token_type_ids, attention_mask [N, max_len]; word_index [N, T] (the word a
            first sub-token starts, -1 elsewhere); labels [N, T] (label id on first sub-tokens, -100
            elsewhere) when the examples are labelled. Words past `max_len` are cut off.
        """
        if not examples:
            raise ValueError("ner: no examples to featurise")
        texts, word_starts = [], []
        for e in examples:
            starts = np.cumsum([0] + [len(w) + 1 for w in e.words[:-1]])
            texts.append(" ".join(e.words))
            word_starts.append(starts)
        enc = encode(tokenizer, texts, max_length=max_len, offsets=True, special_mask=True)
        offsets = enc.pop("offset_mapping")
        real = (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1)
        word_index = np.full(real.shape, -1, dtype=np.int32)
        for n, (starts, off, ok) in enumerate(zip(word_starts, offsets, real)):
            pos = np.flatnonzero(ok & (off[:, 1] > off[:, 0]))
            w = np.searchsorted(starts, off[pos, 0], side="right") - 1
            first = np.concatenate([[True], w[1:] != w[:-1]]) if len(w) else np.zeros(0, bool)
            word_index[n, pos[first]] = w[first]
        enc["word_index"] = word_index
        if all(e.tags is not None for e in examples):
            ids = {lab: i for i, lab in enumerate(self.labels)}
            labels = np.full(real.shape, -100, dtype=np.int32)
            for n, e in enumerate(examples):
                cols = np.flatnonzero(word_index[n] >= 0)
                labels[n, cols] = [ids[e.tags[w]] for w in word_index[n, cols]]
            enc["labels"] = labels
        return enc

    def truncation(
        self, examples: Sequence[NerExample], features: Mapping[str, np.ndarray], tokenizer: Any, max_len: int
    ) -> dict[str, int]:
        """Examples with words past `max_len` (those words get no token: "O" in the predictions)."""
        kept = (np.asarray(features["word_index"]) >= 0).sum(-1)
        lost = [len(e.words) - int(k) for e, k in zip(examples, kept)]
        return {"examples": sum(n > 0 for n in lost), "of": len(examples), "words": sum(lost)}

    def loss_terms(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Token cross-entropy over labels != -100."""
        import jax.numpy as jnp

        from mobilebert_jax.model import losses

        return {
            "tokens": losses.cross_entropy_sum_and_count(
                output(outputs, "logits"), jnp.asarray(batch["labels"])
            )
        }

    def postprocess(
        self,
        examples: Sequence[NerExample],
        features: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> list[list[str]]:
        """Word-level tags: the argmax at each word's first sub-token; "O" for words cut off by max_len.

        The same word aggregation (`aggregate_words`, strategy "first") as the token-classification
        pipeline's `aggregation_strategy="first"`.
        """
        logits = np.asarray(outputs["logits"])
        out = []
        for n, e in enumerate(examples):
            tags = ["O"] * len(e.words)
            for w in aggregate_words(logits[n], features["word_index"][n], "first"):
                tags[w.word] = self.labels[w.label]
            out.append(tags)
        return out

    def references(
        self, examples: Sequence[NerExample], features: Mapping[str, np.ndarray] | None = None
    ) -> list:
        missing = [e.guid for e in examples if e.tags is None]
        if missing:
            raise DataError(f"{len(missing)} sentences have no tags (first: {missing[0]})")
        return [list(e.tags) for e in examples]

    def metric(
        self, predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
    ) -> dict[str, float]:
        """precision, recall, f1, accuracy, and `<TYPE>_f1` per entity type."""
        s = entity_scores(references, predictions)
        out = {k: s[k] for k in ("precision", "recall", "f1", "accuracy")}
        out.update({f"{t}_f1": v["f1"] for t, v in s["per_type"].items()})
        return out

    def write_predictions(self, path: PathLike, examples: Sequence[NerExample], predictions: Any) -> None:
        """CoNLL format: `word predicted-tag` per line, blank line between sentences (readable by `read`)."""
        if len(predictions) != len(examples):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} sentences")
        with storage.open(path, "w", encoding="utf-8") as f:
            for e, tags in zip(examples, predictions):
                f.writelines(f"{w} {t}\n" for w, t in zip(e.words, tags))
                f.write("\n")
