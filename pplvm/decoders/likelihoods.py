"""Likelihood heads: the distribution of a datum given the decoder network's raw outputs.

========== ============================================================================
bernoulli   ``x_d ~ Bernoulli(logits = r_d)``; binary data only
gaussian    ``x_d ~ Normal(r_d, σ_d)`` with σ ``fixed`` (a constant), ``learned`` (one
            parameter per pixel, shared by all data) or ``amortized`` (a second network
            output per pixel); learned scales are ``min_scale + softplus(·)``
========== ============================================================================
"""

from __future__ import annotations

import math
from typing import Literal

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam

from ..errors import DataError
from .base import Likelihood, floored_softplus
from .fused import Backend, event
from .init import smoothed_mean


class BernoulliLikelihood(Likelihood):
    """``Π_d Bernoulli(x_d | sigmoid(r_d))``, one raw output (a logit) per pixel."""

    num_outputs = 1

    def __init__(self, dim: int, backend: Backend = "torch"):
        super().__init__(dim)
        self.backend = backend

    def forward(self, raw):
        return event(dist.Bernoulli(logits=raw), self.backend, raw)

    def raw_mean(self, x):
        return smoothed_mean(x).logit()

    def check(self, x, name):
        bad = ((x != 0) & (x != 1)).any(-1).nonzero().flatten()
        if len(bad):
            value = x[int(bad[0])][(x[int(bad[0])] != 0) & (x[int(bad[0])] != 1)][0]
            raise DataError(
                f"{name}: a Bernoulli likelihood needs binary data (0 or 1), but {len(bad)} row(s) hold "
                f"other values (row {int(bad[0])} has {float(value):.4g}); binarize the data "
                "(data.binarize) or use model.likelihood = 'gaussian'"
            )


GaussianScale = Literal["fixed", "learned", "amortized"]


class GaussianLikelihood(Likelihood):
    """``Π_d Normal(x_d | r_d, σ_d)``.

    :param scale: ``fixed`` σ = ``fixed_scale``; ``learned`` σ_d = floor + softplus(s_d), one
        parameter per pixel; ``amortized`` σ_d = floor + softplus(r'_d), a second raw output.
    """

    def __init__(
        self,
        dim: int,
        scale: GaussianScale = "learned",
        fixed_scale: float = 1.0,
        min_scale: float = 1e-3,
        backend: Backend = "torch",
    ):
        super().__init__(dim)
        self.backend = backend
        if scale not in ("fixed", "learned", "amortized"):
            raise ValueError(f"scale: expected 'fixed', 'learned' or 'amortized', got {scale!r}")
        self.scale_kind = scale
        self.min_scale = float(min_scale)
        self.fixed_scale = float(fixed_scale)
        self.num_outputs = 2 if scale == "amortized" else 1
        if scale == "learned":  # start at σ = fixed_scale: softplus^-1(σ - floor)
            start = max(self.fixed_scale - self.min_scale, 1e-6)
            self.raw_scale = PyroParam(torch.full((dim,), math.log(math.expm1(start))))

    def forward(self, raw):
        if self.scale_kind == "amortized":
            loc, raw_scale = raw.unflatten(-1, (2, self.dim)).unbind(-2)
            scale = floored_softplus(raw_scale, self.min_scale)
        elif self.scale_kind == "learned":
            loc, scale = raw, floored_softplus(self.raw_scale, self.min_scale).expand_as(raw)
        else:
            loc, scale = raw, torch.full_like(raw, self.fixed_scale)
        return event(dist.Normal(loc, scale), self.backend, loc)

    def raw_mean(self, x):
        mean = x.mean(0)
        if self.scale_kind != "amortized":
            return mean
        # the scale outputs start where a zero bias puts them: min_scale + softplus(0)
        return torch.cat([mean, torch.zeros_like(mean)])

    def check(self, x, name):
        pass  # every finite value is in the support
