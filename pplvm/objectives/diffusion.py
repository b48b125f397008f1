"""Objectives of a diffusion family (:mod:`pplvm.families.diffusion`).

``diffusion`` — the discrete-time bound ``-ELBO = L_0 + Σ_{t=2..T} L_{t-1} + L_T``, estimated
without bias by drawing ``k = num_particles`` steps ``t ~ U{1..T}`` per datum, each drawn term
analytic given ``z_t ~ q(z_t | x)`` (a Gaussian KL, or the decoder's ``-log p(x | z_1)``)::

    -ELBO(x) ≈ T · (1/k) Σ_j L_{t_j - 1}(x, z_{t_j}) + L_T(x)

With ``weighting = "simple"`` it is instead Ho et al.'s ``L_simple = E_{t, ε} ‖ε - ε̂_θ(z_t, t)‖²``
(summed over dimensions), which weights the steps differently and is *not* a bound; with a
learned reverse variance, ``λ · (the ELBO estimate with μ_θ stopped)``, λ = 1e-3, is added so
that the variance is trained (Nichol & Dhariwal's hybrid objective).

``vdm`` — the continuous-time bound of Kingma et al. (2021) for the same endpoints (``z_1`` at
time s = 0, ``z_T`` at s = 1): with ``γ(s) = -log SNR(s)`` interpolated linearly between the
family's T steps (``s_t = (t - 1) / (T - 1)``)::

    -ELBO_∞(x) = L_0 + L_T + ½ E_{s ~ U(0, 1)} [γ'(s) ‖ε - ε̂_θ(z_s, s)‖²]

with antithetic draws ``s_i = (u + i / B) mod 1`` over a batch. A family with a continuous-time
bound of its own (:class:`~pplvm.families.capabilities.ContinuousTimeLoss`: VDM with its learned
schedule, :mod:`pplvm.families.vdm`) is trained by that instead. As ``T → ∞`` refinement never
loosens the bound (the T-step bound the family's ``log_likelihood`` reports is ≥ this loss).

Both return the loss summed over the data plate scaled to ``num_data`` (as Pyro's losses).
The guide (the fixed forward chain) is used through its closed form, not traced.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from pyro.infer import ELBO

from ..data.base import values
from ..errors import IncompatibleError
from ..families.base import ContinuousTimeLoss
from ..families.diffusion import Diffusion
from .base import ObjectiveConfig
from .svi import SVIObjective

HYBRID_WEIGHT = 1e-3


class DiffusionELBO(ELBO):
    """Time-subsampled diffusion bound (``weighting = "elbo"``) or L_simple (``"simple"``)."""

    def __init__(self, weighting: Literal["elbo", "simple"] = "elbo", num_particles: int = 1):
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.weighting = weighting

    def per_datum(self, model, x: torch.Tensor) -> torch.Tensor:
        """The loss of each datum of ``x`` ``(B, D)``: ``(B,)``."""
        b, k, T = len(x), self.num_particles, model.steps
        t = torch.randint(1, T + 1, (k * b,), device=x.device)
        noise = torch.randn(k * b, x.shape[-1], dtype=x.dtype, device=x.device)
        xs = x.repeat(k, 1)
        learned = model.config.variance == "learned"
        if self.weighting == "simple":
            vlb, simple = model.step_terms(xs, t, noise, detach_mean=True, bound=learned)
            loss = simple.view(k, b).mean(0)
            return loss + HYBRID_WEIGHT * T * vlb.view(k, b).mean(0) if learned else loss
        terms, _ = model.step_terms(xs, t, noise)
        return T * terms.view(k, b).mean(0) + model.prior_term(x)

    def differentiable_loss(self, model, guide, x, num_data=None):
        obs = values(x)
        return self.per_datum(model, obs).sum() * ((num_data or len(obs)) / len(obs))

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("the diffusion bound is computed in closed form, not from traces")


class VDMLoss(DiffusionELBO):
    """Continuous-time diffusion bound (VDM) with antithetic time draws."""

    def __init__(self, num_particles: int = 1):
        super().__init__("elbo", num_particles)

    def per_datum(self, model, x: torch.Tensor) -> torch.Tensor:
        if isinstance(model, ContinuousTimeLoss):  # a declared capability: the family's own bound (VDM)
            return model.continuous_time_loss(x, self.num_particles)
        T = model.steps
        if T < 2:
            raise IncompatibleError("objective.name = 'vdm' needs model.steps >= 2 (a schedule to interpolate)")
        if model.config.variance == "learned":
            raise IncompatibleError(
                "objective.name = 'vdm' trains ε̂ only, so model.variance = 'learned' would "
                "stay untrained; use model.variance = 'beta' or 'posterior'"
            )
        b, k = len(x), self.num_particles
        y = model.to_chain(x)
        lam = model.tables(x).log_snr()  # (T,) at s_t = (t - 1) / (T - 1), decreasing
        u = torch.rand((), dtype=x.dtype, device=x.device)
        s = (u + torch.arange(k * b, dtype=x.dtype, device=x.device) / (k * b)) % 1.0
        pos = s * (T - 1)
        i = pos.floor().long().clamp(max=T - 2)
        slope = (lam[i + 1] - lam[i]) * (T - 1)  # dλ/ds < 0, so γ'(s) = -slope > 0
        lam_s = lam[i] + slope * (pos - i) / (T - 1)
        abar = torch.sigmoid(lam_s)[:, None]
        noise = torch.randn(k * b, x.shape[-1], dtype=x.dtype, device=x.device)
        z = abar.sqrt() * y.repeat(k, 1) + (1 - abar).sqrt() * noise
        eps = model.epsilon(z, s)
        diffusion = 0.5 * (-slope) * ((noise - eps) ** 2).sum(-1)
        recon, _ = model.step_terms(x, torch.ones(b, dtype=torch.long, device=x.device), torch.randn_like(x))
        return diffusion.view(k, b).mean(0) + recon + model.prior_term(x)


class DiffusionBoundConfig(ObjectiveConfig):
    num_particles: int = Field(1, ge=1, description="time steps drawn per datum")


class DiffusionBound(SVIObjective):
    r"""The bound of a diffusion family over subsampled time steps, analytic KLs (weighting: elbo | simple).

    **Estimator.** With K = ``num_particles`` steps :math:`t_j \sim U\{1..T\}` per datum, each
    term analytic given :math:`z_{t_j} \sim q(z_{t_j} \mid x)` (a Gaussian KL, or the decoder's
    :math:`-\log p_\theta(x \mid z_1)` at t = 1), an unbiased estimate of the family's bound:

    .. math::

        -\mathrm{ELBO}(x) \approx \frac TK \sum_{j=1}^K L_{t_j - 1}(x, z_{t_j}) + L_T(x).

    ``weighting = "simple"``: Ho et al.'s
    :math:`L_\text{simple} = \mathbb E_{t, \epsilon} \|\epsilon - \hat\epsilon_\theta(z_t, t)\|^2`
    (summed over dimensions; *not* a bound), plus, for a learned reverse variance,
    :math:`10^{-3}\, \tfrac TK \sum_j L_{t_j - 1}` with :math:`\mu_\theta` stopped (Nichol & Dhariwal's
    hybrid objective). The loss is summed over the batch and scaled to N data.

    **Needs** a diffusion family (its noise schedule and closed-form terms); refused for one
    that learns its schedule through a continuous-time bound (VDM: use ``vdm``). The guide
    (``forward``) is used through its closed form, not traced.
    """

    names = ("diffusion",)
    #: whether it trains a family's own continuous-time bound (ContinuousTimeLoss)
    continuous_time = False

    class Config(DiffusionBoundConfig):
        weighting: Literal["elbo", "simple"] = Field(
            "elbo", description="the ELBO's weights of the steps, or Ho et al.'s L_simple (not a bound)"
        )

    def elbo(self, model: Any) -> DiffusionELBO:
        return DiffusionELBO(self.config.weighting, self.config.num_particles)

    def refusal(self, model: Any, guide: Any) -> str | None:
        if not isinstance(model, Diffusion):
            return self.cannot(model, "it computes its terms in closed form from a diffusion family's noise schedule")
        if isinstance(model, ContinuousTimeLoss) and not self.continuous_time:
            return self.cannot(
                model, "it learns its noise schedule through its continuous-time bound: use objective.name = 'vdm'"
            )
        return super().refusal(model, guide)


class VDMBound(DiffusionBound):
    r"""The continuous-time diffusion bound (VDM), antithetic time draws.

    **Estimator** (Kingma et al. 2021). The T → ∞ bound over the same endpoints,

    .. math::

        -\mathrm{ELBO}_\infty(x) = L_0 + L_T + \tfrac12\, \mathbb E_{s \sim U(0,1),\, \epsilon}
        \big[\gamma'(s)\, \|\epsilon - \hat\epsilon_\theta(z_s, s)\|^2\big],

    :math:`\gamma = -\log \mathrm{SNR}` interpolated linearly between a diffusion family's T
    steps (at :math:`s_t = (t-1)/(T-1)`), with antithetic draws :math:`s_i = (u + i/n) \bmod 1`
    over the batch's n = B·K draws. A family with a continuous-time bound of its own
    (:class:`~pplvm.families.capabilities.ContinuousTimeLoss`: VDM's learned schedule) is trained by
    that instead. Refining a schedule never loosens the bound: the family's T-step bound is at
    least this loss.

    **Needs** a diffusion family with at least 2 steps and a fixed reverse variance (``beta`` or
    ``posterior``: this loss trains :math:`\hat\epsilon` only), or one with its own
    continuous-time bound.
    """

    names = ("vdm",)
    continuous_time = True
    Config = DiffusionBoundConfig

    def elbo(self, model: Any) -> VDMLoss:
        return VDMLoss(self.config.num_particles)

    def refusal(self, model: Any, guide: Any) -> str | None:
        why = super().refusal(model, guide)
        if why is not None or isinstance(model, ContinuousTimeLoss):
            return why
        if model.config.variance == "learned":
            return (
                "objective.name = 'vdm' trains ε̂ only, so model.variance = 'learned' would "
                "stay untrained; use model.variance = 'beta' or 'posterior'"
            )
        if model.steps < 2:
            return "objective.name = 'vdm' needs model.steps >= 2 (a schedule to interpolate)"
        return why


__all__ = ["DiffusionBound", "DiffusionELBO", "VDMBound", "VDMLoss"]
