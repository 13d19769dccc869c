"""Every Colab notebook runs top to bottom on CPU in smoke mode, with a real notebook runner."""

from __future__ import annotations

import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat runs the notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient runs the notebooks")

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "colab", "*.ipynb")))


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # committed without outputs
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path}: outputs are not stripped"
    assert "colab-badge" in nb.cells[0].source
    assert "jax.devices()" in nb.cells[1].source
    monkeypatch.setenv("MOBILEBERT_JAX_SMOKE", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
