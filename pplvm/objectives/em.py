"""Exact expectation–maximisation as an update rule (objective ``em``).

For a family with :class:`~pplvm.families.capabilities.ClosedFormEM` (mixtures, HMMs, PPCA and factor
analysis), each step is an E-step on the batch — expected sufficient statistics under the
exact local posterior p(z_n | x_n, θ) — and a closed-form M-step. The point estimate of the
global latents lives in the ``map`` guide (an AutoDelta), so a run fitted by EM saves, resumes,
loads, evaluates and samples like any other.

* Full batch (``training.batch_size`` unset or >= N): one EM iteration per epoch; the log
  posterior (``em_estimate = "map"``) or log-likelihood (``"ml"``) never decreases.
* Minibatches: stepwise (online) EM (Cappé & Moulines 2009; Liang & Klein 2009): running
  statistics ``s ← (1 − ρ_k) s + ρ_k (N / B) s_batch`` with ``ρ_k = (k + 1)^-em_step_decay``
  (k = 0, 1, … minibatches so far; decay in (0.5, 1]), and an M-step after every minibatch.

The loss of a step is ``−[(N / B) Σ_batch log p(x_n | θ) + log p(θ)]`` at the parameters the
step started from (the E-step computes it anyway; ``log p(θ)`` only under ``"map"``): the
negative log posterior, on the same scale as the ELBO losses of the other objectives.

Data-parallel (torchrun): each process takes the statistics of its shard, :meth:`EMStep.reduce`
sums them over processes (one all-reduce), and every process takes the same M-step.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Iterator, Literal

import torch
from pydantic import Field
from pyro import poutine

from ..errors import IncompatibleError
from ..families.base import ClosedFormEM, LatentVariableModel
from ..guides import point_estimate, set_point_estimate
from ..guides.base import GuideTraits
from ..training.distributed import all_reduce_sum
from ..training.rules import UpdateRule
from ._em_restarts import BatchedEM
from .base import Objective, ObjectiveConfig


class EMStep(UpdateRule):
    """One EM iteration (full batch) or one stepwise-EM update (minibatch) per step.

    :param estimate: ``"map"`` or ``"ml"`` (see :meth:`ClosedFormEM.maximize`).
    :param decay: stepwise EM's step-size exponent.
    :param tol: full batch: stop once an iteration lowers the loss per datum by less (None: never).
    """

    def __init__(
        self,
        model: LatentVariableModel,
        guide: torch.nn.Module,
        *,
        estimate: str = "map",
        decay: float = 0.6,
        tol: float | None = None,
    ):
        if not isinstance(model, ClosedFormEM):
            raise IncompatibleError(f"objective.name = 'em': family {model.config.family!r} has no closed-form EM")
        self.model, self.guide, self.estimate, self.decay, self.tol = model, guide, estimate, decay, tol
        self.previous = self.change = torch.inf  # full batch: the last loss per datum, and its last decrease
        self.stats: dict[str, torch.Tensor] | None = None  # running statistics (stepwise EM)
        self.updates = 0  # minibatch updates so far (k)
        self.example = None
        self.distributed = False

    def setup(self, example, num_data: int) -> None:
        point_estimate(self.guide)  # refuses a guide that is not a point estimate
        with torch.no_grad():
            self.guide(example, num_data=num_data)
        self.example = example[:1]

    @torch.no_grad()
    def step(self, batch, num_data: int, progress: float) -> torch.Tensor:
        params = self.params()
        local = self.model.expected_statistics(batch, params)
        # this process's estimate of the full-data loss (the trainer adds the processes' up)
        prior = self.log_prior(params, local["log_likelihood"])
        loss = -(local["log_likelihood"] * (num_data / len(batch)) + prior)
        stats = self.reduce({**local, "rows": local["log_likelihood"].new_tensor(float(len(batch)))})
        rows = float(stats.pop("rows"))  # the whole step's batch, over all processes
        scale = num_data / rows
        rho = 1.0 if rows >= num_data else float(self.updates + 1) ** -self.decay
        scaled = {k: v * scale for k, v in stats.items()}
        if rho == 1.0:  # full batch: the loss (every process's data) is exact; its change tells convergence
            per_datum = -float(stats["log_likelihood"] + prior) / num_data
            self.change, self.previous = self.previous - per_datum, per_datum
        if self.stats is None or rho == 1.0:
            self.stats = scaled
        else:
            self.stats = {k: (1 - rho) * self.stats[k] + rho * v for k, v in scaled.items()}
        self.updates += 1
        set_point_estimate(self.guide, self.model.maximize(self.stats, params, self.estimate))
        return loss.detach()

    def distribute(self, dp) -> None:
        """Data-parallel EM: every process computes its shard's statistics, :meth:`reduce`
        sums them over processes, and all take the same M-step."""
        self.distributed = True

    def reduce(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Statistics of this process's shard -> those of the whole step's batch (sums over
        processes, :func:`~pplvm.training.distributed.all_reduce_sum`; identity on one process)."""
        if self.distributed:
            all_reduce_sum(list(stats.values()))
        return stats

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {"em_step_size": float(self.updates) ** -self.decay if self.updates > 1 else 1.0}

    def stop_reason(self) -> str | None:
        if self.tol is None or not self.change < self.tol:
            return None
        return f"converged: the last EM iteration lowered the loss per datum by {self.change:.3g} < objective.em_tol"

    @torch.no_grad()
    def held_out_loss(self, data, num_data: int) -> torch.Tensor | None:
        params = self.params()
        log_lik = self.model.log_likelihood(data, params).sum() * (num_data / len(data))
        return -(log_lik + self.log_prior(params, log_lik))

    def params(self) -> dict[str, torch.Tensor]:
        """The current point estimate of the global sites (the ``map`` guide's median, read
        off its constrained parameters without running it)."""
        delta = point_estimate(self.guide)
        if delta is None:
            return {}
        return {k: operator.attrgetter(k)(delta).detach() for k, _ in delta.prototype_trace.iter_stochastic_nodes()}

    def log_prior(self, params: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """``log p(θ)`` of the global sites under ``"map"`` (0 under ``"ml"``), read off the
        model's own prior by tracing it (on one datum, RNG state restored); ``like``: a
        tensor whose dtype and device the zero takes."""
        if self.estimate == "ml" or not params:
            return like.new_zeros(())
        with poutine.seed(rng_seed=0):
            trace = poutine.trace(self.model.conditioned(params)).get_trace(self.example)
        return sum(trace.nodes[k]["fn"].log_prob(trace.nodes[k]["value"]).sum() for k in params)

    def parameters(self) -> Iterator[torch.Tensor]:
        return itertools.chain(self.model.parameters(), self.guide.parameters())

    def restarts(self, train, seeds, config, *, own=None):
        """Full-batch EM of a family whose E- and M-steps take a restart dim, on one process:
        all restarts in one pass (:class:`~._em_restarts.BatchedEM`); otherwise None."""
        full_batch = config.batch_size is None or config.batch_size >= len(train)
        if not (self.model.batched_restarts and full_batch) or self.distributed:
            return None
        return BatchedEM(self, train, seeds, own)

    def state_dict(self) -> dict[str, Any]:
        return {"stats": dict(self.stats or {}), "updates": self.updates, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = dict(state["stats"]) or None
        self.updates = int(state["updates"])
        self.previous = float(state.get("previous", torch.inf))  # (a checkpoint from before em_tol: none)


class EM(Objective):
    r"""Exact EM: closed-form E- and M-steps, full batch or stepwise (a point estimate of the globals).

    **Estimator.** Each step's E-step takes the expected complete-data sufficient statistics
    under the exact local posterior :math:`p(z_n \mid x_n, \theta)`; the M-step maximises in
    closed form the log posterior (``em_estimate = "map"``) or log-likelihood (``"ml"``),
    which never decreases with full batches. With minibatches it is stepwise EM: running
    statistics :math:`s \leftarrow (1 - \rho_k) s + \rho_k \tfrac NB s_\text{batch}`,
    :math:`\rho_k = (k + 1)^{-\text{em\_step\_decay}}`, and an M-step after every minibatch. The
    loss is :math:`-[\tfrac NB \sum_{n \in \text{batch}} \log p(x_n \mid \theta) + \log p(\theta)]`
    (the prior only under ``"map"``), on the scale of the ELBO losses.

    **Needs** a family with closed-form E- and M-steps
    (:class:`~pplvm.families.capabilities.ClosedFormEM`: GMM, HMM, PPCA, FA) for the chosen estimate,
    and a guide holding a point estimate of the globals (``map`` or ``AutoDelta``), which it
    writes in place.
    """

    names = ("em",)

    class Config(ObjectiveConfig):
        em_estimate: Literal["auto", "map", "ml"] = Field(
            "auto",
            description="'map' (the M-step maximises the posterior under the family's priors), 'ml' (maximum "
            "likelihood, priors ignored: what scikit-learn and hmmlearn fit), or 'auto': map where the model "
            "has it in closed form, else ml",
        )
        em_tol: float | None = Field(
            None,
            gt=0,
            description="full batch: stop once an EM iteration improves the objective by less than this per "
            "datum (scikit-learn's tol; hmmlearn's tol is this times the number of data); none = run every epoch",
        )
        em_step_decay: float = Field(
            0.6,
            gt=0.5,
            le=1,
            description="with minibatches (stepwise EM): step size (k + 1)^-decay for the k-th minibatch's statistics",
        )

    def resolve(self, model: Any) -> ObjectiveConfig:
        if self.config.em_estimate != "auto" or not isinstance(model, ClosedFormEM):
            return self.config
        estimate = "map" if "map" in model.em_estimates() else "ml"
        return self.config.model_copy(update={"em_estimate": estimate})

    def refusal(self, model: Any, guide: GuideTraits) -> str | None:
        family = model.config.family
        if not isinstance(model, ClosedFormEM):
            return self.cannot(model, "it needs closed-form E- and M-steps (ClosedFormEM), which this family lacks")
        estimate = self.resolve(model).em_estimate
        if estimate not in model.em_estimates():
            return (
                f"objective.em_estimate = {estimate!r}: family {family!r} with this configuration has a "
                f"closed-form M-step only for {' | '.join(repr(e) for e in model.em_estimates())} (a full covariance's "
                "LogNormal scales and LKJ correlations have no closed-form mode; use model.covariance = 'diag')"
            )
        if not guide.point_estimate:
            return (
                "objective.name = 'em' fits a point estimate of the globals: it needs a guide that holds one, "
                "guide.kind = 'map' (or 'AutoDelta')"
            )
        return None

    def rule(self, model: Any, guide: Any, card: Any, *, held_out: bool = True) -> EMStep:
        c = self.resolve(model)
        return EMStep(model, guide, estimate=c.em_estimate, decay=c.em_step_decay, tol=c.em_tol)

    def globals_label(self) -> str:
        how = {"map": "maximum a posteriori", "ml": "maximum likelihood"}.get(self.config.em_estimate, "auto")
        return f"point estimate of the global latents (EM, {how})"
