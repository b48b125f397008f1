"""Update rules: what the training loop does with one minibatch.

The loop (:class:`~pplvm.training.trainer.Trainer`) owns epochs, shuffling, devices and
precision, held-out evaluation, early stopping, checkpoints, progress and resume. An update
rule owns the step itself and the state only it knows (optimisers, schedulers), which it hands
to checkpoints through ``state_dict`` / ``load_state_dict``:

================ =========================================================================
:class:`SVIStep`  one optimiser step on a Pyro objective (``objective(model, guide)`` is an
                  ``ELBOModule``; its value is the loss)
================ =========================================================================

Other rules (an exact EM step, a GAN's two optimisers, a compiled SVI step) implement the same
few methods; :func:`pplvm.objectives.make_update_rule` picks the one a card's objective names.
A rule must be deterministic given the global torch RNG, so a resumed run repeats an
uninterrupted one.
"""

from __future__ import annotations

import abc
import contextlib
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator, Protocol, Sequence

import torch
from pyro.infer import ELBO

from ..errors import TrainingError
from ..sections import TrainingConfig
from ._warmup import add_lr_warmup

if TYPE_CHECKING:
    from .distributed import DataParallel

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


class Schedule(Protocol):
    """A per-step modification of the objective as training progresses (e.g. KL annealing,
    :mod:`pplvm.objectives.annealing`)."""

    def __call__(self, progress: float) -> ContextManager:
        """The Pyro handler to enter around a step taken at ``progress`` epochs."""

    def values(self, progress: float) -> dict[str, float]:
        """Numbers to log with each epoch's metrics."""


class UpdateRule(abc.ABC):
    """One kind of training step. The loop calls, in order: :meth:`setup` once (parameters and
    optimisers exist afterwards; with several processes, :meth:`distribute`; a resumed run
    then calls :meth:`load_state_dict`), then per minibatch :meth:`step`, and per epoch
    :meth:`end_epoch`."""

    @abc.abstractmethod
    def setup(self, example: Any, num_data: int) -> None:
        """Create parameters (autoguides make theirs on a first call) and optimisers.
        ``example``: a training batch on the run's device; ``num_data``: training-set size."""

    @abc.abstractmethod
    def step(self, batch: Any, num_data: int, progress: float) -> torch.Tensor:
        """Update on ``batch`` (on the run's device); return its loss as a detached 0-dim
        tensor: an unbiased estimate of the full-data loss (data terms scaled by N / B).
        ``progress``: epochs done so far, fractional within an epoch."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called after each epoch (``epoch`` epochs done); returns numbers to log (e.g. lr)."""
        return {}

    def plan(self, steps: int) -> None:
        """Told, before a fit's first step, how many steps the fit will take (a rule may pick
        how it runs by the fit's length: :class:`~pplvm.training.compiled.CompiledSVIStep`)."""

    def describe(self) -> str:
        """What runs a step, in a few words (logged with the first epoch's time)."""
        return type(self).__name__

    def stop_reason(self) -> str | None:
        """Asked after each epoch: why training should end here (e.g. EM has converged), or None."""
        return None

    def distribute(self, dp: "DataParallel") -> None:
        """Train data-parallel with the other processes (called once on every process, after
        :meth:`setup`, when there are several): each process steps on its shard of every
        batch and the rule makes its update agree across them — a gradient rule computes its
        loss through ``dp.wrap(module)`` (DistributedDataParallel), an EM step all-reduces its
        sufficient statistics (:func:`pplvm.training.distributed.all_reduce_sum`). A rule that
        does neither cannot run on several processes."""
        raise TrainingError(
            f"the {type(self).__name__} update rule has no data-parallel version: train it on one process"
        )

    @abc.abstractmethod
    def held_out_loss(self, data: Any, num_data: int) -> torch.Tensor | None:
        """The objective's loss on held-out ``data`` (no update), or None if it has none."""

    @abc.abstractmethod
    def parameters(self) -> Iterator[torch.Tensor]:
        """Every tensor the rule updates (checked to stay finite)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Optimiser and scheduler state (tensors, numbers, dicts and lists only)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def restarts(
        self, train: Any, seeds: Sequence[int], config: TrainingConfig, *, own: int | None = None
    ) -> "RestartPass | None":
        """A rule that trains one restart per seed of ``seeds`` at once (``training.restarts``),
        each from where a fit with that ``training.seed`` starts, on ``train`` under ``config``;
        None (the default) where this rule has none: the restarts then run one after another.
        ``own``: the seed whose start this rule's parameters hold now (an unfitted run's), if any."""
        return None


class RestartPass(UpdateRule):
    """Several restarts of one rule in one batched pass (parameters with a leading restart
    dim): the loop runs it like any rule, on the full data, for the card's epochs; each step
    returns the sum of the restarts' losses. It scores no held-out data and keeps no state
    for checkpoints (only the kept restart's own fit writes them)."""

    @abc.abstractmethod
    def losses(self) -> list[float]:
        """Each restart's loss in the last step (a full-data loss, as :meth:`step` returns
        one); ``inf`` for a restart whose loss or parameters became non-finite (it stopped there)."""

    def kept(self, index: int, rule: UpdateRule) -> UpdateRule:
        """The rule the kept restart ``index`` is then fitted with, ``rule`` being its own fit's:
        that rule (the default: the fit is made again), or one that reads the steps this pass
        took off its record, as ``rule`` would have taken them."""
        return rule

    def adopt(self, index: int, rule: UpdateRule) -> UpdateRule | None:
        """:meth:`kept`, with ``rule``'s own model and guide moved to where restart ``index``
        started, so the run needs no rebuild at the kept seed; None (the default) where the
        pass cannot say that start: the run is then built again with the kept seed."""
        return None

    def held_out_loss(self, data: Any, num_data: int) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def make_optimizer(
    params: Iterable[torch.Tensor], config: TrainingConfig, *, loss_scale: float = 1.0
) -> torch.optim.Optimizer:
    """The card's optimiser over ``params``. ``loss_scale``: how many times larger the rule's
    loss is than a loss per datum (a Pyro objective's full-data estimate: N). Adam's and
    RMSprop's ε is multiplied by it, which makes the updates exactly those of the same
    optimiser on the per-datum loss (Adam's step ``m / (sqrt(v) + ε)`` is otherwise invariant
    to the loss's scale), so a card's ``eps`` means what it means in the papers."""
    c = config
    params = list(params)
    kw: dict[str, Any] = {"lr": c.lr, "weight_decay": c.weight_decay}
    if c.optimizer in ("adam", "adamw"):
        kw.update(betas=tuple(c.betas), eps=c.eps * loss_scale)
    elif c.optimizer == "rmsprop":
        kw.update(eps=c.eps * loss_scale)
    if c.optimizer in FUSED and _fusable(params):
        kw["fused"] = True
    return add_lr_warmup(OPTIMIZERS[c.optimizer](params, **kw), c.lr_warmup_steps)


#: optimisers with a fused kernel (one pass over each parameter instead of one per operation:
#: Adam's update takes half the time of PyTorch's default for-loop on a CPU)
FUSED = ("adam", "adamw", "sgd")


def _fusable(params: list[torch.Tensor]) -> bool:
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() and not p.is_sparse for p in params)
    )


#: the IWAE paper's schedule (Burda et al. 2016, section 5): stage i lasts 3^i epochs
IWAE_STAGES = 8


def iwae_lr_factor(epoch: int) -> float:
    """``10^(-i/7)`` where stage ``i`` (``3^i`` epochs long, i = 0..7) holds ``epoch`` (0-based);
    after the 3280 epochs of the schedule, the last stage's factor."""
    i, end = 0, 1
    while epoch >= end and i < IWAE_STAGES - 1:
        i += 1
        end += 3**i
    return 10.0 ** (-i / 7)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    """The card's learning-rate schedule, stepped once per epoch (``lr_warmup_steps``' per-update
    warm-up, :mod:`._warmup`, multiplies what it sets)."""
    c = config
    if c.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=c.lr_final_ratio ** (1.0 / c.epochs))
    if c.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.epochs, eta_min=c.lr * c.lr_final_ratio)
    if c.lr_schedule == "iwae":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, iwae_lr_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def clip_gradients(params: list[torch.Tensor], clip_norm: float | None) -> torch.Tensor:
    """The global 2-norm of the parameters' gradients; with ``clip_norm``, the gradients are then
    scaled down to at most that norm (as :func:`torch.nn.utils.clip_grad_norm_`)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if clip_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, clip_norm, norm)
    return norm


class SVIStep(UpdateRule):
    """Stochastic variational inference: a gradient step of the card's optimiser on
    ``objective(model, guide)`` (an ``ELBOModule``; under several processes, wrapped in
    DistributedDataParallel by :meth:`distribute`).

    :param schedule: optional per-step Pyro handler factory (KL annealing).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        guide: torch.nn.Module,
        objective: ELBO,
        config: TrainingConfig,
        *,
        schedule: Schedule | None = None,
        held_out: bool = True,
    ):
        self.model, self.guide, self.objective, self.config = model, guide, objective, config
        self.loss_module = objective(model, guide)
        self.schedule, self.held_out = schedule, held_out
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        #: the gradients' global 2-norm at the last step, before clipping (logged as ``grad_norm``)
        self.grad_norm: torch.Tensor | None = None

    def setup(self, example, num_data: int) -> None:
        if self.optimizer is not None:
            return
        if getattr(self.guide, "lazy_parameters", True):  # an autoguide creates its parameters now
            with torch.no_grad():
                self.guide(example, num_data=num_data)
        self.optimizer = make_optimizer(
            (p for p in self.loss_module.parameters() if p.requires_grad), self.config, loss_scale=num_data
        )
        self.scheduler = make_lr_scheduler(self.optimizer, self.config)

    def step(self, batch, num_data: int, progress: float) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self._scheduled(progress):
            loss = self.loss_module(batch, num_data=num_data)
        loss.backward()
        self.grad_norm = clip_gradients(self.optimizer.param_groups[0]["params"], self.config.clip_norm)
        self.optimizer.step()
        return loss.detach()

    def distribute(self, dp: "DataParallel") -> None:
        self.loss_module = dp.wrap(self.loss_module)

    def describe(self) -> str:
        return "Pyro's plain step"

    def end_epoch(self, epoch: int) -> dict[str, float]:
        out = {"lr": self.optimizer.param_groups[0]["lr"]}
        if self.grad_norm is not None:  # the epoch's last step's, before clipping (one host sync an epoch)
            out["grad_norm"] = float(self.grad_norm)
        self.scheduler.step()
        if self.schedule is not None:
            out.update(self.schedule.values(epoch))
        return out

    @torch.no_grad()
    def held_out_loss(self, data, num_data: int) -> torch.Tensor | None:
        if not self.held_out:
            return None
        return torch.as_tensor(self.objective.loss(self.model, self.guide, data, num_data=num_data))

    def parameters(self) -> Iterator[torch.Tensor]:
        return self.loss_module.parameters()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def _scheduled(self, progress: float) -> ContextManager:
        return self.schedule(progress) if self.schedule is not None else contextlib.nullcontext()


#: ``factory(model, guide, config) -> UpdateRule``
RuleFactory = Callable[[torch.nn.Module, torch.nn.Module, TrainingConfig], UpdateRule]
