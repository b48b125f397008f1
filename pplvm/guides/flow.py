"""Normalizing-flow guides (``guide.kind = "flow"``): richer posteriors than a diagonal normal.

- :class:`AmortizedFlow` — for continuous local latents (VAE, PPCA/FA): the inverse
  autoregressive flow of Kingma et al. (2016). The encoder gives ``(μ, σ)`` of a diagonal
  normal and a context ``h = [μ, log σ]``; ``guide.flow_layers`` conditional IAF steps
  (Pyro's ``ConditionalAffineAutoregressive`` on a ``ConditionalAutoRegressiveNN``), with the
  order of the dims reversed between steps (and restored at the end), transform its draws::

      z_0 = μ + σ ⊙ ε,   z_k = m_k(z_{k-1}; h) + s_k(z_{k-1}; h) ⊙ z_{k-1}
      log q(z_K | x) = log N(z_0; μ, σ) - Σ_k Σ_i log s_k,i

  Sampling and the density of a sample each take one pass (IAF direction; Pyro caches the
  pair), so any ELBO, IWAE, DReG/STL bound or importance-sampled log-likelihood runs as with
  the Gaussian guide.
- :class:`AutoFlowNormal` — over a family's global latents (Bayesian GMM, HMM, PPCA):
  in the unconstrained space, ``θ = IAF_K ∘ ... ∘ IAF_1 (loc + scale ⊙ ε)``, an
  ``AutoContinuous`` guide whose ``loc`` starts at the family's data-driven initial values.

Every autoregressive network starts with a zero output layer, so each IAF step starts as the
identity and a flow guide starts exactly where the Gaussian guide would.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pydantic import Field
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous
from pyro.nn import PyroParam
from torch import nn

from ..families.base import ContinuousLatentModel
from ._local import local_refusal
from .autoguides import continuous_locals, globals_only, start
from .base import Guide, GuideTraits, InitScale
from .local import LocalGuide

#: Monte-Carlo draws (fixed seed) behind a flow posterior's ``mean`` / ``stddev``
MOMENT_DRAWS = 256


def _widths(hidden: Sequence[int], dim: int) -> list[int]:
    """Hidden widths of an autoregressive network over ``dim`` inputs (at least ``dim`` each;
    default one layer of ``2 dim``)."""
    return [max(h, dim) for h in hidden] if hidden else [2 * dim]


def _identity_start(layer, network: nn.Module):
    """Zero the last layer of ``layer``'s autoregressive ``network``: shift 0, log-scale 0."""
    with torch.no_grad():
        network.layers[-1].weight.zero_()
        network.layers[-1].bias.zero_()
    return layer


def _conditional_iaf(dim: int, context: int, hidden: Sequence[int]):
    layer = T.conditional_affine_autoregressive(dim, context, hidden_dims=_widths(hidden, dim))
    return _identity_start(layer, layer.nn)


def _iaf(dim: int, hidden: Sequence[int]):
    layer = T.affine_autoregressive(dim, hidden_dims=_widths(hidden, dim))
    return _identity_start(layer, layer.arn)


def _interleaved(flows: list[T.Transform], dim: int, device) -> list[T.Transform]:
    """``flows`` with the order of the dims reversed between consecutive steps, and once more
    at the end if needed, so that the chain keeps the dims' order (identity steps compose to
    the identity)."""
    reverse = T.Permute(torch.arange(dim - 1, -1, -1, device=device))
    out: list[T.Transform] = []
    for i, flow in enumerate(flows):
        if i:
            out.append(reverse)
        out.append(flow)
    if len(flows) % 2 == 0:
        out.append(reverse)
    return out


class FlowPosterior(dist.TransformedDistribution):
    """A transformed normal with ``mean`` and ``stddev`` estimated from :data:`MOMENT_DRAWS`
    draws of a generator seeded 0 (no analytic moments exist)."""

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base_dist.base_dist  # Independent(Normal) -> Normal
        g = torch.Generator(device=base.loc.device).manual_seed(0)
        eps = torch.randn((MOMENT_DRAWS, *base.loc.shape), generator=g, device=base.loc.device, dtype=base.loc.dtype)
        z = base.loc + base.scale * eps
        for t in self.transforms:
            z = t(z)
        return z.mean(0), z.std(0)

    @property
    def mean(self):
        return self._moments()[0]

    @property
    def stddev(self):
        return self._moments()[1]

    @property
    def variance(self):
        return self._moments()[1].square()


class AmortizedFlow(LocalGuide):
    """``q(z_n | x_n)``: an encoder's diagonal normal pushed through ``num_transforms``
    conditional IAF steps with context ``[μ, log σ]`` (see the module docstring)."""

    def __init__(
        self,
        model: ContinuousLatentModel,
        encoder: torch.nn.Module,
        globals_guide: torch.nn.Module | None = None,
        *,
        num_transforms: int = 2,
        hidden: Sequence[int] = (),
    ):
        super().__init__(model, globals_guide)
        self.encoder = encoder
        dim = model.latent_dim
        self.flows = nn.ModuleList([_conditional_iaf(dim, 2 * dim, hidden) for _ in range(num_transforms)])

    def forward(self, x, num_data=None):
        if self.globals_guide is not None:
            self.globals_guide(x, num_data)
        q = self.local_posterior(x)
        with self._model[0].data_plate(x, num_data):
            return pyro.sample(self.site, q)

    def local_posterior(self, x) -> FlowPosterior:
        """``q(z_n | x_n)``: batch shape ``(N,)``, event shape ``(L,)``."""
        loc, scale = self.encoder(x)
        context = torch.cat([loc, scale.log()], -1)
        transforms = _interleaved([flow.condition(context) for flow in self.flows], loc.shape[-1], loc.device)
        return FlowPosterior(dist.Normal(loc, scale).to_event(1), transforms)


class AutoFlowNormal(AutoContinuous):
    """An IAF over a diagonal normal in the unconstrained space of the globals (see the module
    docstring); :meth:`median` is the flow's image of ``loc`` (the base's centre), mapped to
    each site's support."""

    def __init__(
        self, model, init_loc_fn, init_scale: float = 0.1, num_transforms: int = 2, hidden: Sequence[int] = ()
    ):
        self._init_scale, self._num_transforms, self._hidden = float(init_scale), int(num_transforms), list(hidden)
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        d = self.latent_dim
        self.loc = nn.Parameter(self._init_loc())
        self.scale = PyroParam(torch.full_like(self.loc, self._init_scale), constraints.softplus_positive)
        self.flows = nn.ModuleList([_iaf(d, self._hidden).to(self.loc.device) for _ in range(self._num_transforms)])

    def get_base_dist(self):
        return dist.Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc)).to_event(1)

    def get_transform(self, *args, **kwargs):
        affine = T.AffineTransform(self.loc, self.scale, event_dim=1)
        return T.ComposeTransform([affine, *_interleaved(list(self.flows), self.latent_dim, self.loc.device)])

    def get_posterior(self, *args, **kwargs):
        return dist.TransformedDistribution(self.get_base_dist(), self.get_transform())

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        centre = self.get_transform()(torch.zeros_like(self.loc))
        return {
            site["name"]: torch.distributions.biject_to(site["fn"].support)(value)
            for site, value in self._unpack_latent(centre)
        }


class FlowConfig(InitScale):
    flow_layers: int = Field(2, ge=1, description="inverse autoregressive steps")
    flow_hidden: list[int] = Field(
        [],
        description="hidden widths of each step's network "
        "(at least the latent dimension; default one layer of twice it)",
    )


class Flow(Guide):
    r"""Normalizing flow: an IAF q(z_n | x_n) conditioned on the encoder (continuous local latents), an IAF over
    the globals' unconstrained space otherwise (guide.flow_layers, guide.flow_hidden).

    **q.** For a continuous local, the encoder's normal pushed through K conditional IAF steps
    with context :math:`h = [\mu, \log\sigma]` (Kingma et al. 2016):

    .. math::

        z_0 = \mu + \sigma \odot \epsilon, \quad z_k = m_k(z_{k-1}; h) + s_k(z_{k-1}; h) \odot z_{k-1},
        \quad \log q(z_K \mid x) = \log \mathcal N(z_0; \mu, \sigma^2) - \sum_k \sum_i \log s_{k,i};

    for globals, :math:`\theta = \mathrm{IAF}_K \circ \dots \circ \mathrm{IAF}_1(\mu + \sigma \odot
    \epsilon)` in their unconstrained space. Each step starts as the identity, so a flow guide
    starts where the Gaussian guide would.

    **Needs** what ``amortized`` needs (an encoder for one continuous local, of at least 2
    dimensions), or global latents alone. **Offers** a reparameterised per-datum proposal
    (sampling and density in one pass each), so IWAE, DReG, STL and importance-sampled
    likelihoods run as with the Gaussian guide.
    """

    names = ("flow",)
    Config = FlowConfig

    def refusal(self, model: Any) -> str | None:
        if continuous_locals(model):
            why = local_refusal(model, "the flow's encoder")
            if why is None and model.latent_dim < 2:
                why = "an autoregressive flow needs a local latent of at least 2 dimensions; this one has 1"
            return why
        return globals_only(model, "guide.kind = 'flow'")

    def traits(self, model: Any) -> GuideTraits:
        return GuideTraits(proposal=bool(continuous_locals(model)))

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        c = self.config
        init = start(model, x, generator)
        blocked = poutine.block(model, expose=list(model.global_sites))
        flow = dict(num_transforms=c.flow_layers, hidden=c.flow_hidden)
        if continuous_locals(model):
            globals_ = AutoFlowNormal(blocked, init, c.init_scale, **flow) if model.global_sites else None
            return AmortizedFlow(model, model.make_encoder(), globals_, **flow)
        return AutoFlowNormal(blocked, init, c.init_scale, **flow)

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        return guide.globals_guide if isinstance(guide, AmortizedFlow) else guide
