"""A compiled SVI step: the Pyro objective traced once into a flat graph of tensor operations.

Pyro interprets a model and guide anew at every step (handlers, traces, plates, the ELBO's
bookkeeping), which on a small network costs as much as the network itself. For a family whose
structure does not change between steps, :class:`CompiledSVIStep` runs the objective once under
``make_fx`` with the trainable parameters and the batch as inputs, and records every tensor
operation of the loss *and* of its gradient (the backward pass is traced too). Later steps with
batches of the same shapes call that graph, ``graph(params, batch) -> (loss, *grads)``, without
running any Pyro code, then take the optimiser step. On CUDA the graph is additionally captured
as a CUDA graph (``training.compile = "auto"``), so a step is one replay.

Exactness: the graph holds the very operations the Pyro objective runs, random draws included
(they read the same global generator in the same order), so a step gives the same loss and
gradients as :class:`~pplvm.training.rules.SVIStep` — tested on every contract family.

What is not traced, and falls back to the plain Pyro step with one log line:

- a structure that depends on the data's values (a Python branch on a tensor, a host read such
  as ``.item()``: tracing refuses it);
- more than :data:`MAX_GRAPHS` batch signatures (e.g. sequences padded to each batch's longest);
- a per-step schedule (KL annealing changes a scale every step) — it runs plain.

The first step of a fit runs plain, with Pyro's validation on (as the trainer asks); tracing
runs with validation off, where the objective's host reads (``torch_item``, ``warn_if_nan``)
would only have reported numbers and are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import unittest.mock
from typing import Any, Callable

import torch
from pyro.poutine.util import is_validation_enabled

from .._targets import at
from ..data.base import Batch
from ._traceable import traceable
from .distributed import DataParallel
from .rules import SVIStep

log = logging.getLogger("pplvm")
#: distinct batch signatures (shapes) traced before falling back (full and last minibatch: 2)
MAX_GRAPHS = 4
#: under ``auto``, plain steps before tracing (about the cost of one trace on a small network:
#: a short fit never pays for it)
AUTO_AFTER_STEPS = 200


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


def _fields(batch) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    if isinstance(batch, Batch):
        items = batch.tensors()
        return tuple(items), tuple(items.values())
    return ("",), (batch,)


def _rebuild(names: tuple[str, ...], tensors) -> Any:
    return tensors[0] if names == ("",) else Batch.from_tensors(dict(zip(names, tensors)))


class CompiledSVIStep(SVIStep):
    """:class:`~pplvm.training.rules.SVIStep` whose steps run a traced flat graph of the
    objective and its gradient (see the module docstring); same arguments, plus ``mode``
    (``training.compile``): ``"auto"`` (traced after :data:`AUTO_AFTER_STEPS` plain steps; a
    CUDA graph on CUDA), ``"trace"`` (traced from the second step), ``"inductor"`` (traced,
    then compiled by ``torch.compile``'s inductor, which fuses the elementwise work: tens of
    seconds of compilation, for long fits)."""

    def __init__(self, *args, mode: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.mode = mode
        self._graphs: dict[tuple, Callable | None] = {}
        self.fallback: str | None = (
            "a per-step schedule (KL annealing) changes the objective" if self.schedule is not None else None
        )
        self._names: list[str] = []
        self._steps = 0
        self._dp: DataParallel | None = None  # several processes: traced gradients are all-reduced

    def setup(self, example, num_data: int) -> None:
        super().setup(example, num_data)
        trainable = {id(p) for p in self.optimizer.param_groups[0]["params"]}
        named = [(n, p) for n, p in self.loss_module.named_parameters() if id(p) in trainable]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._traced_module = self.loss_module  # what is traced, also once distribute wraps it in DDP

    def distribute(self, dp: DataParallel) -> None:
        super().distribute(dp)  # plain steps: DDP all-reduces in backward
        self._dp = dp

    def state_dict(self) -> dict[str, Any]:
        # the steps taken, so that a resumed fit switches to the graph at the same step
        return {**super().state_dict(), "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._steps = int(state.get("steps", 0))  # (checkpoints written before it was kept: 0)

    # ------------------------------------------------------------------ stepping
    def step(self, batch, num_data: int, progress: float) -> torch.Tensor:
        self._steps += 1
        if self.mode == "auto" and self._steps <= AUTO_AFTER_STEPS:
            return super().step(batch, num_data, progress)
        if self.fallback is not None or is_validation_enabled():
            return super().step(batch, num_data, progress)
        graph = self._graph(batch, num_data)
        if graph is None:
            return super().step(batch, num_data, progress)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            loss, *grads = graph(self._params, _fields(batch)[1])
        for p, g in zip(self._params, grads):
            p.grad = g
        if self._dp is not None:
            self._dp.reduce_gradients(self._params)
        if self.config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.config.clip_norm)
        self.optimizer.step()
        return loss

    def loss_and_grads(self, batch, num_data: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The traced graph's ``(loss, gradients)`` on ``batch`` (no update; for checks)."""
        graph = self._graph(batch, num_data)
        if graph is None:
            raise RuntimeError(f"no compiled graph: {self.fallback}")
        with torch.no_grad():
            loss, *grads = graph(self._params, _fields(batch)[1])
        return loss, grads

    # ------------------------------------------------------------------- tracing
    def _signature(self, batch, num_data: int) -> tuple:
        names, tensors = _fields(batch)
        autocast = tuple(torch.is_autocast_enabled(t) for t in ("cpu", "cuda"))
        return names, tuple((t.shape, t.dtype, t.device) for t in tensors), num_data, autocast

    def _graph(self, batch, num_data: int) -> Callable | None:
        key = self._signature(batch, num_data)
        if key in self._graphs:
            return self._graphs[key]
        if len(self._graphs) >= MAX_GRAPHS:
            self._fall_back(f"more than {MAX_GRAPHS} batch shapes (the structure changes with the data)")
            return None
        start = time.perf_counter()
        try:
            graph = self._trace(batch, num_data)
        except Exception as err:  # tracing refused a data-dependent structure
            self._fall_back(f"the step's structure depends on tensor values: {_data_dependent(err)}")
            return None
        if not self._agrees(graph, batch, num_data):
            self._fall_back(
                "the traced step's gradients differ from Pyro's on the same draws (the model reads "
                "a parameter outside the traced inputs, e.g. a cached transform)"
            )
            return None
        if self.mode == "inductor":
            import torch._inductor.config as inductor_config

            inductor_config.fallback_random = True  # the same random draws as the Pyro step
            graph = torch.compile(graph, dynamic=False)
        if self.mode == "auto" and graph is not None and _first_tensor(batch).is_cuda:
            graph = _CudaGraph(graph, self._params, _fields(batch)[1])
        self._graphs[key] = graph
        log.info(
            "training.compile: traced the step in %.1f s (%d operations)",
            time.perf_counter() - start,
            graph.size if hasattr(graph, "size") else 0,
        )
        return graph

    def _trace(self, batch, num_data: int) -> Callable:
        from torch.fx.experimental.proxy_tensor import make_fx

        names = _fields(batch)[0]
        loss_module, param_names = self._traced_module, self._names

        def loss_and_grads(params, tensors):
            with torch.enable_grad():
                loss = torch.func.functional_call(
                    loss_module, dict(zip(param_names, params)), (_rebuild(names, tensors),), {"num_data": num_data}
                )
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            return [loss.detach(), *(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))]

        inputs = [p.detach().requires_grad_(p.requires_grad) for p in self._params]
        rng = torch.get_rng_state(), (torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
        try:
            with _no_host_reads():
                gm = make_fx(loss_and_grads)(inputs, _fields(batch)[1])
        finally:  # tracing ran the objective once: its draws must not shift the run's RNG stream
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1])
        gm.graph.eliminate_dead_code()
        gm.recompile()
        gm.size = sum(1 for n in gm.graph.nodes if n.op == "call_function")
        return gm

    def _agrees(self, graph: Callable, batch, num_data: int) -> bool:
        """Once per trace: the graph's loss and gradients equal the Pyro objective's on the same
        random draws (to float32 rounding); the run's RNG stream is left as it was."""
        state = torch.get_rng_state(), (torch.cuda.get_rng_state() if torch.cuda.is_available() else None)

        def rewind():
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state(state[1])

        with torch.no_grad():
            loss, *grads = graph(self._params, _fields(batch)[1])
        rewind()
        ref = self.loss_module(batch, num_data=num_data)
        ref_grads = torch.autograd.grad(ref, self._params, allow_unused=True)
        rewind()
        pairs = [(loss, ref.detach())] + [
            (g, torch.zeros_like(g) if r is None else r) for g, r in zip(grads, ref_grads)
        ]
        return all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max()) if b.numel() else 1))
            for a, b in pairs
        )

    def _fall_back(self, why: str) -> None:
        """Run the plain step from now on; say why in one line where the card asked for a
        traced step (``"auto"`` traces only where it can: its fallback is silent, at INFO)."""
        self.fallback = why
        level = logging.INFO if self.mode == "auto" else logging.WARNING
        log.log(level, "training.compile = %r: running the plain Pyro step: %s", self.mode, why)


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


def _first_tensor(batch) -> torch.Tensor:
    return _fields(batch)[1][0]


def _data_dependent(err: BaseException) -> str:
    """Why tracing refused the step, in full, in one line, and where the user's code did it."""
    text = str(err).strip().splitlines()
    if "_local_scalar_dense" in str(err) or "data-dependent" in str(err):
        why = "the model or guide reads a tensor's value on the host (float(t), t.item(), a Python `if` on a tensor)"
    else:
        why = text[0] if text else type(err).__name__
    return f"{why}{at(err)}"
