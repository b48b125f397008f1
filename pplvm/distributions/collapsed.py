"""Distributions over observations whose discrete latents are summed out inside ``log_prob``.

A family may marginalise its local latents exactly *inside* the observation site's
distribution instead of enumerating a sample site (an HMM's states are summed by a parallel
forward algorithm; enumerating T sites would cost a Python loop over time). Such a
distribution implements :class:`CollapsedLatents`, and
:meth:`pplvm.families.LatentVariableModel.local_marginals` / ``map_locals`` read the
posterior of the collapsed latents from it.
"""

from __future__ import annotations

import abc

import torch


class CollapsedLatents(abc.ABC):
    """Mixin of a distribution ``p(x | θ) = Σ_z p(x, z | θ)`` that can also answer for ``z``."""

    @abc.abstractmethod
    def latent_marginals(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """Exact posterior marginals ``p(z_i = k | x = value)`` of each collapsed latent."""

    @abc.abstractmethod
    def latent_map(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The jointly most probable latents ``argmax_z p(z | x = value)``."""
