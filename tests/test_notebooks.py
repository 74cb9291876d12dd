"""Notebooks run top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="%%cython needs a C compiler")
def test_custom_cython_model_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "custom_cython_model.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    printed = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "largest difference between C and NumPy" in printed
    assert "period" in printed
