"""The probability-flow ODE likelihood of a diffusion family (Song et al. 2021), shared by the
discrete-time DDPM (:mod:`.diffusion`) and the continuous-time VDM (:mod:`.vdm`).

A family gives its noise levels as a variance-preserving SDE on a time ``s ∈ [0, 1]`` (``s = 0``
at the first latent ``z_1``, ``s = 1`` at the last): ``q(z_s | x) = N(√ᾱ(s) y, (1 - ᾱ(s)) I)``,
i.e. ``dz = -½ β(s) z ds + √β(s) dW`` with ``β(s) = -d log ᾱ(s) / ds`` (its ``vp_rates(s)``
returns ``ᾱ(s)`` and ``d log ᾱ / ds``). The DDPM's discrete steps become continuous by
interpolating ``log ᾱ`` linearly between its steps, placed at ``s_t = (t - 1) / (T - 1)``: the
SDE's marginals equal the chain's at every step, and ``β(s)`` is constant between steps
(``(T - 1) · (-log α_{t+1})`` ≈ ``(T - 1) β_{t+1}``). The ε-predictor, trained at the steps, is
queried in between through its continuous time input. The ODE sharing the SDE's marginals is::

    dz/ds = -½ β(s) (z + ∇ log p_s(z)) = -½ β(s) (z - ε̂_θ(z, s) / √(1 - ᾱ(s)))

and the instantaneous change of variables (:mod:`pplvm.inference.prob_flow`) gives
``log p_0(y) = log N(z_1; 0, I) + ∫_0^1 ∇·f ds``: the density, at the first latent's noise
level, of the continuous model the ODE defines (for continuous data: the log-likelihood).

Data on K levels (``decoder = "discretized"``) are dequantised uniformly: ``x̃ = x + u / (K - 1)``,
``u ~ U(-½, ½)`` per value, and ``log P(x) ≥ E_u log p_0(2x̃ - 1) + D log(2 / (K - 1))`` (Jensen):
one draw of ``u`` per datum, so each datum's value is an unbiased estimate of a *lower bound* on
its discrete log-probability. Variational dequantisation (Ho et al. 2019) is not implemented.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from ..inference.prob_flow import flow_log_density
from ..schema import Section

if TYPE_CHECKING:
    from .diffusion import Diffusion

#: the extra likelihood a diffusion family declares (``LatentVariableModel.extra_likelihoods``)
ODE_LIKELIHOOD = {
    "ode": "probability-flow ODE, Hutchinson estimate (data on levels: uniformly dequantised, a lower bound)"
}


class ODEOptions(Section):
    """The card fields of the ODE likelihood (a diffusion family's ``[model]`` section)."""

    ode_rtol: float = Field(1e-5, gt=0, description="ODE likelihood: relative tolerance of the RK45 solver")
    ode_atol: float = Field(1e-5, gt=0, description="ODE likelihood: absolute tolerance of the RK45 solver")
    ode_divergence: Literal["rademacher", "gaussian", "exact"] = Field(
        "rademacher", description="ODE likelihood: Hutchinson probes, or the exact divergence (D passes; small D)"
    )


def interpolated_rates(log_abar: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``ᾱ(s)`` and ``d log ᾱ / ds`` (0-dim) for ``log ᾱ`` ``(T,)`` at ``s_t = (t - 1) / (T - 1)``,
    interpolated linearly (T ≥ 2)."""
    T = len(log_abar)
    pos = min(max(s, 0.0), 1.0) * (T - 1)
    i = min(int(math.floor(pos)), T - 2)
    slope = log_abar[i + 1] - log_abar[i]
    return (log_abar[i] + slope * (pos - i)).exp(), slope * (T - 1)


def drift(model: "Diffusion", z: torch.Tensor, s: float) -> torch.Tensor:
    """The probability-flow drift ``dz/ds`` ``(B, D)`` at ``z`` ``(B, D)`` and time ``s``."""
    abar, dlog = model.vp_rates(s, z)
    eps = model.epsilon(z, torch.full((len(z),), s, dtype=z.dtype, device=z.device))
    return 0.5 * dlog * (z - eps / (1 - abar).sqrt())


def log_likelihood(model: "Diffusion", x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """The ODE log-likelihood per datum of ``x`` ``(N, D)`` (data units): ``(N,)`` in nats, with
    the probes and the dequantisation drawn from a generator seeded by ``seed``."""
    c = model.config
    g = torch.Generator(device=x.device).manual_seed(seed)
    offset = 0.0
    if c.decoder == "discretized":
        k = c.levels - 1
        x = x + (torch.rand(x.shape, generator=g, dtype=x.dtype, device=x.device) - 0.5) / k
        offset = model.dim * math.log(2 / k)
    y = model.to_chain(x)

    def prior(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(-1) - 0.5 * model.dim * math.log(2 * math.pi)

    ll, _ = flow_log_density(
        lambda z, s: drift(model, z, s),
        y,
        0.0,
        1.0,
        prior,
        divergence_kind=c.ode_divergence,
        rtol=c.ode_rtol,
        atol=c.ode_atol,
        generator=g,
    )
    return ll + offset
