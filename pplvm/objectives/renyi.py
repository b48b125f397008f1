"""Rényi / IWAE bounds as a torch loss, correct under minibatch subsampling.

Pyro's :class:`~pyro.infer.RenyiELBO` has no ``differentiable_loss`` (so it cannot drive
:class:`~pyro.infer.elbo.ELBOModule`, which the trainer uses), and it applies a plate's
subsampling factor N / B *inside* the log-mean-exp over particles, so a minibatch estimate is
not N / B times the bound of the batch. :class:`RenyiBound` computes, for data n of a batch of
B out of N and K particles ``z_nk ~ q``,

    N / B * Σ_n 1/(1-α) log (1/K) Σ_k w_nk^(1-α),      log w_nk = log p(x_n, z_nk) - log q(z_nk | x_n)

(α = 0: the IWAE bound, Burda et al. 2016), with each site's log-density divided by the
subsampling factors of its plates before the log-mean-exp and the product of the plates common
to every site applied after; any other scale (e.g. a KL-annealing weight) stays inside. When
not every site lies in the same plates, dependent plate dims are summed as Pyro does (one
weight per particle for the whole batch). The gradient is that of the bound itself, which
needs a fully reparameterised guide.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from pyro.util import warn_if_nan

from ..errors import IncompatibleError
from .svi import SVIConfig, SVIObjective


class RenyiBound(RenyiELBO):
    """:class:`~pyro.infer.RenyiELBO` with ``differentiable_loss`` and per-datum subsampling."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        weights, scale = [], 1.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            w, scale = _log_weight(model_trace, guide_trace)
            weights.append(w)
        log_w = weights[0] if self.vectorize_particles and self.num_particles > 1 else torch.stack(weights)
        log_mean = torch.logsumexp((1.0 - self.alpha) * log_w, dim=0) - math.log(self.num_particles)
        loss = -scale * log_mean.sum() / (1.0 - self.alpha)
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


def _log_weight(model_trace, guide_trace) -> tuple[torch.Tensor, float]:
    """``log p(x, z) - log q(z)`` per particle (and per datum where every site shares the data
    plate), without the common plates' subsampling factors, and the product of those factors."""
    sites = [s for t in (model_trace, guide_trace) for s in t.nodes.values() if s["type"] == "sample"]
    plates = [{f for f in s["cond_indep_stack"] if f.full_size is not None} for s in sites]
    common = set.intersection(*plates) if plates else set()
    sum_dims = get_dependent_plate_dims(sites)
    factor = math.prod(f.full_size / f.size for f in common)
    total = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            if sign < 0 and not is_identically_zero(site["score_parts"].score_function):
                raise IncompatibleError(
                    f"objective renyi / iwae needs a reparameterised guide; site {site['name']!r} is not"
                )
            total = total + sign * torch_sum(site["log_prob"], sum_dims) / factor
    return total, factor


class RenyiConfig(SVIConfig):
    alpha: float = Field(0.5, description="Renyi alpha (1 is the ELBO, 0 the IWAE bound)")


class Renyi(SVIObjective):
    r"""RenyiELBO(alpha) (as :class:`RenyiBound`: a torch loss, per-datum minibatches).

    **Estimator.** The Rényi bound (Li & Turner 2016) with K = ``num_particles`` draws
    :math:`z_{nk} \sim q(\cdot \mid x_n)` and :math:`\log w_{nk} = \log p(x_n, z_{nk}) - \log q(z_{nk} \mid x_n)`,
    for a minibatch of B of N data:

    .. math::

        \mathcal L_\alpha = \frac NB \sum_{n \in \text{batch}} \frac1{1 - \alpha}
        \log \frac1K \sum_{k=1}^K w_{nk}^{1 - \alpha},

    the subsampling factor applied outside the log-mean-exp (Pyro's ``RenyiELBO`` keeps it
    inside). α = 0 is the IWAE bound, α → 1 the ELBO (refused: use ``elbo``).

    **Needs** a fully reparameterised guide (its gradient is the bound's own) and no enumerated
    locals.
    """

    names = ("renyi",)
    Config = RenyiConfig

    def elbo(self, model) -> RenyiBound:
        return RenyiBound(alpha=self.config.alpha, **self.particles(model))

    def refusal(self, model, guide) -> str | None:
        if self.config.alpha == 1:
            return "objective.alpha = 1 is the ELBO; use objective.name = 'elbo'"
        return super().refusal(model, guide)


class IWAEConfig(SVIConfig):
    num_particles: int = Field(5, ge=1, description="importance samples k of the bound (at least 2)")


class IWAE(SVIObjective):
    r"""RenyiELBO(alpha=0): the IWAE bound with k = num_particles.

    **Estimator** (Burda et al. 2016). With K = ``num_particles`` ≥ 2 draws
    :math:`z_{k} \sim q(\cdot \mid x_n)`,

    .. math::

        \mathrm{IWAE}_K(x_n) = \log \frac1K \sum_{k=1}^K \frac{p(x_n, z_k)}{q(z_k \mid x_n)}
        \;\le\; \log p(x_n),

    tighter than the ELBO and rising to :math:`\log p(x_n)` as K grows; per datum, scaled by
    N / B outside the log-mean-exp (:class:`RenyiBound` with α = 0). Its guide gradient's
    signal-to-noise ratio falls as K grows: ``iwae_dreg`` has the same value with a better one.

    **Needs** a fully reparameterised guide and no enumerated locals. **Serves** VAEs, PPCA/FA
    with an encoder, your models with continuous locals.
    """

    names = ("iwae",)
    Config = IWAEConfig

    def elbo(self, model) -> RenyiBound:
        return RenyiBound(alpha=0.0, **self.particles(model))

    def refusal(self, model, guide) -> str | None:
        if self.config.num_particles < 2:
            return f"objective.num_particles: {self.config.name} needs k >= 2 particles"
        return super().refusal(model, guide)
