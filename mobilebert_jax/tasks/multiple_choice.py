"""Multiple choice in SWAG format: a context, a start of the next sentence, and C endings.

Rows (CSV with a header, JSONL or JSON) have `sent1` (context), `sent2` (the start of the ending
sentence), `ending0` ... `ending{C-1}` and `label` (0..C-1; absent or empty for unlabelled rows), as
in the SWAG release and HF `datasets`' "swag". Choice c is the pair (`sent1`, `sent2 + " " +
ending_c`), as in HF `run_swag.py`.
"""

from __future__ import annotations

import dataclasses
import os
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
    require,
)


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
    """A context, the start of the continuation, the candidate endings and the gold index (or None)."""

    context: str
    start: str
    endings: tuple[str, ...]
    label: int | None
    guid: str = ""


def read_swag(path: PathLike, num_choices: int | None = None) -> list[ChoiceExample]:
    """Examples from a SWAG-format file; every row must have the same number of endings."""
    rows = read_records(path)
    if not rows:
        raise no_examples(path)
    out = []
    for line, rec in rows:
        require(rec, ("sent1", "sent2", "ending0"), path, line)
        n = 0
        while f"ending{n}" in rec:
            n += 1
        if num_choices is None:
            num_choices = n
        if n != num_choices:
            raise DataError(
                f"{n} endings, but {num_choices} expected (ending0..ending{num_choices - 1})", path, line
            )
        if n < 2:
            raise DataError("multiple choice needs at least ending0 and ending1", path, line)
        texts = [rec["sent1"], rec["sent2"], *[rec[f"ending{c}"] for c in range(n)]]
        if not all(isinstance(t, str) for t in texts):
            raise DataError("sent1, sent2 and endings must be text", path, line)
        raw = rec.get("label")
        label = None
        if raw is not None and str(raw).strip() != "":
            try:
                label = int(str(raw).strip())
            except ValueError:
                raise DataError(f"label {raw!r} is not an integer", path, line) from None
            if label == -1:  # HF datasets' unlabelled test split
                label = None
            elif not 0 <= label < n:
                raise DataError(f"label {label} outside 0..{n - 1}", path, line)
        out.append(ChoiceExample(texts[0], texts[1], tuple(texts[2:]), label, f"{os.fspath(path)}:{line}"))
    return out


@dataclasses.dataclass(frozen=True)
class MultipleChoiceTask(Task):
    """SWAG-style multiple choice (`MobileBertForMultipleChoice`, logits [B, C])."""

    name: str = "swag"
    model_class: str = "MobileBertForMultipleChoice"
    num_choices: int = 4

    @property
    def num_labels(self) -> int:
        return self.num_choices

    def config_overrides(self) -> dict[str, Any]:
        return {}

    def read(self, path: PathLike) -> list[ChoiceExample]:
        return read_swag(path, self.num_choices)

    def featurise(
        self, examples: Sequence[ChoiceExample], tokenizer: Any, max_len: int
    ) -> dict[str, np.ndarray]:
        """input_ids, token_type_ids, attention_mask [N, C, max_len]; labels [N] when labelled."""
        if not examples:
            raise ValueError("multiple choice: no examples to featurise")
        c = self.num_choices
        first = [e.context for e in examples for _ in range(c)]
        second = [f"{e.start} {end}" for e in examples for end in e.endings]
        if len(second) != len(first):
            raise ValueError(f"every example needs {c} endings")
        feats = {
            k: v.reshape(len(examples), c, -1)
            for k, v in encode(tokenizer, first, second, max_length=max_len).items()
        }
        if all(e.label is not None for e in examples):
            feats["labels"] = np.asarray([e.label for e in examples], dtype=np.int32)
        return feats

    def loss_terms(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        import jax.numpy as jnp

        from mobilebert_jax.model import losses

        return {
            "choice": losses.cross_entropy_sum_and_count(
                output(outputs, "logits"), jnp.asarray(batch["labels"])
            )
        }

    def postprocess(
        self,
        examples: Sequence[ChoiceExample],
        features: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """Chosen ending per example [N]."""
        return M.argmax(outputs["logits"])  # NaN where the logits are NaN

    def references(
        self, examples: Sequence[ChoiceExample], features: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        missing = [e.guid for e in examples if e.label is None]
        if missing:
            raise DataError(f"{len(missing)} examples have no label (first: {missing[0]})")
        return np.asarray([e.label for e in examples], dtype=np.int32)

    def metric(self, predictions: Any, references: Any) -> dict[str, float]:
        return {"accuracy": M.accuracy(predictions, references)}

    def write_predictions(self, path: PathLike, examples: Sequence[ChoiceExample], predictions: Any) -> None:
        """TSV `index\\tprediction` (the chosen ending's index)."""
        preds = prediction_rows(path, predictions, len(examples))
        with storage.open(path, "w", encoding="utf-8") as f:
            f.write("index\tprediction\n")
            f.writelines(f"{i}\t{int(p)}\n" for i, p in enumerate(preds))
