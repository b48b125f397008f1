"""Gaussian diffusion mechanics: noise schedules, Gaussian KL, and the discretized decoder.

Notation (Ho et al. 2020): steps ``t = 1..T``, ``β_t`` the forward variances,
``α_t = 1 - β_t``, ``ᾱ_t = Π_{s ≤ t} α_s`` (``ᾱ_0 = 1``)::

    q(z_t | z_{t-1}) = N(√α_t z_{t-1}, β_t I)              the forward (noising) chain
    q(z_t | x)       = N(√ᾱ_t x, (1 - ᾱ_t) I)              its marginal, in closed form
    q(z_{t-1} | z_t, x) = N(μ̃_t, β̃_t I),                   the posterior of one step
        μ̃_t = √ᾱ_{t-1} β_t / (1 - ᾱ_t) x + √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) z_t
        β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t

Schedules are computed in float64 and cast only when used (``Schedule.to``), as diffusers'
``scheduling_ddpm.py`` does; every table is indexed by ``t`` with entry 0 standing for ``t = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from pyro.distributions import TorchDistribution, constraints

from ..errors import CardError


def linear_betas(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s linear schedule ``β_t`` from ``beta_start`` to ``beta_end`` (1e-4 .. 0.02 for
    their T = 1000; fewer steps need larger values): ``(T,)`` float64."""
    return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)


def cosine_betas(steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule ``ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2) / ᾱ(0)``,
    with ``β_t`` clipped at ``max_beta``: ``(T,)`` float64."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


@dataclass(frozen=True)
class Schedule:
    """Every table the chain needs, each ``(T + 1,)`` indexed by ``t`` (entry 0 is ``t = 0``
    where it is defined, else a copy of entry 1 that is never used)."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_bar: torch.Tensor
    posterior_variance: torch.Tensor  # β̃_t (β̃_1 = 0)
    posterior_log_variance: torch.Tensor  # log β̃_t with β̃_1 replaced by β̃_2 (Ho et al.'s "clipped")
    posterior_coef_x: torch.Tensor  # coefficient of x in μ̃_t
    posterior_coef_z: torch.Tensor  # coefficient of z_t in μ̃_t

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "Schedule":
        """Build from ``β_1..β_T`` ``(T,)`` (float64), checking ``0 < β_t < 1``."""
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or len(betas) < 1:
            raise CardError(f"model.steps: expected at least one diffusion step, got {len(betas)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise CardError(
                f"model.beta_start / model.beta_end: every β_t must lie in (0, 1); "
                f"this schedule spans {float(betas.min()):.4g} .. {float(betas.max()):.4g}"
            )
        b = torch.cat([betas[:1], betas])  # index by t
        a = 1 - b
        abar = torch.cumprod(a[1:], 0)
        abar = torch.cat([torch.ones(1, dtype=torch.float64), abar])
        prev = abar[:-1]
        post_var = torch.cat([torch.zeros(1, dtype=torch.float64), (1 - prev) / (1 - abar[1:]) * b[1:]])
        clipped = post_var.clone()
        clipped[:2] = post_var[2] if len(post_var) > 2 else b[1]
        coef_x = torch.cat([torch.zeros(1, dtype=torch.float64), prev.sqrt() * b[1:] / (1 - abar[1:])])
        coef_z = torch.cat([torch.zeros(1, dtype=torch.float64), a[1:].sqrt() * (1 - prev) / (1 - abar[1:])])
        return cls(b, a, abar, post_var, clipped.log(), coef_x, coef_z)

    @property
    def steps(self) -> int:
        return len(self.betas) - 1

    def to(self, like: torch.Tensor) -> "Schedule":
        """The tables cast to ``like``'s dtype and device."""
        return Schedule(**{f.name: getattr(self, f.name).to(like) for f in fields(self)})

    def log_snr(self) -> torch.Tensor:
        """``λ_t = log(ᾱ_t / (1 - ᾱ_t))`` for ``t = 1..T``: ``(T,)``, decreasing."""
        abar = self.alphas_bar[1:]
        return abar.log() - (-abar).log1p()


def gather(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` shaped to broadcast against a tensor of ``ndim`` dims whose leading dims
    are ``t``'s: ``(*t.shape, 1, ..., 1)``."""
    v = table[t]
    return v.reshape(*v.shape, *([1] * (ndim - v.dim())))


def normal_kl(
    mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """``KL(N(mean_q, e^logvar_q) || N(mean_p, e^logvar_p))`` elementwise (broadcasting)."""
    return 0.5 * (
        logvar_p - logvar_q + torch.exp(logvar_q - logvar_p) + (mean_q - mean_p) ** 2 * torch.exp(-logvar_p) - 1.0
    )


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - e^d)`` for ``d ≤ 0``, accurate on both sides of ``-log 2``."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_normal_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(Φ(b) - Φ(a))`` for ``a < b`` (either may be infinite), computed in the lower tail
    (by symmetry when both are positive) so that narrow bins far from the mean stay finite."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    lhi, llo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lhi + _log1mexp((llo - lhi).clamp(max=-1e-30))


class _Grid(constraints.Constraint):
    """Values ``k / (K - 1)``, ``k = 0..K-1``."""

    def __init__(self, levels: int):
        self.levels = levels
        super().__init__()

    def check(self, value):
        k = value * (self.levels - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < 1e-4)


class DiscretizedNormal(TorchDistribution):
    """``Normal(loc, scale)`` integrated over the bins of ``K`` levels ``k / (K - 1)`` of
    ``[0, 1]`` (Ho et al.'s decoder for 8-bit images): each level owns the interval of width
    ``1 / (K - 1)`` around it, the two end levels own the tails, so the masses sum to 1 and
    ``log_prob`` is a log-probability of the quantised datum. Elementwise (event shape ``()``);
    ``loc``, ``scale`` broadcast."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, levels: int, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        self.levels = int(levels)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return _Grid(self.levels)

    def expand(self, batch_shape, _instance=None):
        return DiscretizedNormal(
            self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.levels, validate_args=False
        )

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0, 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half = 0.5 / (self.levels - 1)
        lower = torch.where(value <= half, -math.inf, (value - half - self.loc) / self.scale)
        upper = torch.where(value >= 1 - half, math.inf, (value + half - self.loc) / self.scale)
        return log_normal_mass(lower, upper)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            draw = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(
                shape, dtype=self.loc.dtype, device=self.loc.device
            )
            return (draw.clamp(0, 1) * (self.levels - 1)).round() / (self.levels - 1)


# ------------------------------------------------------------------ the forward process q
# The methods below are the fixed "encoder" of a diffusion model. ``y`` is a datum in the
# chain's units ``(*B, D)``; ``t`` an integer tensor of steps broadcasting against ``y``'s
# leading dims ``(*B,)``; every table is first cast with :meth:`Schedule.to`.


def q_step(s: Schedule, z_prev: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q(z_t | z_{t-1}) = N(√α_t z_{t-1}, β_t I)``: (mean, std), each like ``z_prev``."""
    return gather(s.alphas, t, z_prev.dim()).sqrt() * z_prev, gather(s.betas, t, z_prev.dim()).sqrt().expand_as(z_prev)


def q_marginal(s: Schedule, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q(z_t | x) = N(√ᾱ_t y, (1 - ᾱ_t) I)``: (mean, std), each like ``y``."""
    abar = gather(s.alphas_bar, t, y.dim())
    return abar.sqrt() * y, (1 - abar).sqrt().expand_as(y)


def q_posterior(s: Schedule, y: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q(z_{t-1} | z_t, x) = N(μ̃_t, β̃_t I)`` for ``t ≥ 2``: (mean, log-variance). At
    ``t = 1`` (where ``z_0 = y`` exactly, β̃_1 = 0) it returns ``y`` and the finite clipped
    ``log β̃_2``, so that callers may compute it for every row and discard those."""
    n = y.dim()
    mean = gather(s.posterior_coef_x, t, n) * y + gather(s.posterior_coef_z, t, n) * z
    return mean, gather(s.posterior_log_variance, t, n).expand_as(y)


def q_prior_kl(s: Schedule, y: torch.Tensor) -> torch.Tensor:
    """``KL(q(z_T | x) || N(0, I))`` summed over the last dim: ``(*B,)``."""
    abar = s.alphas_bar[-1]
    return normal_kl(abar.sqrt() * y, (1 - abar).log(), torch.zeros_like(y), torch.zeros_like(y)).sum(-1)
