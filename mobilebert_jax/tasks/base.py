"""What every task shares: the `Task` interface, `DataError`, file readers and the tokenizer adapter.

A task bundles what the command line and the fit loop need to fine-tune on one dataset:

    task = get_task("sst2")
    examples = task.read("glue/SST-2/dev.tsv")                  # list of examples
    features = task.featurise(examples, tokenizer, 128)         # dict of numpy arrays, leading dim N
    model_cls = task.model_cls()                                # e.g. MobileBertForSequenceClassification
    config = config.replace(**task.config_overrides())          # num_labels, id2label, problem_type
    batch = {k: features[k][i:j] for k in task.input_keys + task.label_keys}
    loss = task.loss(model.apply(..., **inputs), batch)         # HF's loss value, float32 scalar
    outputs = {k: np.concatenate(...) for k in task.output_keys}  # model outputs over all features
    predictions = task.postprocess(examples, features, outputs)
    metrics = task.metric(predictions, task.references(examples, features))
    task.write_predictions(path, examples, predictions)

Keys of `features` outside `input_keys + label_keys` (offsets, example indices) are bookkeeping for
`postprocess` and must not be fed to the model.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.tasks.labels import model_label_order

PathLike = str | os.PathLike


class DataError(ValueError):
    """Bad input data; the message starts with `file:line:` where both are known."""

    def __init__(self, message: str, path: PathLike | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{os.fspath(path)}:{line}: " if line is not None else f"{os.fspath(path)}: "
        super().__init__(where + message)
        self.path = None if path is None else os.fspath(path)
        self.line = line


def prediction_rows(path: PathLike, predictions: Any, num_examples: int) -> np.ndarray:
    """One prediction per example as a flat array, checked before a predictions file is written."""
    preds = np.asarray(predictions).reshape(-1)
    if len(preds) != num_examples:
        raise ValueError(f"{len(preds)} predictions for {num_examples} examples")
    if np.isnan(preds.astype(np.float64)).any():
        raise ValueError(f"{path}: {int(np.isnan(preds).sum())} predictions are NaN (the model is broken)")
    return preds


@dataclasses.dataclass(frozen=True)
class Task:
    """Interface of a task; subclasses fill in the methods.

    Attributes:
        name: task name as accepted by `get_task`.
        model_class: name of the head in `mobilebert_jax.MODEL_CLASSES`.
        labels: label names in id order (None for regression, QA and pretraining).
        problem_type: HF `problem_type` for sequence classification heads, else None.
        input_keys: feature keys fed to the model as keyword arguments.
        label_keys: feature keys fed to the model / loss as labels.
        output_keys: model output fields `postprocess` needs.
        main_metric: the key of `metric(...)` to select checkpoints by (higher is better).
        predictions_suffix: file suffix of what `write_predictions` writes (class attribute).
        evaluate_by_loss: evaluated by its training loss and accuracies, not by `postprocess` and
            `metric` (class attribute; pretraining, whose logits are [N, T, vocab]).
        model_label_order: for each output column of the model being evaluated, the id in `labels`
            of the label it scores (set by `with_model_labels` where the model orders them otherwise).
    """

    predictions_suffix: ClassVar[str] = ".tsv"
    evaluate_by_loss: ClassVar[bool] = False

    name: str = ""
    model_class: str = ""
    labels: tuple[str, ...] | None = None
    problem_type: str | None = None
    input_keys: tuple[str, ...] = ("input_ids", "token_type_ids", "attention_mask")
    label_keys: tuple[str, ...] = ("labels",)
    output_keys: tuple[str, ...] = ("logits",)
    main_metric: str = "accuracy"
    model_label_order: tuple[int, ...] | None = None

    @property
    def num_labels(self) -> int:
        """Width of the classifier (1 for regression, 2 for QA start/end)."""
        return len(self.labels) if self.labels else 1

    def model_cls(self) -> type:
        """The Flax head class (imported lazily so that data code does not need the model)."""
        from mobilebert_jax.model.heads import MODEL_CLASSES

        return MODEL_CLASSES[self.model_class]

    def config_overrides(self) -> dict[str, Any]:
        """Fields to pass to `MobileBertConfig.replace` for this task's head."""
        if self.labels is None:
            return {}
        out: dict[str, Any] = {"num_labels": self.num_labels, "id2label": dict(enumerate(self.labels))}
        if self.problem_type is not None:
            out["problem_type"] = self.problem_type
        return out

    def adapt(self, examples: Sequence[Any]) -> Task:
        """A copy of the task fitted to training examples (e.g. NER label sets); default: self."""
        return self

    def read_training(self, path: PathLike) -> tuple[Task, list[Any]]:
        """(the task fitted to the training file by `adapt`, the file's examples). Unlike `read`, a
        label the task can add (a new NER entity type) is not an error here."""
        examples = self.read(path)
        return self.adapt(examples), examples

    def default_file(self, split: str) -> str | None:
        """The file of `split` ("train", "validation", "test") when none is given; None: one must be."""
        return None

    def is_prepared(self, path: PathLike | None) -> bool:
        """True where `path` is a folder of ready-made training instances to stream (pretraining)."""
        return False

    def check_labelled(self, examples: Sequence[Any], path: PathLike) -> None:
        """Raises `DataError` (the reason) where `examples`, read from `path`, lack the labels to score."""
        self.references(examples, None)

    def with_model_labels(self, names: Sequence[str]) -> Task:
        """The task for a model whose head has the labels `names` (its `id2label`), matched to `labels`
        by name (`tasks.labels.model_label_order`); raises `DataError` naming both lists where they
        do not match."""
        if self.labels is None:
            return self
        try:
            order = model_label_order(names, self.labels, self.label_spellings())
        except ValueError as e:
            raise DataError(str(e)) from None
        if order == tuple(range(len(order))):
            return self
        return dataclasses.replace(self, model_label_order=order)

    def label_spellings(self) -> tuple[tuple[str, ...], ...]:
        """Per label, other names it goes by (its token in the task's files); matched like `labels`."""
        return ()

    def in_label_order(self, scores: np.ndarray) -> np.ndarray:
        """[N, num_labels] model scores with their columns put in the order of `labels`."""
        if self.model_label_order is None:
            return scores
        return np.asarray(scores)[..., np.argsort(self.model_label_order)]

    def references_as_predictions(self, references: Any) -> Any:
        """The predictions that match `references` exactly (to learn `metric`'s keys)."""
        return references

    def metric_names(self, examples: Sequence[Any], features: Mapping[str, np.ndarray]) -> list[str] | None:
        """The keys `metric` returns, scored on the references themselves; None where unknown."""
        try:
            refs = self.references(examples, features)
            return sorted(self.metric(self.references_as_predictions(refs), refs))
        except Exception:
            return None

    def truncation(
        self, examples: Sequence[Any], features: Mapping[str, np.ndarray], tokenizer: Any, max_len: int
    ) -> dict[str, int] | None:
        """What `featurise` cut to `max_len`: {"examples": examples cut, "of": examples, ...}; None where
        the task does not cut (or keeps the rest in overflow windows)."""
        return None

    def majority_baseline(
        self,
        train_examples: Sequence[Any],
        eval_examples: Sequence[Any],
        eval_features: Mapping[str, np.ndarray],
    ) -> dict[str, float] | None:
        """The metrics of always predicting the most frequent training label; None where it means nothing."""
        return None

    # --- to be provided by subclasses -------------------------------------------------------------
    def read(self, path: PathLike) -> list[Any]:
        """Examples from a file; raises `DataError` naming file and line on bad data."""
        raise NotImplementedError(f"{type(self).__name__}.read")

    def featurise(self, examples: Sequence[Any], tokenizer: Any, max_len: int) -> dict[str, np.ndarray]:
        """Fixed-length numpy features `[N, ...]` for `examples` (N may exceed len(examples))."""
        raise NotImplementedError(f"{type(self).__name__}.featurise")

    def loss_terms(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """`{term: (sum, count)}` float32 JAX scalars; add them over micro-batches, then `combine_loss`."""
        raise NotImplementedError(f"{type(self).__name__}.loss_terms")

    def combine_loss(self, terms: Mapping[str, tuple[Any, Any]]) -> Any:
        """The loss from (accumulated) terms: sum over terms of sum / count (HF's value)."""
        from mobilebert_jax.model import losses

        return losses.mean_of_terms(terms)

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> Any:
        """HF's loss for one batch: `combine_loss(loss_terms(outputs, batch))`."""
        return self.combine_loss(self.loss_terms(outputs, batch))

    def postprocess(
        self, examples: Sequence[Any], features: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> Any:
        """Predictions per example from model outputs over all features."""
        raise NotImplementedError(f"{type(self).__name__}.postprocess")

    def references(self, examples: Sequence[Any], features: Mapping[str, np.ndarray] | None = None) -> Any:
        """Gold answers in the form `metric` takes."""
        raise NotImplementedError(f"{type(self).__name__}.references")

    def metric(self, predictions: Any, references: Any) -> dict[str, float]:
        """Task metrics (floats) from predictions and references."""
        raise NotImplementedError(f"{type(self).__name__}.metric")

    def write_predictions(self, path: PathLike, examples: Sequence[Any], predictions: Any) -> None:
        """Write predictions in the task's customary format."""
        raise NotImplementedError(f"{type(self).__name__}.write_predictions")


def output(outputs: Any, key: str) -> Any:
    """Field `key` of a model output (flax dataclass or mapping)."""
    if isinstance(outputs, Mapping):
        return outputs[key]
    return getattr(outputs, key)


# --- files ----------------------------------------------------------------------------------------


def iter_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line ending), splitting on `\\n` only.

    A UTF-8 byte-order mark is dropped (MRPC's files start with one). Other line separators
    (`\\r`, U+2028, U+0085) inside a line are kept: they occur inside GLUE sentences. Bytes that are
    not UTF-8 raise `DataError` naming the file, line and column.
    """
    with storage.open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {e.start + 1} (save the file as UTF-8)",
                    path,
                    i,
                ) from None
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
            yield i, line


def check_utf8(path: PathLike) -> None:
    """Raise `DataError` naming file:line for the first bytes of `path` that are not UTF-8."""
    for _ in iter_lines(path):
        pass


def check_file(path: PathLike) -> None:
    """Raise `DataError` if `path` is missing or empty."""
    if not storage.isfile(path):
        raise DataError("no such file", path)
    if storage.getsize(path) == 0:
        raise DataError("empty file", path)


def read_tsv(path: PathLike) -> list[tuple[int, list[str]]]:
    """Tab-separated rows `(line, fields)`; quotes are literal text, never CSV quoting (GLUE files)."""
    check_file(path)
    return [(i, line.split("\t")) for i, line in iter_lines(path) if line.strip()]


def read_records(path: PathLike) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a `.csv` (header row, standard CSV quoting), `.jsonl` or `.json` file as `(line, dict)`.

    A `.json` file may hold a list of records or `{"data": [...]}`; line numbers are then record
    numbers. CSV line numbers are the line where the record starts.
    """
    check_file(path)
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".csv", ".json"):
        check_utf8(path)
    if ext == ".csv":
        with storage.open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DataError("no header row", path, 1)
            rows = []
            start = reader.line_num + 1
            for row in reader:
                if None in row:
                    raise DataError(
                        f"more fields than the {len(reader.fieldnames)} in the header", path, start
                    )
                if any(v is None for v in row.values()):
                    raise DataError(
                        f"fewer fields than the {len(reader.fieldnames)} in the header", path, start
                    )
                rows.append((start, row))
                start = reader.line_num + 1
            return rows
    if ext in (".jsonl", ".ndjson"):
        rows = []
        for i, line in iter_lines(path):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e}", path, i) from None
            if not isinstance(rec, dict):
                raise DataError(f"expected a JSON object, got {type(rec).__name__}", path, i)
            rows.append((i, rec))
        return rows
    if ext == ".json":
        with storage.open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e}", path, e.lineno) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError('expected a list of objects or {"data": [objects]}', path)
        return [(i + 1, r) for i, r in enumerate(data)]
    raise DataError(f"unknown file type {ext!r}: expected .tsv, .csv, .jsonl or .json", path)


def require(rec: Mapping[str, Any], keys: Sequence[str], path: PathLike, line: int) -> None:
    """Raise `DataError` naming the first of `keys` missing from `rec`."""
    for k in keys:
        if k not in rec:
            raise DataError(f"missing column {k!r} (have {sorted(rec)})", path, line)


def no_examples(path: PathLike) -> DataError:
    return DataError("no examples in file", path)


# --- tokenizer adapter ----------------------------------------------------------------------------

_KEYS = (
    "input_ids",
    "token_type_ids",
    "attention_mask",
    "offset_mapping",
    "special_tokens_mask",
    "overflow_to_sample_mapping",
)


def encode(
    tokenizer: Any,
    first: Sequence[str],
    second: Sequence[str] | None = None,
    *,
    max_length: int,
    truncation: bool | str = True,
    padding: bool | str = "max_length",
    stride: int = 0,
    overflow: bool = False,
    offsets: bool = False,
    special_mask: bool = False,
) -> dict[str, np.ndarray]:
    """Call a HF-style tokenizer on a batch and return int32 numpy arrays.

    Works with `mobilebert_jax.text.tokenizer.MobileBertTokenizer` and with `transformers`' fast BERT
    tokenizer (which returns lists). With the default padding every row has `max_length` tokens.

    Returns:
        input_ids, token_type_ids, attention_mask [N, T]; offset_mapping [N, T, 2] if `offsets`;
        special_tokens_mask [N, T] if `special_mask`; overflow_to_sample_mapping [N] if `overflow`.
    """
    if len(first) == 0:
        raise ValueError("encode: empty batch")
    kw: dict[str, Any] = dict(max_length=max_length, truncation=truncation, padding=padding)
    if overflow:
        kw.update(stride=stride, return_overflowing_tokens=True)
    if offsets:
        kw["return_offsets_mapping"] = True
    if special_mask:
        kw["return_special_tokens_mask"] = True
    first = list(first)
    enc = tokenizer(first, text_pair=list(second), **kw) if second is not None else tokenizer(first, **kw)
    out = {}
    for k in _KEYS:
        if k in enc:
            out[k] = np.asarray(enc[k], dtype=np.int32)
    if "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    return out


def vocab_tokens(tokenizer: Any) -> list[str]:
    """The vocabulary as a list indexed by id."""
    vocab = None
    for attr in ("get_vocab", "vocab"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            vocab = v() if callable(v) else v
            break
    if vocab is None:
        raise TypeError(f"{type(tokenizer).__name__} exposes neither get_vocab() nor vocab")
    tokens = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        tokens[i] = tok
    return tokens


def special_token_id(tokenizer: Any, name: str) -> int:
    """Id of the `[CLS]`-style token `name` ("cls", "sep", "mask", "pad")."""
    i = getattr(tokenizer, f"{name}_token_id", None)
    if i is None:
        i = vocab_tokens(tokenizer).index(f"[{name.upper()}]")
    return int(i)
