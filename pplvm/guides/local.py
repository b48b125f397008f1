"""Base of the guides that add a per-datum ``q(z_n | x_n)`` to a guide of the globals.

``q(θ, z | x) = q(θ) Π_n q(z_n | x_n, θ)``. Subclasses (:class:`~pplvm.guides.amortized.AmortizedNormal`,
:class:`~pplvm.guides.exact.ExactLocalGuide`) say how ``q(z_n | x_n, θ)`` is formed; this
base holds the globals' guide (an autoguide, or None when the family has no global latents),
so that posterior draws of θ never need data.
"""

from __future__ import annotations

import abc

import torch
from pyro.nn import PyroModule

from ..families.base import ContinuousLatentModel, _AbstractPyroModuleMeta


class LocalGuide(PyroModule, metaclass=_AbstractPyroModuleMeta):
    """A guide over continuous local latents (one site, ``(N, L)``) plus ``globals_guide``."""

    def __init__(self, model: ContinuousLatentModel, globals_guide: torch.nn.Module | None = None):
        super().__init__()
        self._model = (model,)  # not a submodule: the model's parameters belong to the model
        self.site = model.local_sites[0]
        self.globals_guide = globals_guide

    @abc.abstractmethod
    def local_posterior(self, x: torch.Tensor) -> torch.distributions.Distribution:
        """``q(z_n | x_n)`` at the globals' point estimate: batch shape ``(N,)``, event ``(L,)``."""

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Point estimate of the global latents (empty when the family has none)."""
        return self.globals_guide.median() if self.globals_guide is not None else {}
