"""Shared test set-up: a fixed seed per test, Pyro validation on, warnings as errors
(pyproject), and torch held to one thread so the 2-core CI machine is not oversubscribed."""

from __future__ import annotations

import os

# torch, and every process a test starts (the CLI, notebooks' kernels, torchrun's workers), on
# one thread: the suite runs on pytest-xdist workers, and more threads than cores stall each other
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("PPLVM_TEST_THREADS", "1"))

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pplvm._pyro_settings  # noqa: F401  (Pyro's module-local params, as pplvm sets them)

torch.set_num_threads(int(os.environ.get("PPLVM_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_and_validate():
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    yield
    pyro.enable_validation(False)


@pytest.fixture
def quiet():
    """Card overrides that keep tests quiet."""
    return {"training.progress": False}
