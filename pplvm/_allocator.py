"""Working memory the allocator can reuse, for passes that build large tensors chunk after chunk.

glibc's malloc serves a block of more than 32 MiB (the most it takes from its heap) with fresh
pages from the kernel, which zeroes each page on first touch and takes it back on ``free``; and
it returns the freed top of its heap to the kernel once that exceeds a threshold that grows
only with such blocks. A pass
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
def reusing_memory(memory_mb: float = 512) -> Iterator[None]:
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
