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

What ``training.compile = "auto"`` (the default) runs, each choice stated in one log line:

- a fit of fewer than :data:`AUTO_MIN_STEPS` steps: the plain step (a trace would not pay);
- otherwise the traced graph from the second step; on CUDA replayed as a CUDA graph;
- on a CPU (one process), after :data:`TIMED_STEPS` traced steps: inductor, where its expected
  saving (:data:`INDUCTOR_GAIN` of a traced step and :data:`DISPATCH_SECONDS` per operation, over
  the steps left) is twice its expected
  compile time (:func:`inductor_seconds`); after as many inductor steps, the faster of the two
  runs on. The choice is kept in checkpoints, so a resumed fit runs the same numbers. Inductor
  fuses operations, so its numbers equal the traced graph's to float rounding, not bit for bit;
  ``"trace"`` repeats a fit exactly.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from typing import Any, Callable

import torch
from pyro.poutine.util import is_validation_enabled

from ..data.base import Batch
from ._graphs import _CudaGraph, _data_dependent, _no_host_reads, _rng_state, _set_rng_state
from .distributed import DataParallel
from .rules import SVIStep, clip_gradients

log = logging.getLogger("pplvm")
#: distinct batch signatures (shapes) traced before falling back (full and last minibatch: 2)
MAX_GRAPHS = 4
#: under ``auto``: a fit of fewer steps runs plain (a trace costs about as much as this many
#: plain steps of a small network: a short fit never pays for it); when the rule is not told the
#: fit's length (:meth:`CompiledSVIStep.plan`), it traces after this many plain steps
AUTO_MIN_STEPS = 200
#: under ``auto``, on a CPU: traced steps timed before deciding on inductor, and again after it
TIMED_STEPS = 20
#: inductor's expected saving on a traced step: this share of it (fused elementwise work:
#: measured 5–25% on the bench's VAE, IWAE, DReG), plus the Python dispatch of each operation
INDUCTOR_GAIN, DISPATCH_SECONDS = 0.15, 5e-6


def inductor_seconds(operations: int) -> float:
    """A cold inductor compile of a traced step, in seconds (measured on a 2-core CPU: 30 s
    for a VAE's 170 operations); auto compiles where the expected saving is twice this."""
    return 15.0 + 0.1 * operations


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
    (``training.compile``): ``"auto"`` (the module docstring says what it picks), ``"trace"``
    (traced from the second step), ``"inductor"`` (traced, then compiled by ``torch.compile``'s
    inductor, which fuses the elementwise work: tens of seconds of compilation, for long fits)."""

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
        self._planned: int | None = None  # the step count at the end of this fit (plan)
        self._inductor: bool | None = None  # auto's decision (kept in checkpoints)
        self._compiled: dict[tuple, Callable] = {}  # inductor's versions of the graphs
        self._timing: list[float] = []  # seconds of timed traced steps
        self._trial: dict[str, list[float]] | None = None  # seconds of each kind's steps, on trial
        self._on_inductor = False  # the step just taken ran inductor's graph
        self._compile_seconds = 0.0
        self._told = False  # auto's plain-step decision logged

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

    def plan(self, steps: int) -> None:
        self._planned = self._steps + steps

    def describe(self) -> str:
        if self.fallback is not None or not self._graphs:
            if self.fallback is not None:
                why = self.fallback
            elif self._planned is not None and self._planned < AUTO_MIN_STEPS and self.mode == "auto":
                why = f"{self._planned} steps, too few for a trace to pay"
            else:
                why = "traced from the second step"
            return f"Pyro's plain step (training.compile = {self.mode!r}: {why})"
        kind = "compiled by inductor" if self._inductor or self.mode == "inductor" else "a traced graph"
        return f"{kind} (training.compile = {self.mode!r})"

    def state_dict(self) -> dict[str, Any]:
        # the steps taken, so that a resumed fit switches to the graph at the same step, and
        # auto's choice of inductor, so that it runs the same numbers
        return {**super().state_dict(), "steps": self._steps, "inductor": self._inductor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._steps = int(state.get("steps", 0))  # (checkpoints written before it was kept: 0)
        self._inductor = state.get("inductor")

    # ------------------------------------------------------------------ stepping
    def step(self, batch, num_data: int, progress: float) -> torch.Tensor:
        self._steps += 1
        if self.fallback is not None or is_validation_enabled() or not self._tracing():
            return super().step(batch, num_data, progress)
        graph = self._graph(batch, num_data)
        if graph is None:
            return super().step(batch, num_data, progress)
        start = time.perf_counter()
        loss = self._apply(graph, batch)
        if self.mode == "auto" and self._inductor is None and self._dp is None and not _first_tensor(batch).is_cuda:
            self._time(time.perf_counter() - start, batch, num_data)
        return loss

    def _tracing(self) -> bool:
        """Whether this step runs a graph: always but under ``auto``, which traces from the
        second step of a fit of at least :data:`AUTO_MIN_STEPS` steps."""
        if self.mode != "auto":
            return True
        if self._planned is None:
            return self._steps > AUTO_MIN_STEPS
        if self._planned < AUTO_MIN_STEPS and not self._graphs:
            if not self._told:
                self._told = True
                log.info(
                    "training.compile = 'auto': Pyro's plain step runs: this fit has %d steps, too few for a "
                    "trace to pay back (training.compile = 'trace' traces it anyway)",
                    self._planned,
                )
            return False
        return True

    def _time(self, seconds: float, batch, num_data: int) -> None:
        """Under ``auto`` on one CPU process: after :data:`TIMED_STEPS` traced steps, compile
        with inductor where the expected saving over the steps left is twice the expected
        compile time, then run inductor's graph and the traced one in turn (so that both meet
        the same machine load) for as many steps each, and keep the faster."""
        if self._trial is None:
            self._timing.append(seconds)
            if len(self._timing) == TIMED_STEPS:
                self._consider_inductor(batch, num_data)
            return
        self._trial["inductor" if self._on_inductor else "trace"].append(seconds)
        if min(len(t) for t in self._trial.values()) < TIMED_STEPS:
            return
        fast, traced = (statistics.median(self._trial[k]) for k in ("inductor", "trace"))
        self._inductor, self._trial = fast < traced, None
        log.info(
            "training.compile = 'auto': inductor compiled the step in %.1f s and runs it in %.3g ms against "
            "%.3g ms traced: %s",
            self._compile_seconds,
            fast * 1e3,
            traced * 1e3,
            "inductor runs from now on" if self._inductor else "the traced graph runs on",
        )

    def _consider_inductor(self, batch, num_data: int) -> None:
        traced = statistics.median(self._timing)
        left = (self._planned or 0) - self._steps
        graph = self._graphs.get(self._signature(batch, num_data))
        operations = getattr(graph, "size", 0)
        cost = inductor_seconds(operations)
        if left * min(traced * INDUCTOR_GAIN + operations * DISPATCH_SECONDS, 0.8 * traced) < 2 * cost:
            self._inductor = False
            log.info(
                "training.compile = 'auto': the traced graph runs (%.3g ms a step; inductor's compile, about "
                "%.0f s, would not pay back over the %d steps left)",
                traced * 1e3,
                cost,
                left,
            )
            return
        start = time.perf_counter()
        self._trial = {"inductor": [], "trace": []}
        if self._graph(batch, num_data, warm=True) is None:
            self._inductor, self._trial = False, None
        self._compile_seconds = time.perf_counter() - start

    def _apply(self, graph: Callable, batch) -> torch.Tensor:
        """One optimiser step on the gradients ``graph`` computes; the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            loss, *grads = graph(self._params, _fields(batch)[1])
        for p, g in zip(self._params, grads):
            p.grad = g
        if self._dp is not None:
            self._dp.reduce_gradients(self._params)
        self.grad_norm = clip_gradients(self._params, self.config.clip_norm)
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

    def _graph(self, batch, num_data: int, warm: bool = False) -> Callable | None:
        """The graph for ``batch``'s signature (traced on first sight), or None (plain steps);
        inductor's version where the card asks for it or ``auto`` chose or is trying it."""
        key = self._signature(batch, num_data)
        graph = self._graphs[key] if key in self._graphs else self._new_graph(key, batch, num_data)
        trial = self._trial is not None and (warm or len(self._trial["inductor"]) <= len(self._trial["trace"]))
        self._on_inductor = graph is not None and (self.mode == "inductor" or bool(self._inductor) or trial)
        if not self._on_inductor:
            return graph
        if key not in self._compiled:
            self._compiled[key] = self._with_inductor(graph, batch)
        return self._compiled[key]

    def _new_graph(self, key: tuple, batch, num_data: int) -> Callable | None:
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
        size = graph.size
        if self.mode == "auto" and _first_tensor(batch).is_cuda:
            graph = _CudaGraph(graph, self._params, _fields(batch)[1])
        self._graphs[key] = graph
        log.info(
            "training.compile = %r: the step runs as a traced graph from step %d (traced in %.1f s, %d operations)",
            self.mode,
            self._steps,
            time.perf_counter() - start,
            size,
        )
        return graph

    def _with_inductor(self, graph: Callable, batch) -> Callable:
        """``graph`` compiled by inductor, now (a first call on ``batch``, its draws rewound);
        ``graph`` itself where inductor cannot compile it (e.g. no C++ compiler), with a line."""
        state = _rng_state()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch's own, on importing inductor
                import torch._inductor.config as inductor_config

                inductor_config.fallback_random = True  # the same random draws as the Pyro step
                compiled = torch.compile(graph, dynamic=False)
                compiled(self._params, _fields(batch)[1])
        except Exception as err:
            self._inductor, self._trial = False, None
            level = logging.WARNING if self.mode == "inductor" else logging.INFO
            why = (str(err).strip().splitlines() or [type(err).__name__])[0]
            log.log(
                level,
                "training.compile = %r: inductor cannot compile the step (%s): the traced graph runs",
                self.mode,
                why,
            )
            return graph
        finally:
            _set_rng_state(state)
        return compiled

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


def _first_tensor(batch) -> torch.Tensor:
    return _fields(batch)[1][0]
