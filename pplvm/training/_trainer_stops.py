"""How the loop of :class:`~pplvm.training.trainer.Trainer` stops short of its epochs: early
stopping on the monitored held-out value (the best parameters kept), divergence (a non-finite
loss or parameters, or a parameter outside its distribution's support) and a lost process (a
failed collective). Each error is one line that names where the last good checkpoint is."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from typing import TYPE_CHECKING

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..errors import TrainingError
from ..rundir import STAGING
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
            **({"ema": trainer.ema.state_dict()} if trainer.ema is not None else {}),
        }
    else:
        s.bad_epochs += 1
        if c.patience is not None and s.bad_epochs >= c.patience:
            s.stopped = f"early stopping: no improvement for {s.bad_epochs} evaluations"


def halt(trainer: Trainer, why: str, record: dict) -> None:
    """Stop the loop after the epoch whose ``record`` a callback was given (its own decision,
    e.g. a sweep's pruner): the record (in ``metrics.jsonl`` too) and the checkpoint say ``why``,
    so the run directory tells why it ended; a resume does not go on."""
    trainer.state.stopped = record["stopped"] = why
    if trainer.run_dir is not None and trainer.rank == 0:
        history = trainer.state.history
        (trainer.run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    trainer.save()


def use_kept(trainer: Trainer) -> None:
    """After a fit: the model and guide take the parameters the run is used with — the best
    held-out ones (unless a budget stop's last evaluation beat them: ``trainer.kept == "last"``),
    their EMA averages with ``training.ema``."""
    best = trainer._best_params
    if best is not None and trainer.kept == "best":
        trainer.model.load_state_dict(best["model"])
        trainer.guide.load_state_dict(best["guide"])
        if trainer.ema is not None:
            trainer.ema.load_state_dict(best["ema"])
    if trainer.ema is not None:
        trainer.ema.copy_to()


def diverged(trainer: Trainer, what: str, epoch_done: bool = False, batch=None, num_data: int | None = None) -> None:
    """Stop: ``what`` went wrong in this epoch's next step (or, ``epoch_done``, after the epoch).
    With the step's ``batch``, the error names the non-finite terms (:func:`nonfinite_terms`);
    the learning rate is blamed only where it can be the cause (after an update)."""
    s = trainer.state
    epoch = s.epoch if epoch_done else s.epoch + 1
    where = f"epoch {epoch}" if epoch_done else f"epoch {epoch}, step {s.step + 1}"
    if trainer.checkpoint_path is None:
        kept = "no checkpoint was being written"
    elif trainer.checkpoint_path.parent.name == STAGING:  # a new run, removed: nothing is left on disk
        kept = "nothing was kept (the fit failed in its first epoch)"
    else:
        path = trainer.checkpoint_path
        kept = f"the last good checkpoint (epoch {saved_epoch(path)}) is kept at {path}"
    found = nonfinite_terms(trainer.model, trainer.guide, batch, num_data)
    if s.step == 0 and not epoch_done:  # no update has been made: the parameters are the initial ones
        if found:
            cause = f": {found}"
        elif found == "":  # every term finite in a draw
            cause = f": {_OBJECTIVE}"
        else:
            cause = " (the initial parameters are)" if batch is None else f": {_ZERO_DENSITY}"
        advice = f"It is so before any update, so the learning rate is not the cause{cause}."
    elif found:
        advice = f"At this step: {found}. If the parameters drifted there, try a smaller training.lr or set clip_norm."
    else:
        advice = "Try a smaller training.lr or set training.clip_norm."
    raise TrainingError(f"training stopped: the {what} at {where}; {kept}. {advice}")


_OBJECTIVE = (
    "every site's log-density is finite in a draw of the latents, so the objective's own arithmetic overflows "
    "(e.g. TraceTMC_ELBO on minibatches sums enumerated values of N/B-scaled densities; 'enum' scales after "
    "summing)"
)
_ZERO_DENSITY = (
    "the model or the guide gives the data or a draw zero density (a probability of exactly 0 or 1, a zero "
    "scale, a pyro.factor of -inf)"
)


def nonfinite_terms(model, guide, batch=None, num_data: int | None = None) -> str | None:
    """What is non-finite in one draw of ``guide`` and ``model`` (replayed) on ``batch`` at the
    current parameters: the parameters by name, then each site's log-density (``pyro.factor``
    terms included) with its non-finite values; '' when nothing is (the objective's own
    arithmetic is then at fault) or the draw itself fails."""
    params = [
        f"{who}.{name}"
        for who, module in (("model", model), ("guide", guide))
        for name, p in module.named_parameters()
        if not torch.isfinite(p).all()
    ]
    if params:
        return f"non-finite parameters: {', '.join(params[:4])}{' ...' if len(params) > 4 else ''}"
    if batch is None:
        return None
    try:
        with torch.no_grad(), pyro.validation_enabled(False), poutine.block():
            q = poutine.trace(guide).get_trace(batch, num_data)
            p = poutine.trace(poutine.replay(model, trace=q)).get_trace(batch, num_data)
    except Exception:  # noqa: BLE001 - a diagnosis only: the error names the step either way
        return None
    terms = []
    for who, trace in (("model", p), ("guide", q)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or (who == "guide" and site["is_observed"]):
                continue
            try:
                log_p = site["fn"].log_prob(site["value"])
            except Exception:  # noqa: BLE001 - a value the distribution refuses: not a number to report
                continue
            mask = site["mask"]
            log_p = log_p if mask is None or mask is True else torch.where(mask, log_p, 0.0)
            counts = {"-inf": (log_p == -math.inf).sum(), "+inf": (log_p == math.inf).sum(), "nan": log_p.isnan().sum()}
            found = ", ".join(f"{kind} in {int(n)} entries" for kind, n in counts.items() if n)
            if found:
                terms.append(f"the {who}'s site {name!r} ({found})")
    return f"non-finite log-densities: {'; '.join(terms)}" if terms else ""


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
