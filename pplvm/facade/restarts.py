"""``training.restarts = N``: fit from N starting points and keep the best, as scikit-learn's
``n_init`` does.

Restart i is the fit the card makes with ``training.seed = seed + i`` (i = 0..N-1): its own
start (the family's data-driven starting values, network weights; ``model.init = "auto"`` is
decided for the card's restarts, :meth:`~pplvm.families.base.FamilyConfig.for_restarts`) and its
own RNG streams. Each is scored by its training objective, the final epoch's ``train_loss`` (for
EM the negative log posterior or log-likelihood), one log line per restart; the lowest is kept.
The kept restart is then fitted through the normal path (the trainer, the run directory,
callbacks), so its checkpoint, metrics and artifacts are its own fit's and it resumes like any
run (its checkpoint carries its RNG streams). ``card.toml`` keeps the card as written, which
repeats the whole choice.

How the N restarts run is the update rule's to say (:meth:`~pplvm.training.rules.UpdateRule.restarts`):
in one batched pass through the trainer where it has one (full-batch EM of a mixture or an HMM:
every global with a leading restart dim), and the kept fit then reads its steps off that pass
(:meth:`~pplvm.training.rules.RestartPass.kept`: its numbers to float rounding, not computed
twice), on the run's own model and guide moved to the kept start where the pass can say it
(:meth:`~pplvm.training.rules.RestartPass.adopt`), else on a run built again with the kept seed;
else one after another, each a fit of its own through the same trainer without a run directory,
and the kept one fitted again. A batched pass runs every epoch (early stopping follows held-out
data restart by restart, so ``training.patience`` runs them one by one).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import pyro

from ..config import card_from_dict, card_to_dict
from ..errors import CardError, TrainingError
from ..schema import MAX_SEED
from ..training import distributed
from ..training.rules import RestartPass
from ..training.trainer import Trainer
from .build import _fit_input, assemble

if TYPE_CHECKING:
    from ..run import Run

log = logging.getLogger("pplvm")


def choose(run: Run, guard: Callable[[Trainer], ContextManager]) -> None:
    """With ``training.restarts`` > 1, score the restarts and leave ``run`` holding the kept
    one's start (model, guide, rule and :attr:`~pplvm.run.Run.seed`), ready for its fit.
    ``guard(trainer)``: what a fit's errors before its first epoch pass through (one line)."""
    c = run.card.training
    if c.restarts == 1:
        return
    _check(run)
    seeds = [c.seed + i for i in range(c.restarts)]
    train = _fit_input(run.traits, run.dataset.train)
    batched = _batched(run, train, seeds)
    if batched is not None:
        (losses, rule), how = batched, "in one batched pass"
    else:
        (losses, rule), how = (_one_by_one(run, train, seeds, guard), None), "one after another"
    best = min(range(len(seeds)), key=losses.__getitem__)
    for i, (seed, loss) in enumerate(zip(seeds, losses)):
        log.info(
            "training.restarts: restart %d of %d (training.seed = %d), %s: final train_loss %.8g%s",
            i + 1,
            len(seeds),
            seed,
            how,
            loss,
            " (kept)" if i == best and math.isfinite(loss) else "",
        )
    if not math.isfinite(losses[best]):
        raise TrainingError(
            f"training.restarts = {c.restarts}: every restart failed (see the log lines above); "
            "fit with training.restarts = 1 to see why"
        )
    adopted = rule.adopt(best, run.rule) if rule is not None else None
    if adopted is not None:  # the run's own model and guide, at the kept start, its steps read off the pass
        run.rule, run.seed = adopted, seeds[best]
        return
    kept = run if seeds[best] == run.seed else _seeded(run, seeds[best])
    if rule is not None:  # the kept fit reads its steps off the batched pass where the pass can say them
        kept.rule = rule.kept(best, kept.rule)
    _adopt(run, kept)


def _check(run: Run) -> None:
    """Refuse restarts that would repeat one fit or cannot run here, in one line each."""
    c = run.card.training
    head = f"training.restarts = {c.restarts}"
    why = run.model.restart_refusal()
    if why is not None:
        raise CardError(f"{head}: {why}")
    if run.objects["model"] is not None or run.objects["guide"] is not None:
        raise CardError(
            f"{head}: the model= / guide= objects passed from Python are trained in place, so each restart "
            "would start where the last ended; name them in the card (model.target, model.guide_target) or "
            "fit once per training.seed"
        )
    if c.seed + c.restarts - 1 > MAX_SEED:
        raise CardError(f"{head}: the restarts' seeds training.seed + 0..{c.restarts - 1} pass {MAX_SEED}")
    if distributed.world_size() > 1:
        raise CardError(f"{head}: restarts run on one process; start the fit without torchrun")


def _batched(run: Run, train: Any, seeds: list[int]) -> tuple[list[float], RestartPass] | None:
    """Each restart's final training loss per datum from the rule's batched pass, and the pass;
    or None (it has none, or it stopped: then they run one after another)."""
    c = run.card.training
    own = run.seed if not run.history else None  # an unfitted run's guide holds its seed's start
    rule = run.rule.restarts(train, seeds, c, own=own) if c.patience is None else None
    if rule is None:
        return None
    trainer = Trainer(run.model, run.guide, rule, c)
    try:
        trainer.fit(train)
    except TrainingError as err:
        log.info("training.restarts: the batched pass stopped (%s); running the restarts one after another", err)
        return None
    return [loss / len(train) for loss in rule.losses()], rule


def _one_by_one(
    run: Run, train: Any, seeds: list[int], guard: Callable[[Trainer], ContextManager] = contextlib.nullcontext
) -> list[float]:
    """Each restart's final training loss per datum, from a fit of its own (no run directory);
    ``inf`` for one that failed (its error logged)."""
    losses = []
    for seed in seeds:
        other = _seeded(run, seed)
        other.run_dir = None
        trainer = other._trainer([])
        try:
            with guard(trainer):
                trainer.fit(train, other.dataset.valid)
        except TrainingError as err:
            log.info("training.restarts: restart with training.seed = %d failed: %s", seed, err)
            losses.append(math.inf)
            continue
        losses.append(float(trainer.state.history[-1]["train_loss"]))
    return losses


def _seeded(run: Run, seed: int) -> Run:
    """A new, untrained run like ``run`` whose fit starts from ``seed`` (as ``Run.from_card``
    builds it with ``training.seed = seed``, on the same data)."""
    card = card_from_dict(card_to_dict(run.card), {"training.seed": seed})
    objective = run.objects["objective"]
    pyro.set_rng_seed(seed)  # model parameters (decoders) start from the seed
    model, guide = assemble(card, run.dataset.dim, run.device, dataset=run.dataset, objective=objective)
    return type(run)(card, model, guide, run.transform, run.dataset, run.run_dir, checked=True, objective=objective)


def _adopt(run: Run, other: Run) -> None:
    """``run`` takes ``other``'s start; its card (as written, restarts and seed) stays."""
    run.model, run.guide, run.rule, run.seed = other.model, other.guide, other.rule, other.seed
