"""The smoke runs of the task recipes other than GLUE (SQuAD v1.1/v2.0, CoNLL-2003, SWAG, pretraining)."""

from __future__ import annotations

import pytest
from test_recipes import TASKS, recipes, smoke_run


@pytest.mark.parametrize("path", recipes(*TASKS))
def test_recipe_smoke_run(tmp_path, path):
    smoke_run(tmp_path, path)
