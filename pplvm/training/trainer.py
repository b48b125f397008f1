"""SVI training with a torch optimiser over a (model, guide) pair.

The loop is the plain PyTorch one over Pyro's ``ELBOModule`` (``elbo(model, guide)``), so the
loss module can be wrapped in ``torch.nn.parallel.DistributedDataParallel`` and each rank fed
its shard of every minibatch (``rank`` / ``world_size``) without changing the loop. Only rank 0
writes checkpoints and metrics.

Minibatches: the model's data plate has size ``num_data`` and each batch is its subsample, so
every data term is scaled by ``num_data / batch`` and the loss is an unbiased estimate of the
full-data loss.

Two optional per-step hooks keep the loop general: ``schedule(progress)`` returns a Pyro
handler entered around each training step (e.g. KL annealing, :mod:`pplvm.objectives.annealing`)
with ``progress`` the epochs done so far, and ``augment(batch, generator)`` redraws each
training batch (e.g. dynamic binarization, :mod:`pplvm.data.images`) from the trainer's own
generator, which checkpoints carry so a resumed run draws what an uninterrupted one would.
Held-out evaluation uses neither.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol, Sequence

import pyro
import torch
from pyro.infer import ELBO
from tqdm import tqdm  # plain text bar: works in terminals, logs and notebooks alike

from ..config import TrainingConfig
from ..errors import TrainingError
from .checkpoint import load_checkpoint, save_checkpoint

Callback = Callable[["Trainer", dict[str, Any]], None]
#: ``augment(batch, generator) -> batch``: a fresh random view of a training batch
Augment = Callable[[Any, torch.Generator], Any]


class Schedule(Protocol):
    """A per-step modification of the objective as training progresses."""

    def __call__(self, progress: float) -> ContextManager:
        """The Pyro handler to enter around a step taken at ``progress`` epochs."""

    def values(self, progress: float) -> dict[str, float]:
        """Numbers to log with each epoch's metrics."""


@dataclass
class TrainState:
    """Everything besides parameters that resuming needs."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float = math.inf  # best monitored held-out value, as a loss (lower is better)
    best_epoch: int = 0
    bad_epochs: int = 0  # evaluations since the best one
    stopped: str = ""  # why training ended early, if it did
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Fit ``guide`` (and any parameters of ``model``) by minimising ``objective``.

    :param valid_metrics: optional ``f(valid) -> dict`` of extra held-out metrics
        (e.g. an exact log-likelihood), logged beside ``valid_loss``.
    :param extras: tensors saved with every checkpoint (e.g. the data transform).
    :param monitor: the held-out metric early stopping and "best parameters" follow: a loss
        (lower is better) or a ``*log_likelihood`` (higher is better).
    :param held_out_loss: whether the guide can score held-out data (False for guides with
        parameters per training datum); else only ``valid_metrics`` are logged.
    :param schedule: optional per-step handler factory (see :class:`Schedule`).
    :param augment: optional per-batch redraw of the training data (see :data:`Augment`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        objective: ELBO,
        config: TrainingConfig,
        *,
        run_dir: str | Path | None = None,
        valid_metrics: Callable[[torch.Tensor], dict[str, float]] | None = None,
        extras: dict[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        monitor: str = "valid_loss",
        held_out_loss: bool = True,
        schedule: Schedule | None = None,
        augment: Augment | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.model, self.guide, self.config = model, guide, config
        self.loss_module = objective(model, guide)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.valid_metrics = valid_metrics
        self.extras = extras or {}
        self.callbacks = list(callbacks)
        self.monitor, self.held_out_loss = monitor, held_out_loss
        self.schedule, self.augment = schedule, augment
        self.augment_rng = torch.Generator().manual_seed(config.seed + 1)
        self.rank, self.world_size = rank, world_size
        self.state = TrainState()
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._best_params: dict[str, Any] | None = None

    # ------------------------------------------------------------------ set-up
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoint.pt" if self.run_dir is not None else None

    def setup(self, train: torch.Tensor) -> None:
        """Create the guide's parameters (autoguides make them on first call) and the optimiser."""
        if self.optimizer is not None:
            return
        with torch.no_grad():
            self.guide(train[: self._batch_size(len(train))], num_data=len(train))
        params = [p for p in self.loss_module.parameters() if p.requires_grad]
        c = self.config
        opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                   "rmsprop": torch.optim.RMSprop}[c.optimizer]
        self.optimizer = opt_cls(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.lr_schedule == "exponential":
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(
                self.optimizer, gamma=c.lr_final_ratio ** (1.0 / c.epochs))
        elif c.lr_schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=c.epochs, eta_min=c.lr * c.lr_final_ratio)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    def _batch_size(self, n: int) -> int:
        return min(self.config.batch_size or n, n)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "trainer": asdict(self.state),
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                    "augment": self.augment_rng.get_state()},
            "best": self._best_params,
            "extras": self.extras,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.guide.load_state_dict(ckpt["guide"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(**ckpt["trainer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.shuffle.set_state(ckpt["rng"]["shuffle"])
        if "augment" in ckpt["rng"]:
            self.augment_rng.set_state(ckpt["rng"]["augment"])
        self._best_params = ckpt.get("best")

    def save(self) -> None:
        if self.checkpoint_path is not None and self.rank == 0:
            save_checkpoint(self.checkpoint_path, self.state_dict())

    def resume(self, train: torch.Tensor) -> None:
        """Continue from the run directory's last checkpoint."""
        self.setup(train)
        self.load_state_dict(load_checkpoint(self.checkpoint_path))
        if self.run_dir is not None and self.rank == 0:  # drop metrics logged after that checkpoint
            path = self.run_dir / "metrics.jsonl"
            path.write_text("".join(json.dumps(m) + "\n" for m in self.state.history))

    # ------------------------------------------------------------------ the loop
    def fit(self, train: torch.Tensor, valid: torch.Tensor | None = None) -> TrainState:
        """Train until ``config.epochs`` are done or early stopping fires; return the state."""
        c, n = self.config, len(train)
        if self.state.epoch == 0 and not self.state.history:
            pyro.set_rng_seed(c.seed)
        self.setup(train)
        if self.state.epoch == 0 and self.checkpoint_path is not None:
            self.save()  # a good checkpoint exists before the first step
        bs = self._batch_size(n)
        steps = math.ceil(n / bs)
        bar = tqdm(total=c.epochs * steps, initial=self.state.epoch * steps, unit="step",
                   disable=not c.progress or self.rank != 0, leave=False, dynamic_ncols=True)
        try:
            first = True
            while self.state.epoch < c.epochs and not self.state.stopped:
                metrics = self._epoch(train, valid, bs, bar, first)
                first = False
                for cb in self.callbacks:
                    cb(self, metrics)
        finally:
            bar.close()
        if self._best_params is not None:
            self.model.load_state_dict(self._best_params["model"])
            self.guide.load_state_dict(self._best_params["guide"])
        return self.state

    def _epoch(self, train, valid, bs, bar, first: bool) -> dict[str, Any]:
        c, s, n = self.config, self.state, len(train)
        perm = torch.randperm(n, generator=self.shuffle)
        total = torch.zeros(())
        steps = math.ceil(n / bs)
        for i, idx in enumerate(perm.split(bs)):
            idx = idx[self.rank :: self.world_size]
            batch = train[idx] if self.augment is None else self.augment(train[idx], self.augment_rng)
            self.optimizer.zero_grad(set_to_none=True)
            try:
                with self._scheduled(s.epoch + (i + 1) / steps), self._validation(first=i == 0 and first):
                    loss = self.loss_module(batch, num_data=n)
            except ValueError:
                # Pyro's validation rejects NaN distribution parameters before the loss can be NaN
                if self._parameters_finite():
                    raise
                self._diverged("parameters became non-finite")
            if not torch.isfinite(loss):
                self._diverged(f"loss became {float(loss.detach())}")
            loss.backward()
            if c.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], c.clip_norm)
            self.optimizer.step()
            total += loss.detach() * len(idx) / n
            s.step += 1
            bar.update(1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        s.epoch += 1
        metrics: dict[str, Any] = {"epoch": s.epoch, "step": s.step, "lr": lr, "train_loss": float(total) / n}
        if self.schedule is not None:
            metrics.update(self.schedule.values(s.epoch))
        if valid is not None and (s.epoch % c.eval_every == 0 or s.epoch == c.epochs):
            metrics.update(self.evaluate(valid))
            value = metrics[self.monitor]
            self._early_stopping(-value if self.monitor.endswith("log_likelihood") else value)
        s.history.append(metrics)
        bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k.endswith(("loss", "likelihood"))})
        if s.epoch % c.checkpoint_every == 0 or s.epoch == c.epochs or s.stopped:
            self.save()
        if self.run_dir is not None and self.rank == 0:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        return metrics

    @torch.no_grad()
    def evaluate(self, data: torch.Tensor) -> dict[str, float]:
        """Held-out loss (negative objective per datum) and any extra metrics."""
        out = {}
        if self.held_out_loss:
            n, bs = len(data), self._batch_size(len(data))
            chunks = [data[idx] for idx in torch.arange(n).split(max(bs, 1024))]
            elbo = self.loss_module.elbo
            loss = sum(elbo.loss(self.model, self.guide, chunk, num_data=n) for chunk in chunks) / len(chunks)
            out["valid_loss"] = float(loss) / n
        if self.valid_metrics is not None:
            out.update(self.valid_metrics(data))
        return out

    def _scheduled(self, progress: float) -> ContextManager:
        return self.schedule(progress) if self.schedule is not None else contextlib.nullcontext()

    def _validation(self, first: bool) -> ContextManager:
        """Pyro's argument and support checks cost ~10% of a small network's step; by default
        they run on the first step of a fit only (the data and shapes do not change after it;
        a diverging step still shows as a non-finite loss)."""
        if first or self.config.pyro_validation == "every_step":
            return contextlib.nullcontext()
        return pyro.validation_enabled(False)

    def _early_stopping(self, value: float) -> None:
        c, s = self.config, self.state
        if value < s.best - c.min_delta:
            s.best, s.best_epoch, s.bad_epochs = value, s.epoch, 0
            self._best_params = {"model": copy.deepcopy(self.model.state_dict()),
                                 "guide": copy.deepcopy(self.guide.state_dict())}
        else:
            s.bad_epochs += 1
            if c.patience is not None and s.bad_epochs >= c.patience:
                s.stopped = f"early stopping: no improvement for {s.bad_epochs} evaluations"

    def _parameters_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.loss_module.parameters())

    def _diverged(self, what: str) -> None:
        s = self.state
        kept = (f"the last good checkpoint (epoch {s.epoch}) is kept at {self.checkpoint_path}"
                if self.checkpoint_path is not None else "no checkpoint was being written")
        raise TrainingError(
            f"training stopped: the {what} at epoch {s.epoch + 1}, step {s.step + 1}; "
            f"{kept}. Try a smaller training.lr or set training.clip_norm."
        )
