"""The exact local posterior as a guide, for families that have one in closed form.

``q(θ, z | x) = q(θ) Π_n p(z_n | x_n, θ)``: the family's own ``p(z_n | x_n, θ)``
(:class:`~pplvm.families.capabilities.ExactLocalPosterior`) at the model's current parameters and
the guide's draw of the globals θ (mean-field normal, if the family has any). With no
global latents the ELBO then equals ``log p(x | θ)`` for every draw (zero variance), and its
gradient is EM's.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch

from ..families.base import ContinuousLatentModel, ExactLocalPosterior
from ._local import LocalConfig
from .autoguides import globals_guide, start
from .base import Guide, GuideTraits
from .local import LocalGuide


class ExactLocalGuide(LocalGuide):
    """``z_n ~ p(z_n | x_n, θ)`` inside the model's data plate; ``θ ~`` ``globals_guide``."""

    def __init__(self, model: ContinuousLatentModel, globals_guide: torch.nn.Module | None = None):
        if not isinstance(model, ExactLocalPosterior):
            raise TypeError(f"{type(model).__name__} has no closed-form local posterior")
        super().__init__(model, globals_guide)

    def forward(self, x, num_data=None):
        model = self._model[0]
        params = self.globals_guide(x, num_data) if self.globals_guide is not None else {}
        posterior = model.local_posterior(x, params)
        with model.data_plate(x, num_data):
            return pyro.sample(self.site, posterior)

    @torch.no_grad()
    def local_posterior(self, x) -> torch.distributions.Distribution:
        """``p(z_n | x_n, θ)`` at the globals' point estimate, batch shape ``(N,)``."""
        return self._model[0].local_posterior(x, self.median())


class Exact(Guide):
    r"""Closed-form posterior p(z_n | x_n, θ) for the local latents (+ the globals' guide: guide.globals, AutoNormal).

    **q.** :math:`q(\theta, z \mid x) = q(\theta) \prod_n p(z_n \mid x_n, \theta)`: the family's own
    exact local posterior at the model's parameters and the guide's draw of θ. With no global
    latents the ELBO then equals :math:`\log p(x \mid \theta)` for every draw (zero variance), and
    its gradient is EM's.

    **Needs** a family with a closed-form local posterior
    (:class:`~pplvm.families.capabilities.ExactLocalPosterior`: PPCA, factor analysis). **Offers** a
    per-datum proposal (the exact posterior, so importance weights are constant) and
    ``run.posterior(x)`` on any data.
    """

    names = ("exact",)
    Config = LocalConfig

    def refusal(self, model: Any) -> str | None:
        if not isinstance(model, ExactLocalPosterior):
            return (
                "it needs a closed-form local posterior p(z_n | x_n, θ) (ExactLocalPosterior), which this family lacks"
            )
        return None

    def traits(self, model: Any) -> GuideTraits:
        return GuideTraits(proposal=True, point_estimate=self.config.globals == "AutoDelta")

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        c = self.config
        globals_ = globals_guide(model, c.globals, start(model, x, generator), c.init_scale, c.globals_options)
        return ExactLocalGuide(model, globals_)

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        return guide.globals_guide
