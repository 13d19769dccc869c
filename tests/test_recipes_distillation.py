"""The smoke run of the distillation recipe (2 transfer stages, then pre-training distillation)."""

from __future__ import annotations

import pytest
from test_recipes import recipes, smoke_run


@pytest.mark.parametrize("path", recipes("distillation"))
def test_recipe_smoke_run(tmp_path, path):
    smoke_run(tmp_path, path)
