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

Chunks are also sized for the allocator. glibc's malloc serves a block of more than
:data:`BLOCK_BYTES` (its ceiling for the heap is 32 MiB) with fresh pages from the kernel, which
zeroes each page on first touch and takes it back on ``free``; and it returns the freed top of
its heap to the kernel once it exceeds a threshold that grows only with such blocks. A pass
that allocates large working tensors again and again then spends as much time in the kernel
as in its own arithmetic. :func:`tensor_rows` keeps every working tensor below that ceiling,
and :func:`reusing_memory` keeps freed memory (up to the pass's bound) in the heap for the next
chunk, returning it at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from typing import Iterator

MEMORY_MB = 512
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


#: bytes of the largest single tensor a chunk builds: below glibc's 32 MiB ceiling for blocks
#: served from the heap, so that freed blocks are reused instead of re-faulted from the kernel
BLOCK_BYTES = 16 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_CEILING = 32 * 2**20


def tensor_rows(elements_per_row: int, itemsize: int = 4) -> int:
    """Rows per chunk so that a tensor of ``elements_per_row`` values per row stays within
    :data:`BLOCK_BYTES` (at least one row)."""
    return max(1, BLOCK_BYTES // max(1, int(elements_per_row) * itemsize))


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def reusing_memory(memory_mb: float = MEMORY_MB) -> Iterator[None]:
    """Within the block, the process's heap keeps up to ``memory_mb`` of freed memory for reuse
    (glibc; elsewhere nothing changes) and serves blocks up to 32 MiB itself; on leaving, the
    free memory goes back to the kernel (``malloc_trim``). Settings stay as on leaving: heap
    blocks up to 32 MiB, a trim threshold of ``memory_mb`` (glibc's own would have grown to
    about that after the first large block)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_CEILING)
        libc.mallopt(_M_TRIM_THRESHOLD, max(2 * _MMAP_CEILING, min(int(memory_mb * 2**20), 2**31 - 1)))
    try:
        yield
    finally:
        if libc is not None:
            libc.malloc_trim(0)
