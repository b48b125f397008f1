"""Every notebook in notebooks/ executes top to bottom in its short mode
(PPLVM_NOTEBOOK_SHORT=1), so no logic lives only in a notebook and none goes stale."""

from __future__ import annotations

import atexit
import functools
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@functools.cache
def kernel() -> tuple[KernelManager, Any]:
    """One kernel (and client) per test process, in notebooks/, shared by the notebooks it runs:
    each starts with ``%reset -f`` (an empty namespace: a name a notebook does not define or
    import fails), while the modules it imports (torch, Pyro, pplvm: seconds a kernel) stay loaded."""
    env = {**os.environ, "PPLVM_NOTEBOOK_SHORT": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(NOTEBOOKS[0].parent))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=300)
    atexit.register(lambda: (kc.stop_channels(), km.shutdown_kernel(now=True)))
    return km, kc


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    km, kc = kernel()
    client = NotebookClient(nb, km=km, timeout=300)
    client.kc = kc  # the process's client: its channels stay open for the next notebook
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(
        o.output_type in ("display_data", "execute_result")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_executed(path):
    """The committed notebook holds its outputs (the docs render them without executing):
    every code cell ran, in order, without an error, and a figure is among the outputs.
    `make notebooks` re-executes and stores them all."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run `make notebooks`"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
