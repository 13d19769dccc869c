"""Fine-tuning and pretraining tasks: readers, features, losses, metrics and prediction writers.

`get_task(name, **options)` returns a `Task` (see `base.Task` for the interface). Names: the GLUE
tasks (cola, sst2, mrpc, stsb, qqp, mnli, mnli_mismatched, qnli, rte, wnli), squad, squad_v2,
ner (alias conll2003), swag (alias multiple_choice), pretraining.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mobilebert_jax.tasks.base import DataError, Task
from mobilebert_jax.tasks.glue import GLUE_TASKS, GlueExample, GlueTask, glue_task
from mobilebert_jax.tasks.multiple_choice import ChoiceExample, MultipleChoiceTask
from mobilebert_jax.tasks.ner import NerExample, NerTask
from mobilebert_jax.tasks.pretraining import PretrainingTask
from mobilebert_jax.tasks.squad import SquadExample, SquadTask

TASK_NAMES = (*GLUE_TASKS, "squad", "squad_v2", "ner", "swag", "pretraining")
_ALIASES = {"conll2003": "ner", "multiple_choice": "swag", "squad_v1": "squad", "squad2": "squad_v2"}


def get_task(name: str, **options: Any) -> Task:
    """The task `name`, with dataclass fields overridden by `options` (e.g. `doc_stride=64`)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key in ("squad", "squad_v2"):
        task: Task = SquadTask(name=key, version_2_with_negative=key == "squad_v2")
    elif key == "ner":
        task = NerTask()
    elif key == "swag":
        task = MultipleChoiceTask()
    elif key == "pretraining":
        task = PretrainingTask()
    else:
        try:
            task = glue_task(key)
        except KeyError:
            raise KeyError(f"unknown task {name!r}; expected one of {TASK_NAMES}") from None
    if options:
        fields = {f.name for f in dataclasses.fields(task)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"task {key!r} has no option(s) {unknown}; options: {sorted(fields)}")
        task = dataclasses.replace(task, **options)
    return task


__all__ = [
    "TASK_NAMES",
    "ChoiceExample",
    "DataError",
    "GlueExample",
    "GlueTask",
    "MultipleChoiceTask",
    "NerExample",
    "NerTask",
    "PretrainingTask",
    "SquadExample",
    "SquadTask",
    "Task",
    "get_task",
]
