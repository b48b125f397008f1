"""Variational diffusion model (VDM; Kingma et al. 2021): continuous-time diffusion with a learned
monotone noise schedule.

Time ``s ∈ [0, 1]``; the schedule ``γ_η(s) = -log SNR(s)`` rises from ``γ_0`` to ``γ_1``;
``α_s² = sigmoid(-γ(s))``, ``σ_s² = sigmoid(γ(s))``; the datum ``y`` (chain units, as
:mod:`.diffusion`'s) is noised as ``z_s = α_s y + σ_s ε``. The bound (T → ∞)::

    -ELBO(x) = L_0 + L_∞ + L_1
    L_0 = E_{z_0 ~ q} -log p(x | z_0),   p(x | z_0): mean z_0 / α_0, scale σ_0 / α_0, discretized
          over the K levels (``decoder = "discretized"``) or Gaussian
    L_∞ = ½ E_{s ~ U(0, 1), ε} [γ'(s) ‖ε - ε̂_θ(z_s, s)‖²]          the diffusion loss
    L_1 = KL(q(z_1 | x) || N(0, I))                                    the prior term

``s`` is drawn low-discrepancy over a batch (``s_i = (u + i / n) mod 1``). The schedule is
``γ_η(s) = γ_0 + (γ_1 - γ_0) (g(s) - g(0)) / (g(1) - g(0))`` with ``g`` the paper's monotone
network (positive weights: ``g(s) = l_1(s) + l_3(sigmoid(l_2(l_1(s))))``) and ``γ_1 - γ_0 > 0``
(softplus), so γ is increasing by construction. ``L_∞`` depends on the schedule only through its
endpoints (the paper's invariance), so the endpoints are trained by the bound, and the shape
``g`` by the gradient of the *squared* diffusion loss: its estimator's second moment, whose
minimum at fixed mean is its variance (the paper's variance-minimising objective; done by
scaling the gradient reaching ``g`` by ``L_∞ / mean(L_∞)`` per draw in the backward pass: the
squared loss's gradient over ``2 mean(L_∞)`` of the batch, a positive factor Adam does not see,
which keeps it at the bound's magnitude where a gradient-norm clip sums over all parameters).

Generation and the Pyro model (sites ``z_T .. z_1``) are the family's ``steps``-step
discretisation (:class:`~.diffusion.Diffusion` with ``ᾱ_t = α²(s_t)``, ``s_t = (t - 1) / (T - 1)``,
posterior variances), the ancestral sampler of the paper; :meth:`log_likelihood` is the
continuous-time bound (``likelihood = "bound"``), and ``kind = "ode"`` the probability-flow ODE
on the learned schedule (:mod:`._diffusion_ode`). Train with ``objective.name = "vdm"``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..data.base import values
from ..distributions.diffusion import Schedule, normal_kl
from .capabilities import ContinuousTimeLoss
from .diffusion import Diffusion, DiffusionConfig


class VDMConfig(DiffusionConfig):
    family: Literal["vdm"] = "vdm"  # type: ignore[assignment]
    steps: int = Field(200, ge=2, description="T: steps of the sampler and of the Pyro model (training is T = ∞)")
    variance: Literal["posterior"] = Field("posterior", description="the sampler's reverse variance: posterior")
    gamma_start: float = Field(-10.0, description="initial γ_0 = -log SNR at s = 0 (learned)")
    gamma_end: float = Field(6.0, description="initial γ_1 = -log SNR at s = 1 (learned; above gamma_start)")
    schedule_hidden: int = Field(64, ge=1, description="width of the monotone schedule network")
    likelihood_times: int = Field(64, ge=1, description="log_likelihood: times s drawn per datum for L_∞")

    @model_validator(mode="after")
    def _checks(self):
        fields = type(self).model_fields
        unused = sorted(k for k in ("schedule", "beta_start", "beta_end") if getattr(self, k) != fields[k].default)
        if unused:
            raise ValueError(f"model.{unused[0]}: not used by model.family = 'vdm' (its schedule is learned)")
        if not self.gamma_end > self.gamma_start:
            raise ValueError(f"model.gamma_end: expected above gamma_start = {self.gamma_start}, got {self.gamma_end}")
        return self


class MonotoneSchedule(nn.Module):
    """``γ_η(s)`` and ``γ_η'(s)`` for times ``s`` ``(n,)``: increasing from ``γ_0`` to ``γ_1`` (see the
    module's docstring); at its initial values nearly linear."""

    def __init__(self, gamma_start: float, gamma_end: float, hidden: int = 64):
        super().__init__()
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_start)))
        gap = gamma_end - gamma_start
        self.raw_gap = nn.Parameter(torch.tensor(gap + math.log(-math.expm1(-gap))))  # softplus⁻¹
        g = torch.Generator().manual_seed(0)
        self.w1, self.b1 = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(0.0))
        self.w2 = nn.Parameter(torch.randn(hidden, generator=g))
        self.b2 = nn.Parameter(torch.randn(hidden, generator=g))
        self.w3 = nn.Parameter(1e-2 * torch.randn(hidden, generator=g))

    def endpoints(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gamma_0, self.gamma_0 + F.softplus(self.raw_gap)

    def _g(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw monotone network ``g(s)`` and ``g'(s)`` (weights ``|w|``)."""
        w1, w2, w3 = self.w1.abs(), self.w2.abs(), self.w3.abs()
        h = w1 * s + self.b1
        a = torch.sigmoid(h[..., None] * w2 + self.b2)
        return h + (a * w3).sum(-1), w1 + (a * (1 - a) * w2 * w3).sum(-1) * w1

    def shape(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised shape ``ĝ(s) = (g(s) - g(0)) / (g(1) - g(0))`` in [0, 1] and ``ĝ'(s)``."""
        g, dg = self._g(s)
        ends, _ = self._g(torch.tensor([0.0, 1.0], dtype=s.dtype, device=s.device))
        return (g - ends[0]) / (ends[1] - ends[0]), dg / (ends[1] - ends[0])

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g0, g1 = self.endpoints()
        shape, dshape = self.shape(s)
        return g0 + (g1 - g0) * shape, (g1 - g0) * dshape


class VariationalDiffusion(Diffusion, ContinuousTimeLoss):
    r"""Variational diffusion model (Kingma et al. 2021): continuous time, a learned monotone noise schedule.

    **Prior and likelihood.** As :class:`~pplvm.families.diffusion.Diffusion`'s, in continuous
    time :math:`s \in [0, 1]`: a learned schedule :math:`\gamma_\eta(s) = -\log \mathrm{SNR}(s)`,
    increasing from :math:`\gamma_0` to :math:`\gamma_1` (a monotone network, endpoints learned),
    noises the datum (chain units y) as

    .. math::

        z_s = \alpha_s y + \sigma_s \epsilon, \qquad
        \alpha_s^2 = \mathrm{sigmoid}(-\gamma_\eta(s)), \quad \sigma_s^2 = \mathrm{sigmoid}(\gamma_\eta(s)),

    with prior :math:`z_1 \sim \mathcal N(0, I)` and decoder :math:`p(x \mid z_0)` of mean
    :math:`z_0/\alpha_0` and scale :math:`\sigma_0/\alpha_0`, Gaussian or discretized over
    ``levels``. Its Pyro model, generation and sampler are the ``steps``-step chain with
    :math:`\bar\alpha_t = \alpha^2(s_t)`, :math:`s_t = (t - 1)/(T - 1)`.

    **Marginal: a bound** (T → ∞). ``log_likelihood`` returns :math:`\mathrm{ELBO}(x)` with

    .. math::

        -\mathrm{ELBO}(x) = \underbrace{\mathbb E_{q(z_0 \mid x)}[-\log p(x \mid z_0)]}_{L_0}
        + \underbrace{\tfrac12 \mathbb E_{s \sim U(0,1),\, \epsilon}\big[\gamma_\eta'(s)
        \|\epsilon - \hat\epsilon_\theta(z_s, s)\|^2\big]}_{L_\infty}
        + \underbrace{\mathrm{KL}\big(q(z_1 \mid x) \,\|\, \mathcal N(0, I)\big)}_{L_1},

    :math:`L_\infty` averaged over ``model.likelihood_times`` low-discrepancy draws
    :math:`s_i = (u + i/n) \bmod 1` per datum (``likelihood_terms`` gives the three terms);
    ``kind = "ode"``: the probability-flow ODE on the learned schedule.

    **Latent structure.** A fixed guide (the forward process, guide ``forward``) and a
    continuous-time bound of its own (:class:`~pplvm.families.capabilities.ContinuousTimeLoss`): the
    ``vdm`` objective trains it, the schedule's endpoints by the bound and its shape by the
    variance-minimising gradient of :math:`L_\infty^2`; the discrete-time ``diffusion``
    objective is refused (it would leave the schedule untrained).

    **Card.** ``model.gamma_start``, ``gamma_end``, ``schedule_hidden``, ``likelihood_times``,
    ``steps`` (the sampler's) and the denoiser's. From ``models/vdm_digits.toml``:

    .. code-block:: toml

        [model]
        family = "vdm"
        steps = 200
        gamma_start = -8.0
        gamma_end = 6.0
        decoder = "discretized"
        levels = 17
        denoiser = "unet"

        [guide]
        kind = "forward"

        [objective]
        name = "vdm"
        num_particles = 4
    """

    Config = VDMConfig

    def __init__(self, config: VDMConfig, dim: int):
        super().__init__(config, dim)
        self.gamma = MonotoneSchedule(config.gamma_start, config.gamma_end, config.schedule_hidden)

    # --------------------------------------------------------- the schedule as a chain
    def tables(self, like: torch.Tensor) -> Schedule:
        """The ``steps``-step chain of the learned schedule, ``ᾱ_t = sigmoid(-γ(s_t))`` (float64
        tables cast to ``like``; rebuilt when the schedule's parameters change)."""
        key = (like.dtype, like.device, tuple(p._version for p in self.gamma.parameters()))
        if key not in self._cast:
            with torch.no_grad():
                s = torch.linspace(0, 1, self.steps, dtype=torch.float64, device=like.device)
                abar = torch.sigmoid(-self._gamma64(s))
                prev = torch.cat([abar.new_ones(1), abar[:-1]])
                self._cast = {key: Schedule.from_betas((1 - abar / prev).clamp(1e-12, 1 - 1e-12).cpu()).to(like)}
        return self._cast[key]

    def _gamma64(self, s: torch.Tensor) -> torch.Tensor:
        params = {k: v.detach().double() for k, v in self.gamma.named_parameters()}
        return torch.func.functional_call(self.gamma, params, (s,))[0]

    def vp_rates(self, s: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ᾱ(s) = sigmoid(-γ(s))`` and ``d log ᾱ / ds = -γ'(s) sigmoid(γ(s))``."""
        gamma, dgamma = self.gamma(torch.tensor([s], dtype=like.dtype, device=like.device))
        return torch.sigmoid(-gamma[0]), -dgamma[0] * torch.sigmoid(gamma[0])

    # ------------------------------------------------------------------ the bound
    def vdm_terms(
        self, x: torch.Tensor, times: int, *, variance_gradient: bool = False, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``L_0``, ``L_∞`` (``times`` low-discrepancy draws of ``s`` per datum, averaged) and
        ``L_1`` per datum of ``x`` ``(B, D)`` (data units), each ``(B,)``. ``variance_gradient``:
        the gradient reaching the schedule's shape is that of ``L_∞²`` (see the module)."""
        y, b, n = self.to_chain(x), len(x), len(x) * times
        kw = {"dtype": x.dtype, "device": x.device}
        g0, g1 = self.gamma.endpoints()
        u = torch.rand((), generator=generator, **kw)
        s = (u + torch.arange(n, **kw) / n) % 1.0
        shape, dshape = self.gamma.shape(s)
        gamma, dgamma = g0 + (g1 - g0) * shape, (g1 - g0) * dshape
        noise = torch.randn(n, self.dim, generator=generator, **kw)
        z = torch.sigmoid(-gamma).sqrt()[:, None] * y.repeat(times, 1) + torch.sigmoid(gamma).sqrt()[:, None] * noise
        diffusion = 0.5 * dgamma * ((noise - self.epsilon(z, s)) ** 2).sum(-1)
        if variance_gradient and torch.is_grad_enabled():
            # d(Σ L²) / (2 mean L): the variance's direction (Adam does not see its scale) at the
            # bound's magnitude, so a gradient-norm clip over all parameters is not ruled by it
            scale = diffusion.detach() / diffusion.detach().mean().clamp_min(torch.finfo(x.dtype).tiny)
            shape.register_hook(lambda g: g * scale)
            dshape.register_hook(lambda g: g * scale)
        # L_0: z_0 ~ q(z_0 | x), decoder mean z_0 / α_0 and scale σ_0 / α_0 (= e^{γ_0 / 2})
        a0 = torch.sigmoid(-g0).sqrt()
        z0 = a0 * y + torch.sigmoid(g0).sqrt() * torch.randn(y.shape, generator=generator, **kw)
        recon = -self.decoder_dist(z0 / a0, g0.expand_as(y)).log_prob(x)
        a1 = torch.sigmoid(-g1)
        prior = normal_kl(a1.sqrt() * y, torch.log(torch.sigmoid(g1)).expand_as(y), 0 * y, 0 * y).sum(-1)
        return {"L_0": recon, "L_diffusion": diffusion.view(times, b).mean(0), "L_1": prior}

    def continuous_time_loss(self, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        """``-ELBO`` per datum ``(B,)`` with ``num_particles`` times per datum, the schedule's shape
        receiving the variance-minimising gradient."""
        return sum(self.vdm_terms(x, num_particles, variance_gradient=True).values())

    @torch.no_grad()
    def likelihood_terms(self, x, params, *, seed: int = 0) -> dict[str, torch.Tensor]:
        """The continuous-time bound's terms per datum, in nats: ``L_0``, ``L_diffusion``
        (``model.likelihood_times`` draws of ``s`` per datum) and ``L_1``, each ``(N,)``; ``-Σ`` is
        :meth:`log_likelihood`. Draws from a generator seeded by ``seed``."""
        x = values(x)
        g = torch.Generator(device=x.device).manual_seed(seed)
        rows = max(1, self.config.likelihood_batch // max(self.dim * self.config.likelihood_times, 1))
        parts = [
            self.vdm_terms(x[i : i + rows], self.config.likelihood_times, generator=g) for i in range(0, len(x), rows)
        ]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
