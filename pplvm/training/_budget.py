"""Budgets of a fit (``training.max_steps``, ``training.max_minutes``) and what the loop of
:class:`~pplvm.training.trainer.Trainer` does when one runs out or a checkpoint falls due
inside an epoch.

Accounting. ``max_steps`` counts every step the run has taken, those before a resume
included: a run fitted with ``max_steps = K`` and resumed with ``max_steps = 2K`` takes K more.
``max_minutes`` is wall time per invocation — a fit, or each resume, has the whole budget (the
clock starts when the loop starts, after the run is built; held-out evaluations inside it
count) — which is what a user who races for 25 minutes expects. The budget is checked after
every step, so a fit stops at most one step after it runs out; the held-out evaluation and the
checkpoint that close it come after.

Stopping. A budget that runs out at an epoch's last step ends the epoch as usual; one that runs
out inside an epoch stops there. Either way the run is evaluated on held-out data (where the
epoch had no evaluation), the record in ``metrics.jsonl`` says why it stopped (``"stopped"``;
a mid-epoch record is ``"partial"``, its ``train_loss`` the mean over the batches done) and a
checkpoint is written that resumes exactly where the fit stopped: the epoch's shuffle, the
position in it, the running epoch loss and every RNG stream. That last evaluation runs with the
RNG streams set back after it, and counts toward neither early stopping nor the best
parameters kept for resuming, so a resumed run repeats an uninterrupted one; where it beats the
best so far, the run is used with the last parameters (``kept = "last"`` in the checkpoint).

With several processes, a budget stop is agreed (``max_minutes``: rank 0's clock, broadcast
each step) and may fall mid-epoch; a checkpoint that falls due by time (``checkpoint_seconds``)
waits for the epoch's end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Iterator

import torch

from . import distributed
from ._ema import held_out

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("pplvm")


class Budget:
    """When a fit under ``config`` must stop (see the module docstring); the clock starts at :meth:`start`."""

    def __init__(self, config):
        self.max_steps, self.minutes = config.max_steps, config.max_minutes
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self.started

    def reached(self, step: int) -> str | None:
        """Why the fit stops after step ``step`` (the run's total), or None."""
        if self.max_steps is not None and step >= self.max_steps:
            return f"training.max_steps = {self.max_steps} reached"
        if self.minutes is not None and self.seconds() >= 60 * self.minutes:
            return f"training.max_minutes = {self.minutes:g} reached ({self.seconds():.1f} s of training)"
        return None


def budget_reached(trainer: Trainer) -> str | None:
    """:meth:`Budget.reached` after the step just taken, agreed by every process."""
    why = trainer.budget.reached(trainer.state.step)
    if trainer.world_size == 1 or trainer.budget.minutes is None:
        return why  # max_steps counts the same steps everywhere
    flag = distributed.broadcast(torch.tensor([why is not None], dtype=torch.float64))
    return (why or "training.max_minutes reached (rank 0's clock)") if bool(flag[0]) else None


@contextlib.contextmanager
def rng_kept(device: torch.device) -> Iterator[None]:
    """Within: anything may draw; after: the torch RNG streams are as they were before."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type="cuda"):
        yield


def stop_evaluation(trainer: Trainer, valid, metrics: dict[str, Any]) -> None:
    """The held-out evaluation that closes a budget stop (added to ``metrics``): it draws
    without moving the RNG streams, and where it beats the best value so far the run is used
    with the last parameters."""
    if valid is None:
        return
    with rng_kept(trainer.device):
        metrics.update(trainer._agreed(held_out(trainer, valid)))
    value = metrics.get(trainer.monitor, math.nan)
    value = -value if trainer.monitor.endswith("log_likelihood") else value
    if math.isfinite(value) and value < trainer.state.best - trainer.config.min_delta:
        trainer.kept = "last"


def stop(trainer: Trainer, why: str, metrics: dict[str, Any]) -> None:
    """Mark the run stopped by a budget (a resume clears it) and say so in ``metrics`` and the log."""
    s = trainer.state
    s.stopped, s.paused, metrics["stopped"] = why, True, why
    if trainer.rank == 0:
        where = f"in epoch {s.epoch + 1} ({s.position} of its steps)" if s.position else f"after epoch {s.epoch}"
        kept = f"; continue with: pplvm resume {trainer.run_dir}" if trainer.run_dir is not None else ""
        log.info("training stopped at step %d %s: %s%s", s.step, where, why, kept)


def pause_mid_epoch(trainer: Trainer, valid, total: torch.Tensor, rows: int, why: str) -> dict[str, Any]:
    """Stop inside an epoch after ``rows`` of its rows (``total``: this process's running
    epoch loss): the last held-out evaluation, a partial record, a checkpoint to resume from."""
    s = trainer.state
    if trainer.world_size > 1:  # the checkpoint keeps the processes' sum (rank 0 resumes with it)
        total = distributed.all_reduce_sum([total.clone()])[0]
        trainer._epoch_loss = total
    metrics: dict[str, Any] = {"epoch": s.epoch + 1, "step": s.step, "partial": True, "train_loss": float(total) / rows}
    stop_evaluation(trainer, valid, metrics)
    stop(trainer, why, metrics)
    record(trainer, metrics)
    trainer._sync_rng_states()
    trainer.save()
    return metrics


def record(trainer: Trainer, metrics: dict[str, Any]) -> None:
    """Append ``metrics`` to the history and (rank 0) to ``metrics.jsonl``, in place of the
    partial record a budget stop left (a resumed fit's first record)."""
    history, path = trainer.state.history, trainer.run_dir / "metrics.jsonl" if trainer.run_dir else None
    if history and history[-1].get("partial"):
        history.pop()
        if path is not None and trainer.rank == 0:
            path.write_text("".join(json.dumps(m) + "\n" for m in history))
    history.append(metrics)
    if path is not None and trainer.rank == 0:
        with open(path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        trainer.tracking.record(trainer, metrics)  # its mirrors (TensorBoard, MLflow): rank 0's, as the file


def checkpoint_in_epoch_due(trainer: Trainer) -> bool:
    """Whether a checkpoint falls due by time inside an epoch (one process, no checkpoint_every)."""
    c = trainer.config
    return (
        trainer.world_size == 1
        and c.checkpoint_every is None
        and trainer.checkpoint_path is not None
        and time.monotonic() - trainer._last_save >= c.checkpoint_seconds
    )
