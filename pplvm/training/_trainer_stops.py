"""How the loop of :class:`~pplvm.training.trainer.Trainer` stops short of its epochs: early
stopping on the monitored held-out value (the best parameters kept), divergence (a non-finite
loss or parameters, or a parameter outside its distribution's support) and a lost process (a
failed collective). Each error is one line that names where the last good checkpoint is."""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING

import torch

from ..errors import TrainingError
from . import distributed
from ._trainer_state import _host, saved_epoch
from .distributed import CollectiveError

if TYPE_CHECKING:
    from .trainer import Trainer


@contextlib.contextmanager
def collectives(trainer: Trainer):
    """Turn a failed collective (another process died or went silent) into one line that
    names the last good checkpoint."""
    try:
        yield
    except CollectiveError as err:
        lost_contact(trainer, str(err))
    except RuntimeError as err:
        if trainer.world_size == 1 or isinstance(err, TrainingError) or not _is_collective_error(err):
            raise
        lost_contact(trainer, distributed.describe_failure(err))


def lost_contact(trainer: Trainer, what: str) -> None:
    """Stop: another process is lost (``what``)."""
    kept = (
        f"the last good checkpoint (epoch {saved_epoch(trainer.checkpoint_path)}) "
        f"is kept at {trainer.checkpoint_path}; "
        f"continue with: pplvm resume {trainer.run_dir}"
        if trainer.checkpoint_path is not None
        else "no checkpoint was being written"
    )
    raise TrainingError(f"training stopped in epoch {trainer.state.epoch + 1}: {what}; {kept}") from None


def early_stopping(trainer: Trainer, value: float) -> None:
    """Count ``value`` (the monitored held-out value, as a loss) toward early stopping; keep the
    parameters when it is the best so far."""
    c, s = trainer.config, trainer.state
    if value < s.best - c.min_delta:
        s.best, s.best_epoch, s.bad_epochs = value, s.epoch, 0
        trainer._best_params = {
            "model": _host(copy.deepcopy(trainer.model.state_dict())),
            "guide": _host(copy.deepcopy(trainer.guide.state_dict())),
        }
    else:
        s.bad_epochs += 1
        if c.patience is not None and s.bad_epochs >= c.patience:
            s.stopped = f"early stopping: no improvement for {s.bad_epochs} evaluations"


def diverged(trainer: Trainer, what: str, epoch_done: bool = False) -> None:
    """Stop: ``what`` went wrong in this epoch's next step (or, ``epoch_done``, after the epoch)."""
    s = trainer.state
    epoch = s.epoch if epoch_done else s.epoch + 1
    where = f"epoch {epoch}" if epoch_done else f"epoch {epoch}, step {s.step + 1}"
    kept = (
        f"the last good checkpoint (epoch {saved_epoch(trainer.checkpoint_path)}) is kept at {trainer.checkpoint_path}"
        if trainer.checkpoint_path is not None
        else "no checkpoint was being written"
    )
    bad = nonfinite_parameters(trainer)
    if bad:  # say which
        where += f" (non-finite: {', '.join(bad[:3])}{f' and {len(bad) - 3} more' if len(bad) > 3 else ''})"
    if s.step == 0 and not epoch_done:  # no update taken yet: the step size cannot be the cause
        advice = (
            "No update had been taken, so the learning rate is not the cause: the model and "
            "guide are not finite at their initial parameters on this data (check the data and the distributions)."
        )
    else:
        advice = "Try a smaller training.lr or set training.clip_norm."
    raise TrainingError(f"training stopped: the {what} at {where}; {kept}. {advice}")


def nonfinite_parameters(trainer: Trainer) -> list[str]:
    """Names (``model.…`` / ``guide.…``) of the parameters holding NaN or inf."""
    return [
        f"{part}.{name}"
        for part, module in (("model", trainer.model), ("guide", trainer.guide))
        for name, p in module.named_parameters()
        if not bool(torch.isfinite(p.detach()).all())
    ]


def _is_support_error(err: ValueError) -> bool:
    """Whether ``err`` is torch's / Pyro's refusal of a distribution parameter or value outside
    its constraint (what a diverged parameter, e.g. a scale that underflowed to 0, causes)."""
    return str(err).startswith(("Expected parameter", "Expected value argument"))


def _is_collective_error(err: RuntimeError) -> bool:
    """Whether ``err`` (raised while several processes train) is a failed collective: a DDP
    all-reduce that lost its peers, or a timeout."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        word in text
        for word in (
            "Gloo",
            "gloo",
            "NCCL",
            "Connection closed",
            "Connection reset",
            "Timed out",
            "timed out",
            "ProcessGroup",
        )
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].rstrip(":") if text else type(err).__name__
