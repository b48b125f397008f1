"""Independent Normal features whose log-density is one matrix product.

``log N(x | μ, σ) = Σ_d −½ x_d² / σ_d² + x_d μ_d / σ_d² − ½ μ_d² / σ_d² − log σ_d − ½ log 2π``:
linear in ``(x², x)``, so scoring ``x`` ``(*, 1, D)`` against every state's ``(μ_k, σ_k)``
``(*S, K, D)`` is one contraction over ``2D`` that torch runs as a GEMM (as scikit-learn and
hmmlearn score diagonal Gaussians), rather than the ``(*S, *, K, D)`` elementwise terms that
``Normal(μ, σ).to_event(1).log_prob`` builds before summing ``d``. ``x`` and ``μ`` are first
centred on the mean of the ``μ`` over every batch dim, so the expansion cancels nothing large
when the data sit far from 0 (the terms are then of the size of the residuals, as in
``(x − μ) / σ``).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch


class NormalFeatures(dist.Independent):
    """``Normal(loc, scale).to_event(1)``, the same distribution (sampling, support, expand),
    with :meth:`log_prob` as a contraction over the feature dim.

    Build it as ``NormalFeatures(dist.Normal(loc, scale), 1)``: ``loc``, ``scale`` ``(*b, D)``
    give batch ``(*b)`` and event ``(D,)``; ``log_prob(x)`` broadcasts ``x`` ``(*, D)`` against
    ``(*b, D)``.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.reinterpreted_batch_ndims != 1:
            return super().log_prob(value)
        if self._validate_args:
            self.base_dist._validate_sample(value)
        loc, scale = torch.broadcast_tensors(self.base_dist.loc, self.base_dist.scale)
        centre = loc.detach().reshape(-1, loc.size(-1)).mean(0)  # (D,): any constant is exact
        x, mu = value.to(loc.dtype) - centre, loc - centre
        precision = scale.pow(-2)
        weights = torch.cat([-0.5 * precision, mu * precision], -1)  # (*b, 2D)
        constant = (
            -0.5 * (mu.pow(2) * precision).sum(-1) - scale.log().sum(-1) - 0.5 * loc.size(-1) * math.log(2 * math.pi)
        )
        return torch.einsum("...d,...d->...", torch.cat([x.pow(2), x], -1), weights) + constant
