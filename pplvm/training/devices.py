"""Where a run computes: the one place ``training.device`` is read.

Training, joining a process group under torchrun, and loading a run all ask
:func:`resolve_device`; they differ only in what they tell it (a process's ``LOCAL_RANK``; to
fall back to the CPU where a GPU the card names is missing). Also: moving data there
(:func:`to_device`) and the numerics a step runs under (:func:`precision_context`).
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from ..errors import TrainingError


def resolve_device(spec: str, *, cpu_fallback: bool = False, local_rank: int | None = None) -> torch.device:
    """The device ``spec`` (``training.device``: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``)
    names on this machine.

    ``auto`` is a GPU where there is one, else the CPU. A GPU this machine lacks is a
    :class:`~pplvm.errors.TrainingError` naming the key, or with ``cpu_fallback`` the CPU (a
    run trained on a GPU, loaded on a machine without one). ``local_rank``: this process's
    ``LOCAL_RANK`` when several train together (torchrun); a GPU is then that process's own,
    ``cuda:N`` is refused, and a rank beyond the node's GPUs is named."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type != "cuda":
        return device
    if local_rank is not None and device.index is not None:
        raise TrainingError(
            f"training.device = {spec!r}: with several processes each uses the GPU "
            "its LOCAL_RANK names; set training.device = 'cuda' (or 'auto')"
        )
    if not torch.cuda.is_available():
        if cpu_fallback:
            return torch.device("cpu")
        raise TrainingError(f"training.device = {spec!r}: this machine has no CUDA device; use 'auto' or 'cpu'")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if local_rank >= count:
            raise TrainingError(
                f"LOCAL_RANK = {local_rank} but this node has {count} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        return torch.device("cuda", local_rank)
    if device.index is not None and device.index >= count:
        raise TrainingError(f"training.device = {spec!r}: only {count} CUDA device(s)")
    return device


def to_device(data: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """A tensor or :class:`~pplvm.data.Batch` on ``device`` (no copy when already there)."""
    return data.to(device, non_blocking=non_blocking)


def precision_context(precision: str, device: torch.device) -> ContextManager:
    """The numerics a step runs under: ``fp32``; ``bf16`` (autocast: matrix products in
    bfloat16, reductions and log-probabilities in float32); ``tf32`` (TensorFloat-32 matrix
    products on CUDA; plain fp32 elsewhere)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "tf32" and device.type == "cuda":
        return _tf32()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
