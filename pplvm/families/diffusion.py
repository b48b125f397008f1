"""Denoising diffusion (DDPM) as a hierarchical latent-variable model: :class:`Diffusion`."""

from __future__ import annotations

import copy
import math
from typing import Annotated, Literal

import pyro
import pyro.distributions as dist
import torch
from pydantic import Field

from .._progress import progress
from ..data.base import Batch, as_matrix, values
from ..decoders.denoisers import MLPDenoiser, UNetDenoiser
from ..distributions.diffusion import (
    DiscretizedNormal,
    Schedule,
    cosine_betas,
    gather,
    linear_betas,
    normal_kl,
    q_marginal,
    q_posterior,
    q_prior_kl,
)
from ..errors import CardError, DataError, IncompatibleError
from ..evaluation import memory
from . import _diffusion_ode as _ode
from . import _diffusion_sampling as _sampling
from ._diffusion_forward import ForwardProcess
from .base import FamilyConfig, FixedGuide, LatentVariableModel

#: steps of the chain model.png traces (see :meth:`Diffusion.graph_prototype`)
GRAPH_STEPS = 6


class DiffusionConfig(FamilyConfig, _ode.ODEOptions):
    family: Literal["diffusion"] = "diffusion"
    steps: int = Field(1000, ge=1, description="T, the number of diffusion steps")
    schedule: Literal["linear", "cosine"] = Field("linear", description="noise schedule of β_t")
    beta_start: float = Field(1e-4, description="linear: β_1")
    beta_end: float = Field(0.02, description="linear: β_T")
    variance: Literal["beta", "posterior", "learned"] = Field(
        "beta", description="reverse variance σ_t²: β_t, the posterior's β̃_t, or learned between them"
    )
    decoder: Literal["gaussian", "discretized"] = Field(
        "gaussian", description="p(x | z_1): gaussian (continuous data) or discretized over model.levels"
    )
    levels: int = Field(256, ge=2, description="discretized: number K of levels k/(K-1) of the data in [0, 1]")
    denoiser: Literal["mlp", "unet"] = Field("mlp", description="ε-prediction network")
    hidden: list[int] = Field([128, 128, 128], description="mlp: hidden widths")
    embed_dim: int = Field(64, ge=2, description="width of the sinusoidal time embedding")
    channels: int = Field(32, ge=1, description="unet: base channels")
    channel_mult: list[Annotated[int, Field(ge=1)]] = Field(
        [1, 2], min_length=1, description="unet: channel multiplier per resolution level"
    )
    attention: bool = Field(False, description="unet: self-attention at the lowest resolution")
    image_shape: list[int] | None = Field(None, description="unet: [C, H, W] or [H, W]; default square, 1 channel")
    likelihood_batch: int = Field(2**20, ge=1, description="log_likelihood: values (rows x steps x D) per chunk")


def _chw(cfg: DiffusionConfig, dim: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images, checked against ``dim`` and the U-Net's depth."""
    shape = list(cfg.image_shape) if cfg.image_shape is not None else [math.isqrt(dim)] * 2
    if len(shape) == 2:
        shape = [1, *shape]
    if len(shape) != 3 or min(shape) < 1:
        raise CardError(f"model.image_shape: expected [C, H, W] or [H, W] of positive sizes, got {cfg.image_shape}")
    if math.prod(shape) != dim:
        raise CardError(
            f"model.image_shape: the data have {dim} columns, which is not {' x '.join(map(str, shape))}"
            + ("" if cfg.image_shape is not None else "; set model.image_shape")
        )
    f = 2 ** (len(cfg.channel_mult) - 1)
    if shape[1] % f or shape[2] % f:
        raise CardError(
            f"model.image_shape: a U-Net with {len(cfg.channel_mult)} levels needs H and W divisible "
            f"by {f}, got {shape[1]} x {shape[2]}"
        )
    return tuple(shape)


class Diffusion(LatentVariableModel, FixedGuide):
    r"""Denoising diffusion model (DDPM): a reverse chain p_θ of T latents, the fixed forward chain as guide.

    **Prior and likelihood** (Ho et al. 2020). Local latents ``z_T .. z_1`` per datum, no global
    latents; the datum enters the chain as :math:`y = x`, or :math:`y = 2x - 1` for data on
    ``levels`` (``decoder = "discretized"``: the bound is then one of a probability):

    .. math::

        z_T \sim \mathcal N(0, I), \quad
        p_\theta(z_{t-1} \mid z_t) = \mathcal N(\mu_\theta(z_t, t), \sigma_t^2 I), \quad
        \mu_\theta = \big(z_t - \beta_t (1 - \bar\alpha_t)^{-1/2} \hat\epsilon_\theta(z_t, t)\big) / \sqrt{\alpha_t},

    the decoder :math:`p_\theta(x \mid z_1)`, :math:`\sigma_t^2 \in \{\beta_t, \tilde\beta_t\}` or
    learned between them (``model.variance``; the documentation page ``families/diffusion``).

    **Marginal: a bound.** The guide is the parameter-free forward chain
    :math:`q(z_{1:T} \mid x) = \prod_t \mathcal N(z_t; \sqrt{\alpha_t} z_{t-1}, \beta_t I)`, so

    .. math::

        -\mathrm{ELBO}(x) = \underbrace{-\mathbb E_q \log p_\theta(x \mid z_1)}_{L_0}
        + \sum_{t=2}^T \underbrace{\mathbb E_q \mathrm{KL}\big(q(z_{t-1} \mid z_t, x)
        \,\|\, p_\theta(z_{t-1} \mid z_t)\big)}_{L_{t-1}}
        + \underbrace{\mathrm{KL}\big(q(z_T \mid x) \,\|\, \mathcal N(0, I)\big)}_{L_T},

    each term closed-form given :math:`z_t \sim q(z_t \mid x)`. ``log_likelihood`` returns this
    ELBO, all T + 1 terms, one draw of :math:`z_t` per step and datum (``kind = "ode"``: the
    probability-flow ODE's estimate).

    **Latent structure.** A fixed guide of its own (:class:`~pplvm.families.capabilities.FixedGuide`):
    guide ``forward`` only; objective ``diffusion`` (a few steps per datum), ``vdm`` (continuous
    time) or a generic ELBO tracing the chain (``elbo``, ``stl``). **Card.** ``model.steps``,
    ``schedule``, ``variance``, ``decoder``, ``denoiser``. From ``models/diffusion_moons.toml``:

    .. code-block:: toml

        [model]
        family = "diffusion"
        steps = 100
        variance = "beta"            # σ_t² = β_t; or "posterior", "learned"

        [guide]
        kind = "forward"             # the fixed forward noising chain q(z_1..z_T | x)
    """

    Config = DiffusionConfig
    enumerated = False
    likelihood = "bound"
    extra_likelihoods = _ode.ODE_LIKELIHOOD
    vectorized_particles = False

    def __init__(self, config: DiffusionConfig, dim: int):
        super().__init__(config, dim)
        c = config
        betas = linear_betas(c.steps, c.beta_start, c.beta_end) if c.schedule == "linear" else cosine_betas(c.steps)
        self.schedule = Schedule.from_betas(betas)  # float64; cast where used
        self._cast: dict[tuple, Schedule] = {}
        outputs = 2 if c.variance == "learned" else 1
        if c.denoiser == "mlp":
            if not c.hidden or min(c.hidden) < 1:
                raise CardError(f"model.hidden: expected positive widths, got {c.hidden}")
            self.denoiser = MLPDenoiser(dim, c.hidden, c.embed_dim, outputs)
            self.image_shape = None
        else:
            self.image_shape = _chw(c, dim)
            self.denoiser = UNetDenoiser(
                self.image_shape, c.channels, c.channel_mult, c.attention, c.embed_dim, outputs
            )
        if c.denoiser == "mlp" and c.image_shape is not None:
            self.image_shape = _chw(c, dim)
        self.widest = self.denoiser.widest()  # elements per datum of its largest activation: sizes chunks

    # ---------------------------------------------------------------- helpers
    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def global_sites(self) -> tuple[str, ...]:
        return ()

    @property
    def local_sites(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"z_{t}" for t in range(self.steps, 0, -1))

    def tables(self, like: torch.Tensor) -> Schedule:
        """The schedule cast to ``like``'s dtype and device (cached)."""
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = self.schedule.to(like)
        return self._cast[key]

    def to_chain(self, x: torch.Tensor) -> torch.Tensor:
        """Data ``x`` ``(..., D)`` in the chain's units ``y``: ``2x - 1`` (discretized), else ``x``."""
        return 2 * x - 1 if self.config.decoder == "discretized" else x

    def from_chain(self, y: torch.Tensor) -> torch.Tensor:
        return (y + 1) / 2 if self.config.decoder == "discretized" else y

    def time(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The denoiser's time input ``s = (t - 1) / (T - 1)`` in [0, 1] for steps ``t``."""
        return (t.to(like.dtype) - 1) / max(self.steps - 1, 1)

    # ------------------------------------------------------------------ the model
    def predict(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``ε̂_θ(z_t, t)`` ``(B, D)`` and the raw variance weight ``(B, D)`` (None unless learned)
        for ``z`` ``(B, D)`` and steps ``t`` ``(B,)``."""
        return self._split(self.denoiser(z, self.time(t, z)))

    def epsilon(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``ε̂_θ(z, s)`` ``(B, D)`` at continuous times ``s`` ``(B,)`` in [0, 1] (step t at
        ``s = (t - 1) / (T - 1)``), for the continuous-time objective."""
        return self._split(self.denoiser(z, s))[0]

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.config.variance == "learned":
            eps, raw = out.chunk(2, dim=-1)
            return eps, raw
        return out, None

    def reverse_params(
        self, z: torch.Tensor, t: torch.Tensor, *, eps: torch.Tensor | None = None, raw: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``p_θ(z_{t-1} | z_t)`` (for ``t = 1``: of the decoder, in
        chain units), each ``(B, D)``, for ``z`` ``(B, D)``, ``t`` ``(B,)``. Pass ``eps`` / ``raw``
        to reuse a prediction."""
        if eps is None:
            eps, raw = self.predict(z, t)
        s, n = self.tables(z), z.dim()
        beta, alpha, abar = (gather(v, t, n) for v in (s.betas, s.alphas, s.alphas_bar))
        mean = (z - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
        if self.config.variance == "beta":
            logvar = beta.log().expand_as(z)
        elif self.config.variance == "posterior":
            logvar = gather(s.posterior_log_variance, t, n).expand_as(z)
        else:
            v = (raw + 1) / 2
            logvar = v * beta.log() + (1 - v) * gather(s.posterior_log_variance, t, n)
        return mean, logvar

    def prior(self, n: int, like: torch.Tensor | None = None) -> dist.Distribution:
        """``p(z_T) = N(0, I)``: batch ``(n,)``, event ``(D,)``."""
        zeros = torch.zeros(n, self.dim, device=self.device) if like is None else like.new_zeros(n, self.dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def reverse(self, z: torch.Tensor, t: int) -> dist.Distribution:
        """``p_θ(z_{t-1} | z_t)`` for ``t ≥ 2``: batch ``(B,)``, event ``(D,)``."""
        mean, logvar = self.reverse_params(z, torch.full((len(z),), t, device=z.device))
        return dist.Normal(mean, (0.5 * logvar).exp()).to_event(1)

    def decoder_dist(self, mean: torch.Tensor, logvar: torch.Tensor) -> dist.Distribution:
        """``p_θ(x | z_1)`` over data units from the chain-unit mean and log-variance ``(B, D)``."""
        scale = (0.5 * logvar).exp()
        if self.config.decoder == "discretized":
            return DiscretizedNormal((mean + 1) / 2, scale / 2, self.config.levels).to_event(1)
        return dist.Normal(mean, scale).to_event(1)

    def decode(self, z1: torch.Tensor) -> dist.Distribution:
        """``p_θ(x | z_1)``: batch ``(B,)``, event ``(D,)``."""
        return self.decoder_dist(*self.reverse_params(z1, torch.ones(len(z1), dtype=torch.long, device=z1.device)))

    def forward(self, x=None, num_data=None):
        """The reverse chain. ``x``: ``(B, D)`` data or None to generate ``num_data`` rows."""
        obs = values(x) if x is not None else None
        with self.data_plate(obs, num_data):
            n = len(obs) if obs is not None else num_data
            z = pyro.sample(f"z_{self.steps}", self.prior(n, obs))
            with progress(self.steps - 1, "sampling", None if obs is None else False, unit="step") as bar:
                for t in range(self.steps, 1, -1):  # progress when generating (pplvm sample)
                    z = pyro.sample(f"z_{t - 1}", self.reverse(z, t))
                    bar.update(1)
            return pyro.sample("obs", self.decode(z), obs=obs)

    # ------------------------------------------------------------ the ELBO's terms
    def step_terms(
        self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *, detach_mean: bool = False, bound: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``L_{t-1}`` per row, ``(B,)``, for data ``x`` ``(B, D)`` (data units), steps ``t`` ``(B,)``
        in 1..T and the noise ``ε`` ``(B, D)`` drawing ``z_t = √ᾱ_t y + √(1 - ᾱ_t) ε ~ q(z_t | x)``:
        ``-log p_θ(x | z_1)`` where ``t = 1``, else ``KL(q(z_{t-1} | z_t, x) || p_θ(z_{t-1} | z_t))``
        in closed form. Also returns ``‖ε - ε̂‖²`` per row (Ho et al.'s L_simple); with ``bound =
        False`` only that (the first value is None). With ``detach_mean`` the terms train only a
        learned variance (the hybrid objective).

        Both kinds of term are computed for every row and the right one selected (no
        data-dependent branching, so no device sync): rows with ``t > 1`` score the decoder at
        a harmless mean (the datum itself), rows with ``t = 1`` the KL at the clipped β̃."""
        y, s = self.to_chain(x), self.tables(x)
        mean_q, std_q = q_marginal(s, y, t)
        z = mean_q + std_q * noise
        eps, raw = self.predict(z, t)
        simple = ((noise - eps) ** 2).sum(-1)
        if not bound:
            return None, simple
        mean_p, logvar_p = self.reverse_params(z, t, eps=eps.detach() if detach_mean else eps, raw=raw)
        first = t == 1
        decoder = -self.decoder_dist(torch.where(first[:, None], mean_p, y), logvar_p).log_prob(x)
        mean_t, logvar_t = q_posterior(s, y, z, t)
        kl = normal_kl(mean_t, logvar_t, mean_p, logvar_p).sum(-1)
        return torch.where(first, decoder, kl), simple

    def prior_term(self, x: torch.Tensor) -> torch.Tensor:
        """``L_T = KL(q(z_T | x) || N(0, I))`` per row, ``(B,)`` (no parameters)."""
        return q_prior_kl(self.tables(x), self.to_chain(x))

    @torch.no_grad()
    def likelihood_terms(self, x, params, *, seed: int = 0) -> dict[str, torch.Tensor]:
        """Every term ``L_0 .. L_T`` of the bound per datum, in nats: ``{"L_0": (N,), ...,
        "L_T": (N,)}``, with ``-Σ terms`` = :meth:`log_likelihood`. One draw of ``z_t`` per step
        and datum from a generator seeded by ``seed`` (on ``x``'s device).

        The (step, datum) pairs go through the network step-major, in chunks of at most
        ``model.likelihood_batch`` values (pairs x D) whose widest activation stays within
        :data:`~pplvm.evaluation.memory.BLOCK_BYTES`, reusing one noise buffer and tiled view."""
        x = values(x)
        n, T, d = len(x), self.steps, self.dim
        g = torch.Generator(device=x.device).manual_seed(seed)
        size = min(n * T, self.config.likelihood_batch // d or 1)
        size = min(size, memory.tensor_rows(max(self.widest, d), x.element_size()))
        tiled = x.repeat(-(-size // n) + 1, 1)  # rows a .. a + size of the cycle over x, for a < n
        noise = torch.empty(size, d, dtype=x.dtype, device=x.device)
        terms = torch.empty(T + 1, n, dtype=x.dtype, device=x.device)
        flat = terms[:T].view(-1)  # pair p = (t - 1) · n + i
        with memory.reusing_memory(), progress(n * T, "diffusion bound", unit="term") as bar:
            for start in range(0, n * T, size):
                k = min(size, n * T - start)
                t = torch.arange(start, start + k, device=x.device).div_(n, rounding_mode="floor").add_(1)
                eps = torch.randn(k, d, generator=g, dtype=x.dtype, device=x.device, out=noise[:k])
                flat[start : start + k], _ = self.step_terms(tiled[start % n : start % n + k], t, eps)
                bar.update(k)
        terms[T] = self.prior_term(x)
        return {f"L_{t}": v for t, v in enumerate(terms.unbind(0))}

    @torch.no_grad()
    def log_likelihood(self, x, params, *, seed: int = 0, kind: Literal["bound", "ode"] = "bound") -> torch.Tensor:
        """The ELBO per datum, ``(N,)``: a lower bound of ``log p(x_n)`` summing all T + 1 terms
        (see :meth:`likelihood_terms`); ``params`` is empty (no global latents). ``kind = "ode"``:
        the probability-flow ODE's instead (:mod:`._diffusion_ode`)."""
        if kind == "ode":
            return _ode.log_likelihood(self, values(x), seed=seed)
        return -torch.stack(list(self.likelihood_terms(x, params, seed=seed).values()), -1).sum(-1)

    def vp_rates(self, s: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ᾱ(s)`` and ``d log ᾱ / ds`` at time ``s ∈ [0, 1]``: ``log ᾱ_t`` interpolated linearly
        between the steps at ``s_t = (t - 1) / (T - 1)`` (:mod:`._diffusion_ode`)."""
        if self.steps < 2:
            raise IncompatibleError("the ODE likelihood needs model.steps >= 2 (a schedule to interpolate)")
        return _ode.interpolated_rates(self.tables(like).alphas_bar[1:].log(), s)

    # ------------------------------------------------------------------ samplers
    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        sampler: Literal["ancestral", "ddim"] = "ancestral",
        steps: int | None = None,
        generator: torch.Generator | None = None,
        z: torch.Tensor | None = None,
        mean: bool = True,
    ) -> torch.Tensor:
        """``n`` new data ``(n, D)`` in data units, starting from ``z`` ``(n, D)`` (default: drawn
        from the prior). ``ancestral``: the reverse chain step by step, then the decoder's mean
        (``mean``) or a draw. ``ddim``: the deterministic DDIM sampler (Song et al. 2021, η = 0) on
        ``steps`` of the T steps (evenly spaced), ending at the predicted ``x̂_0``."""
        return _sampling.generate(self, n, sampler=sampler, steps=steps, generator=generator, z=z, mean=mean)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, steps: int | None = None) -> torch.Tensor:
        """DDIM inversion: the ``z_T`` ``(N, D)`` that the DDIM sampler maps back to ``x``
        (approximately; exact as the step size shrinks)."""
        return _sampling.ddim(self, self.to_chain(values(x)), _sampling.ddim_steps(self, steps), inverse=True)

    @torch.no_grad()
    def interpolate(
        self, x_a: torch.Tensor, x_b: torch.Tensor, num: int = 8, *, steps: int | None = None
    ) -> torch.Tensor:
        """Spherical interpolation between the DDIM latents of two data ``(D,)``, decoded by
        DDIM: ``(num, D)``."""
        return _sampling.interpolate(self, x_a, x_b, num, steps=steps)

    # ------------------------------------------------------------- the contract
    def make_fixed_guide(self) -> torch.nn.Module:
        return ForwardProcess(self)

    def init_values(self, x, generator):
        return {}

    def prepare(self, data, name="data"):
        x = as_matrix(values(data) if isinstance(data, Batch) else data, name, dim=self.dim)
        if self.config.decoder == "discretized":
            k = self.config.levels - 1
            off = ((x < 0) | (x > 1) | ((x * k - (x * k).round()).abs() > 1e-4)).any(-1).nonzero().flatten()
            if len(off):
                raise DataError(
                    f"{name}: model.decoder = 'discretized' needs values on the {k + 1} levels k/{k} "
                    f"of [0, 1] (model.levels = {k + 1}); row {int(off[0])} has others"
                )
        return x

    def check_data(self, x):
        pass

    def plots(self, x, params):
        return _sampling.plots(self, x)

    def graph_prototype(self) -> torch.nn.Module:
        """The same chain cut to :data:`GRAPH_STEPS` steps (the figure draws a chain of steps with
        the middle left out), sharing this model's networks: a T-step trace costs T network calls."""
        if self.steps <= GRAPH_STEPS:
            return self
        short = copy.copy(self)
        short.config = self.config.model_copy(update={"steps": GRAPH_STEPS})
        return short
