"""A model's labels matched to a task's by name, as HF's `run_glue.py` does.

A model from the hub scores its classes in its own order: `id2label` says which column is which
(an MNLI model often reads `contradiction, entailment, neutral`). HF's `run_glue.py` maps the
model's `label2id` to the dataset's labels by lower-cased name
(`label_to_id = {i: int(label_name_to_id[label_list[i]]) ...}`); here the match also accepts the
task's file spelling of a label (GLUE's TSV tokens) and treats `_`, `-` and spaces alike. A model
whose labels are HF's generic `LABEL_0..LABEL_{n-1}` says nothing about its order and is read
positionally. Any other mismatch is an error naming both lists (HF only warns and reads positionally).
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def is_generic(names: Sequence[str]) -> bool:
    """True for HF's placeholder names `LABEL_0, LABEL_1, ...` in order (a config that names nothing)."""
    return all(n == f"LABEL_{i}" for i, n in enumerate(names))


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", str(name).strip().lower())


def model_label_order(
    model_names: Sequence[str], task_labels: Sequence[str], spellings: Sequence[Sequence[str]] = ()
) -> tuple[int, ...]:
    """For each model output column i (`model_names[i]`, its `id2label`), the task label id it scores.

    Args:
        model_names: the model's label names in id order.
        task_labels: the task's label names in id order.
        spellings: per task label, other names it goes by (e.g. its token in the task's files).

    Returns the identity for generic `LABEL_i` names; raises `ValueError` with both lists where the
    counts differ or the names do not match one to one (`Task.with_model_labels` makes it a `DataError`).
    """
    model_names, task_labels = list(model_names), list(task_labels)
    if len(model_names) != len(task_labels):
        raise ValueError(
            f"the model has {len(model_names)} labels {model_names}, the task has {len(task_labels)} "
            f"{task_labels}"
        )
    if is_generic(model_names):
        return tuple(range(len(model_names)))
    names_of = [
        {_key(t), *(_key(s) for s in (spellings[j] if j < len(spellings) else ()))}
        for j, t in enumerate(task_labels)
    ]
    order = []
    for name in model_names:
        hits = [j for j, keys in enumerate(names_of) if _key(name) in keys]
        if len(hits) != 1:
            break
        order.append(hits[0])
    if len(order) != len(model_names) or len(set(order)) != len(order):
        raise ValueError(
            f"the model's labels {model_names} do not match the task's labels {task_labels} by name "
            "(case and _/-/space ignored); rename the model's id2label or evaluate it as another task"
        )
    return tuple(order)


def generic_note(model_names: Sequence[str], task_labels: Sequence[str] | None) -> str | None:
    """The note to print where a model's generic `LABEL_i` names are read in the task's order."""
    if not task_labels or not is_generic(model_names):
        return None
    pairs = ", ".join(f"{n}={t}" for n, t in zip(model_names, task_labels))
    return f"the model's labels are generic (LABEL_i): read in the task's order ({pairs})"
