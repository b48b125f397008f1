"""The training loop, one piece of code for every family and every update rule.

The loop owns epochs, shuffling, minibatches, the device and precision, held-out evaluation,
early stopping with the best parameters kept, checkpoints, progress and resume. What happens
to a batch is an :class:`~pplvm.training.rules.UpdateRule` (an SVI step today; an EM step, a
GAN's two optimisers or a compiled step implement the same few methods), whose state travels
in the checkpoint beside the loop's.

Minibatches: the model's data plate has size ``num_data`` and each batch is its subsample, so
every data term is scaled by ``num_data / batch`` and the loss is an unbiased estimate of the
full-data loss.

Data-parallel training (:mod:`pplvm.training.distributed`): with ``world_size`` processes, every
process draws the same shuffle and takes its shard ``idx[rank::world_size]`` of each global
batch, keeping the global ``num_data`` in the plate; the rule's
:meth:`~pplvm.training.rules.UpdateRule.distribute` makes the update agree across processes (DDP for gradient rules), so
parameters stay equal to a single process's on the same global batches. The epoch's loss is
summed over processes and held-out metrics are rank 0's on every process, so early stopping
and every other decision of the loop are the same everywhere; only rank 0 writes checkpoints
and metrics. Each process samples from its own seed (its own particles); checkpoints keep
every process's RNG state, and a run trained on several processes resumes on any number.

``augment(batch, generator)`` redraws each training batch (e.g. dynamic binarization,
:mod:`pplvm.data.images`) from the trainer's own generator, which checkpoints carry so a
resumed run draws what an uninterrupted one would. Held-out evaluation does not augment.

Networks run in ``.train()`` during the epoch's steps and in ``.eval()`` for the held-out
evaluation (and for the rule's set-up call), their mode given back after (:mod:`pplvm._modes`).

Cost per epoch is constant: the metric history is appended to ``metrics.jsonl`` (not stored in
checkpoints), and checkpoints are written every ``checkpoint_every`` epochs, or, when that is
unset, at most every ``checkpoint_seconds`` (inside an epoch too, on one process) — always
after the first and the last epoch, and when training stops early. A crash leaves the last
checkpoint written, and a checkpoint written inside an epoch resumes there exactly.

What a checkpoint holds is :mod:`._trainer_state`; how the loop stops short (early stopping,
divergence, a lost process) is :mod:`._trainer_stops`; budgets (``max_steps``,
``max_minutes``) and checkpoints inside an epoch are :mod:`._budget`; the moving average of the
weights (``training.ema``) is :mod:`._ema`; the lr warm-up is the optimiser's (:mod:`._warmup`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Literal, Sequence

import pyro
import torch

from .. import _signals
from .._modes import evaluated, evaluating, training
from .._progress import progress
from ..errors import TrainingError
from ..sections import TrainingConfig
from ..tracking import Tracking
from . import _budget, _trainer_state, distributed
from ._budget import Budget, budget_reached
from ._ema import EMA, held_out
from ._trainer_state import TrainState, _host, checkpoint_due, logged_epochs, read_history  # noqa: F401
from ._trainer_stops import _first_line, _is_support_error, collectives, diverged, early_stopping, halt, use_kept
from .checkpoint import load_checkpoint, save_checkpoint
from .devices import precision_context, resolve_device, to_device  # noqa: F401  (re-exported)
from .distributed import DataParallel
from .rules import UpdateRule

log = logging.getLogger("pplvm")
Callback = Callable[["Trainer", dict[str, Any]], None]
#: ``augment(batch, generator) -> batch``: a fresh random view of a training batch
Augment = Callable[[Any, torch.Generator], Any]
#: rows per held-out evaluation chunk (at least one minibatch)
EVAL_ROWS = 1024


class Trainer:
    """Fit a model and guide by repeating ``rule.step`` over shuffled minibatches.

    :param rule: the :class:`~pplvm.training.rules.UpdateRule` applied to each batch.
    :param valid_metrics: optional ``f(valid) -> dict`` of extra held-out metrics
        (e.g. an exact log-likelihood), logged beside ``valid_loss``.
    :param extras: tensors saved with every checkpoint (e.g. the data transform).
    :param monitor: the held-out metric early stopping and "best parameters" follow: a loss
        (lower is better) or a ``*log_likelihood`` (higher is better); with ``training.ema``,
        its value at the EMA weights (``monitor + "_ema"``), the weights the run is used with.
    :param callbacks: each called as ``cb(trainer, record)`` after every epoch (one may end the fit: :meth:`stop`).
    :param augment: optional per-batch redraw of the training data (see :data:`Augment`).
    :param rank: this process's rank among ``world_size`` data-parallel processes (whose
        process group :func:`~pplvm.training.distributed.init_from_env` has started).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        rule: UpdateRule,
        config: TrainingConfig,
        *,
        run_dir: str | Path | None = None,
        valid_metrics: Callable[[Any], dict[str, float]] | None = None,
        extras: dict[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        monitor: str = "valid_loss",
        augment: Augment | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.model, self.guide, self.rule, self.config = model, guide, rule, config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.valid_metrics = valid_metrics
        self.extras = extras or {}
        self.callbacks = list(callbacks)
        self.monitor = f"{monitor}_ema" if config.ema is not None else monitor
        self.augment = augment
        self.augment_rng = torch.Generator().manual_seed(config.seed + 1)
        self.rank, self.world_size = rank, world_size
        # one GPU per process when several train: LOCAL_RANK's
        self.device = resolve_device(
            config.device, local_rank=distributed.context().local_rank if world_size > 1 else None
        )
        self._dp: DataParallel | None = None
        self._rng_ranks: torch.Tensor | None = None  # every process's RNG state, (world_size, S)
        self.state = TrainState()
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self._ready = False
        self._restored = False  # loaded from a checkpoint: its RNG states stand, no fresh seed
        self._best_params: dict[str, Any] | None = None
        self._last_save = -math.inf
        self.ema: EMA | None = None  # training.ema's averages (made by setup)
        self.budget = Budget(config)
        #: which parameters the fit is used with: the best held-out ones, or (a budget stop's
        #: last evaluation beat them) the last
        self.kept: Literal["best", "last"] = "best"
        self._epoch_start: torch.Tensor | None = None  # the shuffle's state before this epoch's draw
        self._epoch_loss: torch.Tensor | None = None  # this epoch's running loss (a resume's: from its checkpoint)
        self.tracking = Tracking()  # the trackers each record is mirrored to (pplvm.tracking; set by the facade)

    # ------------------------------------------------------------------ set-up
    @property
    def checkpoint_path(self) -> Path | None:
        """``<run_dir>/checkpoint.pt``, or None when training writes no run directory."""
        return self.run_dir / "checkpoint.pt" if self.run_dir is not None else None

    def setup(self, train) -> None:
        """Create the rule's parameters and optimisers (once)."""
        if not self._ready:
            bs = self._batch_size(len(train))
            if bs < self.world_size:
                raise TrainingError(
                    f"training.batch_size = {bs} (with {len(train)} training data) is smaller "
                    f"than the {self.world_size} processes: each needs a share of every batch"
                )
            example = to_device(train[:bs], self.device)
            with evaluating(self.model, self.guide):  # parameters made on a first call, not a step
                self.rule.setup(example, len(train))
            if self.world_size > 1:
                if distributed.world_size() != self.world_size:
                    raise TrainingError(
                        f"world_size = {self.world_size} but this process is in a process group "
                        f"of {distributed.world_size()}: start it with torchrun "
                        "(pplvm.training.distributed.init_from_env)"
                    )
                self._dp = DataParallel(self.device)
                self.rule.distribute(self._dp)
            if self.config.ema is not None:
                self.ema = EMA({"model": self.model, "guide": self.guide}, self.config.ema, self.config.ema_warmup)
            self._ready = True

    def _batch_size(self, n: int) -> int:
        return min(self.config.batch_size or n, n)

    def _batches(self, perm: torch.Tensor) -> list[torch.Tensor]:
        """One epoch's global batches of ``perm``'s rows; with several processes, a last batch
        with fewer rows than processes joins the batch before (each process needs a row)."""
        batches = list(perm.split(self._batch_size(len(perm))))
        if len(batches) > 1 and len(batches[-1]) < self.world_size:
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything resuming needs: parameters, rule state, RNG streams, best parameters (host tensors)."""
        return _trainer_state.state_dict(self)

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a checkpoint), so training continues from it."""
        _trainer_state.load_state_dict(self, ckpt)
        self._restored = True

    def save(self) -> None:
        """Write :meth:`state_dict` to :attr:`checkpoint_path` (rank 0 only; nothing without a run directory)."""
        if self.checkpoint_path is not None and self.rank == 0:
            save_checkpoint(self.checkpoint_path, self.state_dict())
            self._last_save = time.monotonic()

    def resume(self, train) -> None:
        """Continue from the run directory's last checkpoint; metrics logged after it are dropped."""
        self.setup(train)
        self.load_state_dict(ckpt := load_checkpoint(self.checkpoint_path))
        if self.rank == 0:  # the writer keeps the history (other processes only train)
            self.state.history = _trainer_state.rewrite_history(self.run_dir, logged_epochs(ckpt))

    def _checkpoint_due(self) -> bool:
        return checkpoint_due(self.config, self.state, self._last_save)

    # ------------------------------------------------------------------ the loop
    def fit(self, train, valid=None) -> TrainState:
        """Train until ``config.epochs`` are done, early stopping fires or a budget runs out; return the state."""
        c, n = self.config, len(train)
        if self.state.epoch == 0 and not self._restored:  # (the epoch-0 checkpoint's RNG state stands)
            pyro.set_rng_seed(distributed.rank_seed(c.seed, self.rank))
        self.setup(train)
        if self.device.type == "cuda":  # host batches copy to the GPU without blocking
            train = train.pin_memory()
        if self.state.epoch == 0 and self.checkpoint_path is not None:
            with self._collectives():
                self._sync_rng_states()
            self.save()  # a good checkpoint exists before the first step
        steps, s = len(self._batches(torch.arange(n))), self.state
        bar = progress(
            c.epochs * steps,
            "training",
            initial=s.epoch * steps + s.position,
            unit="steps",
            enabled=c.progress and self.rank == 0,
        )
        left = (c.epochs - s.epoch) * steps - s.position
        self.rule.plan(left if c.max_steps is None else max(0, min(left, c.max_steps - s.step)))
        self.budget.start()
        if s.epoch < c.epochs and not s.stopped and (why := self.budget.reached(s.step)):
            _budget.stop(self, why, {})  # (a resume of a run at its max_steps: nothing to train)
        try:
            first, start = True, time.perf_counter()
            while s.epoch < c.epochs and not s.stopped:
                with self._collectives(), training(self.model, self.guide):  # held-out evaluation: .eval()
                    metrics = self._epoch(train, valid, bar, first)
                if first and self.rank == 0:
                    log.info("first epoch in %.1f s; the step: %s", time.perf_counter() - start, self.rule.describe())
                first = False
                for cb in self.callbacks:
                    cb(self, metrics)
        finally:
            bar.close()
        use_kept(self)  # the weights the run is evaluated and sampled with
        return self.state

    def _epoch(self, train, valid, bar, first: bool) -> dict[str, Any]:
        c, s, n = self.config, self.state, len(train)
        self._epoch_start = self.shuffle.get_state()  # a checkpoint inside the epoch draws it again
        batches = self._batches(torch.randperm(n, generator=self.shuffle))  # the same on every process
        steps, begin = len(batches), s.position  # (a resume inside an epoch: its steps done)
        total = torch.zeros((), device=self.device)
        if begin:
            total += self._epoch_loss.to(self.device) if self._epoch_loss is not None else 0.0
        self._epoch_loss = total  # (updated in place)
        # one host sync per step on CPU; on a GPU the finiteness of the losses is gathered on
        # the device and checked once per epoch (the checkpoint is only written after that);
        # several processes check once per epoch together, so they stop together
        check_each_step = (self.device.type == "cpu" or first) and self.world_size == 1
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for i in range(begin, steps):
            idx = batches[i]
            _signals.check()  # a Ctrl-C that something swallowed stops the loop here
            shard = idx[self.rank :: self.world_size]
            if self.augment is None:
                batch = train[shard]
            else:  # the global batch's draw, so a datum's view does not depend on the process count
                batch = self.augment(train[idx], self.augment_rng)[self.rank :: self.world_size]
            if self._dp is not None:
                self._dp.share(len(shard), len(idx))
            batch = to_device(batch, self.device, non_blocking=True)
            try:
                with self._validation(first=i == begin and first), precision_context(c.precision, self.device):
                    loss = self.rule.step(batch, n, s.epoch + (i + 1) / steps)
            except ValueError as err:
                # Pyro's validation rejects NaN (or out-of-support) distribution parameters
                # before the loss can be NaN
                if not self._parameters_finite():
                    self._diverged("parameters became non-finite")
                if not _is_support_error(err):
                    raise
                self._diverged(f"parameters left the model's valid range ({_first_line(err)})")
            if check_each_step:
                if not torch.isfinite(loss):
                    self._diverged(f"loss became {float(loss)}", batch=batch, num_data=n)
            else:
                finite &= torch.isfinite(loss)
            total += loss * len(shard) / n
            s.step, s.position = s.step + 1, i + 1
            if self.ema is not None:
                self.ema.update(s.step)
            bar.update(1)
            if i + 1 < steps and (why := budget_reached(self)):
                self._finite(finite)
                return _budget.pause_mid_epoch(self, valid, total, sum(len(b) for b in batches[: i + 1]), why)
            if i + 1 < steps and _budget.checkpoint_in_epoch_due(self):
                self._finite(finite)
                self.save()
        if self.world_size > 1:  # the global batches' loss (Σ_r B_r L_r / n), and anyone's non-finite one
            total, bad = distributed.all_reduce_sum([total, (~finite).to(total.dtype)])
            finite = bad == 0
        self._finite(finite)
        s.epoch, s.position = s.epoch + 1, 0
        metrics: dict[str, Any] = {
            "epoch": s.epoch,
            "step": s.step,
            **self.rule.end_epoch(s.epoch),
            "train_loss": float(total) / n,
        }
        if valid is not None and (s.epoch % c.eval_every == 0 or s.epoch == c.epochs):
            try:
                metrics.update(self._agreed(held_out(self, valid)))
            except ValueError as err:
                if not _is_support_error(err):
                    raise
                self._diverged(f"parameters left the model's valid range ({_first_line(err)})", epoch_done=True)
            value = metrics[self.monitor]
            if not math.isfinite(value):
                self._diverged(f"held-out {self.monitor} became {value}", epoch_done=True)
            self._early_stopping(-value if self.monitor.endswith("log_likelihood") else value)
        s.stopped = s.stopped or self.rule.stop_reason() or ""
        if not s.stopped and s.epoch < c.epochs and (why := budget_reached(self)):
            if self.monitor not in metrics:  # the epoch had no evaluation: the last one
                _budget.stop_evaluation(self, valid, metrics)
            _budget.stop(self, why, metrics)
        elif s.stopped:
            metrics["stopped"] = s.stopped
        _budget.record(self, metrics)
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k.endswith(("loss", "likelihood"))})
        self._sync_rng_states()
        if self._checkpoint_due():  # rank 0 alone decides (by the clock) and writes
            self.save()
        return metrics

    @torch.no_grad()
    @evaluated  # the networks in .eval(), their training mode given back after
    def evaluate(self, data) -> dict[str, float]:
        """Held-out loss (negative objective per datum) and any extra metrics."""
        out = {}
        n = len(data)
        chunks = torch.arange(n).split(max(self._batch_size(n), EVAL_ROWS))
        with precision_context(self.config.precision, self.device):
            losses = [self.rule.held_out_loss(to_device(data[idx], self.device), n) for idx in chunks]
        if losses and losses[0] is not None:
            out["valid_loss"] = float(sum(losses) / len(losses)) / n
        if self.valid_metrics is not None:
            out.update(self.valid_metrics(data))
        return out

    def _agreed(self, metrics: dict[str, float]) -> dict[str, float]:
        """Rank 0's ``metrics`` on every process (Monte-Carlo estimates differ between
        processes; the decisions taken on them must not)."""
        if self.world_size == 1 or not metrics:
            return metrics
        keys = list(metrics)  # the same order on every process (the same code made them)
        values = distributed.broadcast(torch.tensor([metrics[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, values.tolist()))

    def _sync_rng_states(self) -> None:
        """Gather every process's torch RNG state for the next checkpoint (several processes)."""
        if self.world_size > 1:
            self._rng_ranks = distributed.all_gather(torch.get_rng_state())

    def _collectives(self) -> ContextManager:
        """Turn a failed collective (another process died or went silent) into one line that
        names the last good checkpoint."""
        return collectives(self)

    def _validation(self, first: bool) -> ContextManager:
        """Pyro's argument and support checks cost ~10% of a small network's step; by default
        they run on the first step of a fit only (the data and shapes do not change after it;
        a diverging step still shows as a non-finite loss)."""
        if first or self.config.pyro_validation == "every_step":
            return contextlib.nullcontext()
        return pyro.validation_enabled(False)

    def stop(self, why: str, record: dict[str, Any]) -> None:
        """Stop after this epoch, from a callback given its ``record`` (e.g. a sweep's pruner)."""
        halt(self, why, record)

    def _early_stopping(self, value: float) -> None:
        early_stopping(self, value)

    def _finite(self, finite: torch.Tensor) -> None:
        """Stop if this epoch's losses (``finite``: all were, gathered on the device) or the
        parameters became non-finite (a huge step can leave a finite loss and inf parameters)."""
        if not bool(finite):
            self._diverged("loss became non-finite")
        if not self._parameters_finite():
            self._diverged("parameters became non-finite")

    def _parameters_finite(self) -> bool:
        params = [p.detach() for p in self.rule.parameters()]
        return not params or bool(torch.stack([torch.isfinite(p).all() for p in params]).all())

    def _diverged(self, what: str, epoch_done: bool = False, batch=None, num_data: int | None = None) -> None:
        diverged(self, what, epoch_done, batch, num_data)
