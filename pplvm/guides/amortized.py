"""Amortized Gaussian guide for a family's continuous local latents.

``q(θ, z | x) = q(θ) Π_n Normal(z_n | μ_φ(x_n), diag σ_φ(x_n))``: an encoder maps each datum
to the location and scale of its latent (reparameterised), inside the model's data plate so
minibatch scaling matches the model. Global latents, if the family has any, get an autoguide.
A family with several continuous local sites, or sites per time step of a sequence
(:class:`~pplvm.families.capabilities.LocalSites`), gets one encoder per site, and a GRU over
the sequence for the steps (:class:`~.sites.AmortizedSites`).
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch

from ..families.base import ContinuousLatentModel, LocalSites
from ._local import LocalConfig, local_refusal
from .autoguides import globals_guide, start
from .base import Guide, GuideTraits
from .local import LocalGuide
from .sites import AmortizedSites


class AmortizedNormal(LocalGuide):
    """``q(z_n | x_n) = Normal(loc, scale)`` from ``encoder(x) -> (loc (B, L), scale (B, L))``."""

    def __init__(
        self, model: ContinuousLatentModel, encoder: torch.nn.Module, globals_guide: torch.nn.Module | None = None
    ):
        super().__init__(model, globals_guide)
        self.encoder = encoder

    def forward(self, x, num_data=None):
        if self.globals_guide is not None:
            self.globals_guide(x, num_data)
        loc, scale = self.encoder(x)
        with self._model[0].data_plate(x, num_data):
            return pyro.sample(self.site, dist.Normal(loc, scale).to_event(1))

    def local_posterior(self, x) -> dist.Distribution:
        """``q(z_n | x_n)`` with batch shape ``(N,)`` and event shape ``(L,)``."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)


class Amortized(Guide):
    r"""Encoder network q(z_n | x_n) for continuous local latents (+ the globals' guide: guide.globals, AutoNormal).

    **q.** :math:`q(\theta, z \mid x) = q(\theta) \prod_n \mathcal N\big(z_n;\ \mu_\phi(x_n),\
    \mathrm{diag}\, \sigma_\phi(x_n)^2\big)`: the family's encoder (``make_encoder``) maps each
    datum to the location and scale of its latent, drawn reparameterised inside the model's data
    plate (so minibatch scaling matches the model's); :math:`q(\theta)` is the autoguide named by
    ``guide.globals`` (omitted without global latents). Where a family declares several
    continuous local sites, or one per time step of a sequence
    (:class:`~pplvm.families.capabilities.LocalSites`), one encoder per site, and for the steps
    Pyro's Deep-Markov-Model guide :math:`\prod_t q(z_t \mid z_{t-1}, x_{t:T})` over a backward
    GRU (:class:`~pplvm.guides.sites.AmortizedSites`).

    **Needs** continuous local latents an encoder can serve: a family that builds one (VAE,
    PPCA/FA, your model's ``(B, L)`` sites); refused for enumerated locals (nothing to encode)
    and for models without locals. **Offers** a per-datum proposal :math:`q(z_n \mid x_n)`: the
    importance sampler's for estimated likelihoods and the answer of ``run.posterior(x)``, on
    any data (held-out rows included). Sites per time step are drawn one from another, so
    ``meanfield`` (analytic KLs) is refused there.
    """

    names = ("amortized",)
    Config = LocalConfig

    def refusal(self, model: Any) -> str | None:
        layout = _sites(model)
        if layout is not None:
            why = layout.refusal
            return f"the amortized encoders cannot serve this model's local latents: {why}" if why else None
        return local_refusal(model, "the amortized encoder")

    def traits(self, model: Any) -> GuideTraits:
        layout = _sites(model)
        structured = layout is not None and bool(layout.steps)  # q(z_t | z_{t-1}, x)
        return GuideTraits(proposal=True, point_estimate=self.config.globals == "AutoDelta", factorised=not structured)

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        c = self.config
        globals_ = globals_guide(model, c.globals, start(model, x, generator), c.init_scale, c.globals_options)
        layout = _sites(model)
        if layout is not None:
            return AmortizedSites(model, layout, model.make_local_encoder(layout), globals_)
        return AmortizedNormal(model, model.make_encoder(), globals_)

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        return guide.globals_guide


def _sites(model: Any):
    """The layout of a model whose local sites are served site by site (None: one site per
    datum of rows, or a family without that capability: the one-site encoder's case)."""
    if not isinstance(model, LocalSites):
        return None
    layout = model.local_layout()
    return None if layout.single else layout
