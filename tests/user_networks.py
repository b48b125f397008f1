"""Decoders and encoders written the way a user writes them, for ``model.decoder_target`` /
``model.encoder_target`` (cards name them as ``"user_networks:<name>"``; pytest puts ``tests/``
on the path). The contract is in :mod:`pplvm.decoders.user`."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn


def _with_side(h: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
    return h if side is None else torch.cat([h, side.expand(*h.shape[:-1], side.shape[-1])], -1)


class MLPDecoder(nn.Module):
    """A plain torch decoder: ``[z, side] -> Linear -> tanh -> Linear -> Bernoulli logits``, the
    built-in ``mlp`` decoder with one hidden layer, written independently."""

    def __init__(self, latent_dim: int, dim: int, side_dim: int = 0, hidden: int = 16):
        super().__init__()
        self.hidden = nn.Linear(latent_dim + side_dim, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, z, side=None):
        logits = self.out(torch.tanh(self.hidden(_with_side(z, side))))
        return dist.Bernoulli(logits=logits).to_event(1)


class MLPEncoder(nn.Module):
    """``[x, side] -> Linear -> tanh -> Linear -> (loc, 1e-3 + softplus(raw))``."""

    def __init__(self, latent_dim: int, dim: int, side_dim: int = 0, hidden: int = 16):
        super().__init__()
        self.hidden = nn.Linear(dim + side_dim, hidden)
        self.out = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x, side=None):
        loc, raw = self.out(torch.tanh(self.hidden(_with_side(x, side)))).chunk(2, -1)
        return loc, 1e-3 + F.softplus(raw)


class BayesLinearDecoder(PyroModule):
    """``W ~ N(0, 1)^{L×D}`` (a global latent), ``x | z ~ N(z W + μ, σ² I)`` with μ a point
    estimate and σ fixed: a Bayesian PPCA, whose ``log p(x | W)`` and ELBO have closed forms."""

    def __init__(self, latent_dim: int, dim: int, sigma: float = 0.5):
        super().__init__()
        self.register_buffer("zero", torch.zeros(()), persistent=False)  # follows .to(device)
        # a prior built on each draw, where the module is (a fixed CPU constant would not move)
        self.W = PyroSample(lambda self: dist.Normal(self.zero, 1.0).expand([latent_dim, dim]).to_event(2))
        self.mu = PyroParam(torch.zeros(dim))
        self.sigma = sigma

    def forward(self, z):
        loc = (z.unsqueeze(-2) @ self.W).squeeze(-2) + self.mu  # W may carry particle dims (*S, 1)
        return dist.Normal(loc, self.sigma).to_event(1)


# --------------------------------------------------------- networks pplvm must refuse
class NoEventDecoder(nn.Module):
    """Forgets ``.to_event(1)``: batch (*S, B, D), event ()."""

    def __init__(self, latent_dim: int, dim: int):
        super().__init__()
        self.out = nn.Linear(latent_dim, dim)

    def forward(self, z):
        return dist.Bernoulli(logits=self.out(z))


class TensorDecoder(nn.Module):
    """Returns the logits, not a distribution."""

    def __init__(self, latent_dim: int, dim: int):
        super().__init__()
        self.out = nn.Linear(latent_dim, dim)

    def forward(self, z):
        return self.out(z)


class SampleInForward(PyroModule):
    """Draws a latent weight with ``pyro.sample`` inside forward (refused: use PyroSample)."""

    def __init__(self, latent_dim: int, dim: int):
        super().__init__()
        self.shape = (latent_dim, dim)

    def forward(self, z):
        W = pyro.sample("W", dist.Normal(0.0, 1.0).expand(self.shape).to_event(2))
        return dist.Bernoulli(logits=z @ W).to_event(1)


class WideEncoder(nn.Module):
    """Returns ``(loc, scale)`` one entry too wide."""

    def __init__(self, latent_dim: int, dim: int):
        super().__init__()
        self.out = nn.Linear(dim, 2 * latent_dim + 2)

    def forward(self, x):
        loc, raw = self.out(x).chunk(2, -1)
        return loc, F.softplus(raw)


def no_arguments():
    """A function that is no decoder: it takes no z."""
