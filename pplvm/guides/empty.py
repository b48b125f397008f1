"""The empty guide, for families with no latent site to infer.

A normalizing flow samples no latent (its log-likelihood is exact) and a GAN's generator
draws its noise inside the model; their parameters are point estimates in the model itself.
Under Pyro's Trace_ELBO the empty guide makes the loss exactly ``-log p(x)``.
"""

from __future__ import annotations

import torch
from pyro.nn import PyroModule


class EmptyGuide(PyroModule):
    """``q = ∅``: no sites, no parameters; :meth:`median` is empty (no global latents)."""

    def forward(self, *args, **kwargs) -> None:
        return None

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {}
