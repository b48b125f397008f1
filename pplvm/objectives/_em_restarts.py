"""``training.restarts`` for exact EM in one batched pass: R starting points of a family with
:attr:`~pplvm.families.capabilities.ClosedFormEM.batched_restarts` fitted at once, every global
site carrying a leading restart dim ``(R, ...)``, so each E-step is one forward–backward (or one
set of responsibilities) over all restarts rather than R.

Each restart repeats, to rounding, what a full-batch EM fit with its ``training.seed`` computes:
the same start (:meth:`~pplvm.families.base.LatentVariableModel.init_values` with that seed's
generator), the same E- and M-steps, and the same round trip of each value through the ``map``
guide's unconstrained space that the fit's point estimate makes between steps (the run's own
seed's start is read off its guide, which the run's build started there). A restart whose loss
or new values are non-finite stops where it was (its loss ``inf``), as does one that converged
(``objective.em_tol``); the others go on, and only they enter the E- and M-steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch.distributions import transform_to

from ..guides import point_estimate, set_point_estimate
from ..training.rules import RestartPass, UpdateRule

if TYPE_CHECKING:
    from .em import EMStep


class BatchedEM(RestartPass):
    """Full-batch EM over restarts started at ``seeds`` on ``train`` (see the module docstring).

    :param single: the run's own :class:`~pplvm.objectives.em.EMStep` (model, guide, estimate,
        and the log prior of one restart's values under ``"map"``).
    """

    def __init__(self, single: EMStep, train: Any, seeds: Sequence[int], own: int | None = None):
        self.single, self.model, self.estimate = single, single.model, single.estimate
        delta = point_estimate(single.guide)
        self.supports = {k: delta.prototype_trace.nodes[k]["fn"].support for k in self.model.global_sites}
        # the run's own seed's start is its guide's (the run's build computed it); the others' their own
        starts = [
            single.params() if seed == own else self.model.init_values(train, torch.Generator().manual_seed(seed))
            for seed in seeds
        ]
        device = self.model.device
        self.starts = self._through_guide({k: torch.stack([s[k] for s in starts]).to(device) for k in self.supports})
        self.params = self.starts
        self.failed = torch.zeros(len(seeds), dtype=torch.bool, device=device)
        self.done = torch.zeros_like(self.failed)  # converged (objective.em_tol): stopped there
        self.last = torch.full((len(seeds),), torch.inf, device=device)
        self.previous = torch.full((len(seeds),), torch.inf, dtype=torch.float64, device=device)
        #: per step: the restarts that moved, their losses, statistics and new values (what each
        #: restart's own fit's EMStep holds after that step)
        self.record: list[tuple[list[int], torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def _through_guide(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``values`` as the guide gives them back after storing them (unconstrained and back)."""
        return {k: transform_to(self.supports[k])(transform_to(self.supports[k]).inv(v)) for k, v in values.items()}

    def setup(self, example, num_data: int) -> None:
        self.single.setup(example, num_data)  # the example datum the log prior is traced on

    @torch.no_grad()
    def step(self, batch, num_data: int, progress: float) -> torch.Tensor:
        """One EM iteration of the restarts still going (the converged and failed ones are
        left out of the E- and M-steps: their values stay)."""
        going = (~(self.failed | self.done)).nonzero().squeeze(-1)
        whole = len(going) == len(self.last)
        params = self.params if whole else {k: v[going] for k, v in self.params.items()}
        stats = self.model.expected_statistics(batch, params)
        like = stats["log_likelihood"] * (num_data / len(batch))  # (R',)
        if self.estimate == "map":
            prior = [self.single.log_prior({k: v[r] for k, v in params.items()}, like) for r in range(len(like))]
            like = like + torch.stack(prior)
        loss = -like
        new = self._through_guide(self.model.maximize(stats, params, self.estimate))
        finite = torch.isfinite(loss)
        for v in new.values():
            finite &= torch.isfinite(v).flatten(1).all(-1)
        moving = going[finite]
        self.failed[going[~finite]] = True
        self.last[going[~finite]] = torch.inf
        self.last[moving] = loss[finite]
        if self.single.tol is not None:  # as EMStep: the decrease of the loss per datum, in float64
            per_datum = loss[finite].double() / num_data
            self.done[moving] = self.previous[moving] - per_datum < self.single.tol
            self.previous[moving] = per_datum
        if bool(finite.all()):
            self.params = new if whole else {k: self.params[k].index_copy(0, going, v) for k, v in new.items()}
        else:
            self.params = {k: self.params[k].index_copy(0, moving, v[finite]) for k, v in new.items()}
        self.record.append((going.tolist(), torch.where(finite, loss, torch.nan), stats, new))
        return loss[finite].sum() if len(moving) else loss.new_tensor(torch.inf)

    def stop_reason(self) -> str | None:
        return "every restart converged or failed" if bool((self.done | self.failed).all()) else None

    def losses(self) -> list[float]:
        return self.last.tolist()

    def describe(self) -> str:
        return f"EM over {len(self.last)} restarts in one batched pass"

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(self.params.values())

    def kept(self, index: int, rule: EMStep) -> UpdateRule:
        steps = []
        for going, loss, stats, new in self.record:
            if index in going and not torch.isnan(loss[at := going.index(index)]):
                steps.append((loss[at], {k: v[at] for k, v in stats.items()}, {k: v[at] for k, v in new.items()}))
        return ReplayedEM(rule, steps)

    def adopt(self, index: int, rule: EMStep) -> UpdateRule | None:
        """The run's own guide started where restart ``index`` started (a model with no
        parameters of its own starts nowhere else), and :meth:`kept`."""
        if next(iter(self.model.parameters()), None) is not None:
            return None
        set_point_estimate(rule.guide, {k: v[index] for k, v in self.starts.items()})
        return self.kept(index, rule)


class ReplayedEM(UpdateRule):
    """The kept restart's own fit, its steps read off the batched pass: each step leaves the
    guide and ``em`` (the fit's :class:`~pplvm.objectives.em.EMStep`) as that step of the fit
    would have (the new values, the statistics, the step count, the loss per datum that
    ``em_tol`` compares), and returns its loss. The loop around it logs, scores held-out data,
    checkpoints and stops as in the fit; only the E- and M-steps are not computed again. Past
    the record, and in everything else, it is ``em`` (a resumed run continues with ``em`` alone)."""

    def __init__(self, em: EMStep, steps: list[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]]):
        self.em, self.steps, self.taken = em, steps, 0

    def setup(self, example, num_data: int) -> None:
        self.em.setup(example, num_data)

    @torch.no_grad()
    def step(self, batch, num_data: int, progress: float) -> torch.Tensor:
        if self.taken >= len(self.steps):
            return self.em.step(batch, num_data, progress)
        loss, stats, new = self.steps[self.taken]
        self.taken += 1
        per_datum = float(loss) / num_data
        self.em.change, self.em.previous = self.em.previous - per_datum, per_datum
        self.em.stats, self.em.updates = dict(stats), self.em.updates + 1
        set_point_estimate(self.em.guide, new)
        return loss

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return self.em.end_epoch(epoch)

    def describe(self) -> str:
        return "EM, the kept restart's steps read off the restarts' batched pass"

    def stop_reason(self) -> str | None:
        return self.em.stop_reason()

    def held_out_loss(self, data, num_data: int) -> torch.Tensor | None:
        return self.em.held_out_loss(data, num_data)

    def parameters(self) -> Iterator[torch.Tensor]:
        return self.em.parameters()

    def state_dict(self) -> dict[str, Any]:
        return self.em.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.em.load_state_dict(state)
