"""The empty guide, for families with no latent site to infer.

A normalizing flow samples no latent (its log-likelihood is exact) and a GAN's generator
draws its noise inside the model; their parameters are point estimates in the model itself.
Under Pyro's Trace_ELBO the empty guide makes the loss exactly ``-log p(x)``.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.nn import PyroModule

from .autoguides import continuous_locals, sites_text
from .base import Guide


class EmptyGuide(PyroModule):
    """``q = ∅``: no sites, no parameters; :meth:`median` is empty (no global latents)."""

    def forward(self, *args, **kwargs) -> None:
        return None

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {}


class NoGuide(Guide):
    r"""No guide: the family has no latent site to infer (flows: exact likelihood; GANs).

    **q** is empty. Under Pyro's ``Trace_ELBO`` the loss is then exactly
    :math:`-\log p(x)` (a flow: maximum likelihood); a GAN's noise is drawn inside the model and
    its parameters are point estimates in the model. **Needs** a model with no global and no
    continuous local latent (enumerated locals are summed out in the model). **Offers** nothing.
    """

    names = ("none",)

    def refusal(self, model: Any) -> str | None:
        latent = model.global_sites + continuous_locals(model)
        if latent:
            return f"the model has latent sites to infer ({sites_text(latent)})"
        return None

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        return EmptyGuide()
