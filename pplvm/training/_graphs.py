"""Pieces of the compiled SVI step (:mod:`.compiled`): a traced graph replayed as a CUDA graph,
the RNG state a trace or a warm-up call rewinds, what tracing runs without (host reads), and the
one line that says why a step could not be traced."""

from __future__ import annotations

import contextlib
import sys
import unittest.mock
from typing import Callable

import torch

from .._targets import at
from ._traceable import traceable


def _identity(value, *args, **kwargs):
    return value


@contextlib.contextmanager
def _no_host_reads():
    """While tracing: Pyro's and pplvm's objectives read their loss back to the host only to
    report it (``torch_item``) or warn (``warn_if_nan``); inside a graph those stay tensors.
    TraceEnum_ELBO's one branch on a value becomes a select (:mod:`._traceable`)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(traceable())
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(("pyro.infer", "pplvm.objectives")):
                continue
            for attr in ("torch_item", "warn_if_nan"):
                if callable(getattr(module, attr, None)):
                    stack.enter_context(unittest.mock.patch.object(module, attr, _identity))
        yield


class _CudaGraph:
    """A traced step replayed as one CUDA graph: inputs are copied into static buffers, the
    outputs are the graph's static outputs (read before the next step)."""

    def __init__(self, fn: Callable, params: list[torch.Tensor], tensors):
        self.fn, self.size = fn, getattr(fn, "size", 0)
        self.static = [t.clone() for t in tensors]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm-up on a side stream, as CUDA graph capture requires
                fn(params, self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = fn(params, self.static)

    def __call__(self, params, tensors):
        for s, t in zip(self.static, tensors):
            s.copy_(t, non_blocking=True)
        self.graph.replay()
        return [o.clone() for o in self.out]


def _rng_state() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def _data_dependent(err: BaseException) -> str:
    """Why tracing refused the step, in full, in one line, and where the user's code did it."""
    text = str(err).strip().splitlines()
    if "_local_scalar_dense" in str(err) or "data-dependent" in str(err):
        why = "the model or guide reads a tensor's value on the host (float(t), t.item(), a Python `if` on a tensor)"
    else:
        why = text[0] if text else type(err).__name__
    return f"{why}{at(err)}"
