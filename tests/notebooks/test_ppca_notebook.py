"""The PPCA notebook executes top to bottom in its short mode (its cells assert the subspace
recovery and that the comparison picks L >= 3)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]


def test_ppca_notebook_runs_in_short_mode(monkeypatch):
    monkeypatch.setenv("PPLVM_NOTEBOOK_SHORT", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(ROOT / "notebooks" / "ppca.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "principal angles" in outputs and "PSIS-LOO comparison" in outputs
