"""``map``: a point estimate of the globals (AutoDelta, MAP); with continuous local latents,
their closed-form posterior p(z_n | x_n, θ) (:class:`~.exact.ExactLocalGuide`)."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.autoguide import AutoDelta

from ..families.base import ExactLocalPosterior
from .autoguides import build_autoguide, continuous_locals, globals_only, start
from .base import Guide, GuideTraits, InitScale
from .exact import ExactLocalGuide


class Map(Guide):
    r"""Point estimate of the globals (AutoDelta, MAP; with continuous local latents, their closed-form posterior
    p(z_n | x_n, θ)).

    **q.** :math:`q(\theta) = \delta(\theta - \hat\theta)`, so the ELBO is
    :math:`\log p(x, \hat\theta)` (up to the locals' terms) and SVI finds the MAP estimate; with
    continuous locals, :math:`q(z_n \mid x_n) = p(z_n \mid x_n, \hat\theta)` as ``exact`` does.

    **Needs** global latents (locals enumerated or none), or a closed-form local posterior for
    the continuous ones. **Offers** a point estimate, which ``em`` writes in place and the arviz
    export shows as one draw; with continuous locals a per-datum proposal.
    """

    names = ("map",)
    Config = InitScale

    def refusal(self, model: Any) -> str | None:
        if not continuous_locals(model):
            return globals_only(model, "guide.kind = 'map'")
        if not isinstance(model, ExactLocalPosterior):
            return "it needs a closed-form local posterior for the continuous latents (ExactLocalPosterior)"
        return None

    def traits(self, model: Any) -> GuideTraits:
        return GuideTraits(proposal=bool(continuous_locals(model)), point_estimate=True)

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        init = start(model, x, generator)
        delta = build_autoguide(AutoDelta, model, init, None, {}) if model.global_sites else None
        return ExactLocalGuide(model, delta) if continuous_locals(model) else delta

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        return guide.globals_guide if isinstance(guide, ExactLocalGuide) else guide
