"""Memory-bounded evaluation: how many posterior draws and data go through one pass.

Every evaluation and export a run computes — the log-likelihood over draws × data
(:meth:`pplvm.Run.to_arviz`, :meth:`~pplvm.Run.log_likelihood`, held-out metrics), the
posterior-predictive replicates, the local posteriors (e.g. HMM state marginals and Viterbi
paths) — goes through the data in chunks of rows and the draws in chunks of draws, so that the
working tensors of one pass stay within ``evaluation.memory_mb`` (default :data:`MEMORY_MB`),
whatever the data size. A family states how many float elements its largest intermediate
tensors hold per (draw, datum) (:meth:`~pplvm.families.base.LatentVariableModel.evaluation_cost`:
an HMM ``T · K · (K + D)`` and a few copies of it), and a pass takes as many pairs as fit.

What the export keeps is bounded too: the posterior-predictive group holds the first draws of
each chain, as many as fit in a quarter of the budget (``evaluation.max_rows`` data at most;
the group is left out when not even one replicate per chain fits: raise ``memory_mb``), and
the log-likelihood group is ``draws × N`` numbers. Chunks combine exactly: a log-likelihood
computed in chunks equals the one computed in one pass (the tests check it).
Chunks are also sized for the allocator (:mod:`pplvm._allocator`: :func:`tensor_rows`,
:func:`reusing_memory`).
"""

from __future__ import annotations

from typing import Iterator

from .._allocator import BLOCK_BYTES, reusing_memory, tensor_rows

MEMORY_MB = 512
__all__ = ["BLOCK_BYTES", "MEMORY_MB", "budget_elements", "plan", "reusing_memory", "spans", "tensor_rows"]
#: bytes per element (float32) times the copies a pass may hold beside its largest tensor
#: (inputs, outputs, autograd buffers of the marginals)
BYTES_PER_ELEMENT = 4 * 4


def budget_elements(memory_mb: float) -> int:
    """Elements of the largest working tensor one pass may build within ``memory_mb``."""
    return max(1, int(memory_mb * 2**20) // BYTES_PER_ELEMENT)


def plan(num_draws: int, num_data: int, cost: int, memory_mb: float) -> tuple[int, int]:
    """``(draws, rows)`` per pass so that ``draws · rows · cost`` elements fit the budget
    (at least one of each: a single pair larger than the budget still runs, alone). All the
    draws go together when they fit with at least one row; else rows are one and draws split."""
    pairs = max(1, budget_elements(memory_mb) // max(1, int(cost)))
    draws = max(1, min(num_draws, pairs))
    rows = max(1, min(num_data, pairs // draws))
    return draws, rows


def spans(total: int, size: int) -> Iterator[slice]:
    """``slice(start, start + size)`` covering ``range(total)``."""
    for start in range(0, total, max(1, size)):
        yield slice(start, min(start + size, total))
