"""GLUE: the nine tasks, read from GLUE TSV files, CSV/JSONL or HF `datasets`.

Label ids follow HF `datasets` ("nyu-mll/glue"), so files and the hub agree; the TSV files' own
label tokens ("0"/"1", "entailment", ...) are mapped onto them and written back by
`write_predictions` in the GLUE submission format. STS-B is regression (`num_labels=1`, scores in
[0, 5]). Metrics are those of HF `evaluate`'s "glue" metric, under the same names.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.tasks import metrics as M
from mobilebert_jax.tasks.base import (
    DataError,
    PathLike,
    Task,
    encode,
    no_examples,
    output,
    prediction_rows,
    read_records,
    read_tsv,
    require,
)


@dataclasses.dataclass(frozen=True)
class GlueExample:
    """One sentence or sentence pair. `label` is a class id, a float (STS-B) or None (unlabelled).
    `guid` is `file:line`."""

    text_a: str
    text_b: str | None
    label: int | float | None
    guid: str = ""


@dataclasses.dataclass(frozen=True)
class _Layout:
    tsv: tuple[str, str | None, str]  # header names in the GLUE TSV: text_a, text_b, label
    hf: tuple[str, str | None]  # column names in HF datasets / CSV / JSONL
    labels: tuple[str, ...] | None  # HF datasets label names (None: regression)
    tsv_labels: tuple[str, ...] | None  # the TSV's label token for each id
    metrics: tuple[str, ...]
    hf_config: str
    files: tuple[tuple[str, str], ...]  # split -> file name inside the GLUE task folder
    hf_splits: tuple[tuple[str, str], ...] = (
        ("train", "train"),
        ("validation", "validation"),
        ("test", "test"),
    )


_NLI = ("entailment", "not_entailment")
_STD = (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv"))
LAYOUTS: dict[str, _Layout] = {
    "cola": _Layout(
        ("sentence", None, "label"),
        ("sentence", None),
        ("unacceptable", "acceptable"),
        ("0", "1"),
        ("matthews_correlation",),
        "cola",
        _STD,
    ),
    "sst2": _Layout(
        ("sentence", None, "label"),
        ("sentence", None),
        ("negative", "positive"),
        ("0", "1"),
        ("accuracy",),
        "sst2",
        _STD,
    ),
    "mrpc": _Layout(
        ("#1 String", "#2 String", "Quality"),
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        ("0", "1"),
        ("accuracy", "f1"),
        "mrpc",
        _STD,
    ),
    "stsb": _Layout(
        ("sentence1", "sentence2", "score"),
        ("sentence1", "sentence2"),
        None,
        None,
        ("pearson", "spearmanr"),
        "stsb",
        _STD,
    ),
    "qqp": _Layout(
        ("question1", "question2", "is_duplicate"),
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        ("0", "1"),
        ("accuracy", "f1"),
        "qqp",
        _STD,
    ),
    "mnli": _Layout(
        ("sentence1", "sentence2", "gold_label"),
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        "mnli",
        (("train", "train.tsv"), ("validation", "dev_matched.tsv"), ("test", "test_matched.tsv")),
        (("train", "train"), ("validation", "validation_matched"), ("test", "test_matched")),
    ),
    "mnli_mismatched": _Layout(
        ("sentence1", "sentence2", "gold_label"),
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        ("entailment", "neutral", "contradiction"),
        ("accuracy",),
        "mnli",
        (("train", "train.tsv"), ("validation", "dev_mismatched.tsv"), ("test", "test_mismatched.tsv")),
        (("train", "train"), ("validation", "validation_mismatched"), ("test", "test_mismatched")),
    ),
    "qnli": _Layout(
        ("question", "sentence", "label"), ("question", "sentence"), _NLI, _NLI, ("accuracy",), "qnli", _STD
    ),
    "rte": _Layout(
        ("sentence1", "sentence2", "label"),
        ("sentence1", "sentence2"),
        _NLI,
        _NLI,
        ("accuracy",),
        "rte",
        _STD,
    ),
    "wnli": _Layout(
        ("sentence1", "sentence2", "label"),
        ("sentence1", "sentence2"),
        ("not_entailment", "entailment"),
        ("0", "1"),
        ("accuracy",),
        "wnli",
        _STD,
    ),
}
ALIASES = {
    "sst-2": "sst2",
    "sts-b": "stsb",
    "mnli-m": "mnli",
    "mnli-mm": "mnli_mismatched",
    "mnli_matched": "mnli",
}
GLUE_TASKS = tuple(LAYOUTS)
_STSB_RANGE = (0.0, 5.0)


def _parse_label(layout: _Layout, value: Any, path: PathLike, line: int, *, tsv: bool) -> int | float | None:
    """Label id (or float score) from a file value; None for an unlabelled (-1 / empty) row."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if layout.labels is None:
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise DataError(f"score {value!r} is not a number", path, line) from None
        lo, hi = _STSB_RANGE
        if not lo <= score <= hi:
            raise DataError(f"score {score} outside the STS-B range [{lo}, {hi}]", path, line)
        return score
    if isinstance(value, bool) or isinstance(value, float) and not float(value).is_integer():
        raise DataError(f"label {value!r} is not in the label set {layout.labels}", path, line)
    token = str(int(value)) if isinstance(value, int | float) else value.strip()
    if tsv:
        if token in layout.tsv_labels:
            return layout.tsv_labels.index(token)
    else:
        if token == "-1":  # HF datasets' test splits
            return None
        if token in layout.labels:
            return layout.labels.index(token)
        if token.lstrip("-").isdigit() and 0 <= int(token) < len(layout.labels):
            return int(token)
    expected = layout.tsv_labels if tsv else layout.labels
    raise DataError(f"label {value!r} is not in the label set {expected}", path, line)


def _read_glue_tsv(layout: _Layout, path: PathLike) -> list[GlueExample]:
    rows = read_tsv(path)
    if not rows:
        raise no_examples(path)
    name_a, name_b, name_label = layout.tsv
    first_line, first = rows[0]
    if layout.hf_config == "cola" and len(first) == 4 and first[1] in ("0", "1"):
        # CoLA train/dev have no header: source, label, original label marker, sentence.
        cols, body = {name_a: 3, name_label: 1}, rows
        width = 4
    else:
        cols = {name: i for i, name in enumerate(first)}
        body, width = rows[1:], len(first)
        for name in (name_a, name_b):
            if name is not None and name not in cols:
                raise DataError(f"missing column {name!r} in header {first}", path, first_line)
    if not body:
        raise no_examples(path)
    out = []
    for line, fields in body:
        if len(fields) != width:
            raise DataError(f"expected {width} tab-separated fields, got {len(fields)}", path, line)
        label = None
        if name_label in cols:
            label = _parse_label(layout, fields[cols[name_label]], path, line, tsv=True)
        text_b = fields[cols[name_b]] if name_b is not None else None
        out.append(GlueExample(fields[cols[name_a]], text_b, label, f"{os.fspath(path)}:{line}"))
    return out


def examples_from_records(
    layout: _Layout, records: Sequence[tuple[int, Mapping[str, Any]]], source: PathLike
) -> list[GlueExample]:
    """Examples from dict rows with HF `datasets` column names (`sentence`, `premise`, ..., `label`)."""
    if not records:
        raise no_examples(source)
    out = []
    for line, rec in records:
        need = [c for c in layout.hf if c is not None]
        require(rec, need, source, line)
        for c in need:
            if not isinstance(rec[c], str):
                raise DataError(f"column {c!r} must be text, got {type(rec[c]).__name__}", source, line)
        label = _parse_label(layout, rec.get("label"), source, line, tsv=False)
        text_b = rec[layout.hf[1]] if layout.hf[1] is not None else None
        out.append(GlueExample(rec[layout.hf[0]], text_b, label, f"{os.fspath(source)}:{line}"))
    return out


def load_hf_glue(task: str, split: str = "validation", **load_kwargs: Any) -> list[GlueExample]:
    """Examples from HF `datasets` ("nyu-mll/glue"); needs `datasets` and a reachable hub or cache."""
    layout = LAYOUTS[_canonical(task)]
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ImportError(
            f"reading GLUE {task!r} from the hub needs HF `datasets` (pip install datasets); "
            "or pass the GLUE TSV / CSV / JSONL file instead"
        ) from None
    hf_split = dict(layout.hf_splits).get(split, split)
    try:
        ds = datasets.load_dataset("nyu-mll/glue", layout.hf_config, split=hf_split, **load_kwargs)
    except Exception as e:  # network, missing cache, unknown split: all surface here
        raise RuntimeError(
            f"could not load GLUE {layout.hf_config!r} split {hf_split!r} from HF datasets: {e}"
        ) from e
    return examples_from_records(
        layout, list(enumerate(ds, start=1)), f"hf://nyu-mll/glue/{layout.hf_config}/{hf_split}"
    )


def _canonical(name: str) -> str:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in LAYOUTS:
        raise KeyError(f"unknown GLUE task {name!r}; expected one of {GLUE_TASKS}")
    return key


@dataclasses.dataclass(frozen=True)
class GlueTask(Task):
    """One GLUE task: sequence classification (regression for STS-B)."""

    model_class: str = "MobileBertForSequenceClassification"

    @property
    def layout(self) -> _Layout:
        return LAYOUTS[self.name]

    @property
    def is_regression(self) -> bool:
        return self.layout.labels is None

    def config_overrides(self) -> dict[str, Any]:
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        return super().config_overrides()

    def label_spellings(self) -> tuple[tuple[str, ...], ...]:
        """The GLUE TSV token of each label ("0"/"1" for most tasks)."""
        return tuple((t,) for t in self.layout.tsv_labels or ())

    def default_file(self, split: str) -> str:
        """File name of `split` ("train", "validation", "test") in the GLUE task folder."""
        return dict(self.layout.files)[split]

    def check_labelled(self, examples: Sequence[GlueExample], path: PathLike) -> None:
        try:
            super().check_labelled(examples, path)
        except DataError as e:
            if not os.fspath(path).lower().endswith(".tsv"):
                raise
            raise DataError(
                f"{e}; a GLUE {self.name} TSV has its label in the {self.layout.tsv[2]!r} column"
            ) from None

    def majority_baseline(
        self,
        train_examples: Sequence[GlueExample],
        eval_examples: Sequence[GlueExample],
        eval_features: Mapping[str, np.ndarray],
    ) -> dict[str, float] | None:
        if self.is_regression:
            return None
        labels = [e.label for e in train_examples if e.label is not None]
        if not labels:
            return None
        top = Counter(labels).most_common(1)[0][0]
        preds = np.full(len(eval_examples), int(top))
        return self.metric(preds, self.references(eval_examples, eval_features))

    def read(self, path: PathLike) -> list[GlueExample]:
        """GLUE `.tsv` (the official layout of the task) or `.csv` / `.jsonl` / `.json` with HF column names."""
        if os.fspath(path).lower().endswith(".tsv"):
            return _read_glue_tsv(self.layout, path)
        return examples_from_records(self.layout, read_records(path), path)

    def featurise(
        self, examples: Sequence[GlueExample], tokenizer: Any, max_len: int
    ) -> dict[str, np.ndarray]:
        """input_ids, token_type_ids, attention_mask [N, max_len] (longest-first truncation), and
        labels [N] (int32, float32 for STS-B) when every example is labelled."""
        if not examples:
            raise ValueError(f"{self.name}: no examples to featurise")
        pair = self.layout.hf[1] is not None
        feats = encode(
            tokenizer,
            [e.text_a for e in examples],
            [e.text_b for e in examples] if pair else None,
            max_length=max_len,
        )
        have = [e.label is not None for e in examples]
        if all(have):
            dtype = np.float32 if self.is_regression else np.int32
            feats["labels"] = np.asarray([e.label for e in examples], dtype=dtype)
        elif any(have):
            bad = examples[have.index(False)].guid
            raise DataError(f"unlabelled example among labelled ones ({bad})")
        return feats

    def truncation(
        self,
        examples: Sequence[GlueExample],
        features: Mapping[str, np.ndarray],
        tokenizer: Any,
        max_len: int,
    ) -> dict[str, int]:
        """Examples longer than `max_len` tokens (only the rows that fill `max_len` are tokenized again)."""
        full = np.flatnonzero(np.asarray(features["attention_mask"]).sum(-1) >= max_len)
        cut = 0
        if len(full):
            first = [examples[i].text_a for i in full]
            kw = dict(truncation=False, padding=False)
            if self.layout.hf[1] is not None:
                kw["text_pair"] = [examples[i].text_b for i in full]
            cut = sum(len(ids) > max_len for ids in tokenizer(first, **kw)["input_ids"])
        return {"examples": int(cut), "of": len(examples)}

    def loss_terms(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Cross-entropy (MSE for STS-B) as `{"cls": (sum, count)}` over the batch."""
        import jax.numpy as jnp

        from mobilebert_jax.model import losses

        logits = output(outputs, "logits")
        labels = jnp.asarray(batch["labels"])
        if self.is_regression:
            return {"mse": losses.sequence_classification_sum_and_count("regression", logits, labels)}
        return {"cls": losses.cross_entropy_sum_and_count(logits, labels)}

    def postprocess(
        self,
        examples: Sequence[GlueExample],
        features: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """Class ids [N] (argmax) or scores [N] (STS-B)."""
        logits = self.in_label_order(np.asarray(outputs["logits"]))
        if self.is_regression:
            return logits.reshape(-1).astype(np.float32)
        return M.argmax(logits)  # NaN where the logits are NaN, so the metrics are NaN too

    def references(
        self, examples: Sequence[GlueExample], features: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Gold labels [N]; raises if an example is unlabelled."""
        missing = [e.guid for e in examples if e.label is None]
        if missing:
            raise DataError(f"{len(missing)} examples have no label (first: {missing[0]})")
        return np.asarray([e.label for e in examples], dtype=np.float32 if self.is_regression else np.int32)

    def metric(self, predictions: Any, references: Any) -> dict[str, float]:
        """The task's GLUE metrics (names as HF `evaluate`'s glue metric)."""
        fns = {
            "accuracy": M.accuracy,
            "f1": M.f1,
            "matthews_correlation": M.matthews_corrcoef,
            "pearson": M.pearson,
            "spearmanr": M.spearman,
        }
        out = {k: fns[k](predictions, references) for k in self.layout.metrics}
        if len(out) > 1:
            out["combined_score"] = float(np.mean(list(out.values())))
        return out

    def write_predictions(self, path: PathLike, examples: Sequence[GlueExample], predictions: Any) -> None:
        """GLUE submission TSV: header `index\\tprediction`, labels as the task's TSV tokens."""
        preds = prediction_rows(path, predictions, len(examples))
        with storage.open(path, "w", encoding="utf-8") as f:
            f.write("index\tprediction\n")
            for i, p in enumerate(preds):
                value = f"{float(p):.3f}" if self.is_regression else self.layout.tsv_labels[int(p)]
                f.write(f"{i}\t{value}\n")


def glue_task(name: str) -> GlueTask:
    """The GLUE task `name` (cola, sst2, mrpc, stsb, qqp, mnli, mnli_mismatched, qnli, rte, wnli)."""
    key = _canonical(name)
    layout = LAYOUTS[key]
    main = "combined_score" if len(layout.metrics) > 1 else layout.metrics[0]
    return GlueTask(
        name=key,
        labels=layout.labels,
        problem_type="regression" if layout.labels is None else "single_label_classification",
        main_metric=main,
    )
