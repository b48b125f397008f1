"""A Bayesian decoder for a VAE: every weight of a one-hidden-layer MLP is a latent variable
with a standard normal prior (``PyroSample``), so the model is

    W ~ N(0, I),    z_n ~ N(0, I_L),    x_n | z_n, W ~ Bernoulli(logits = MLP_W(z_n))

and pplvm fits q(W) (a mean-field normal over the weights) beside the amortized q(z_n | x_n).
``models/vae_bayes_decoder_digits.toml`` names it from the repository root::

    [model]
    family = "vae"
    decoder_target = "examples.bayes_decoder.bayes_decoder:BayesianMLPDecoder"
    decoder_options = { hidden = 16 }

The contract (:mod:`pplvm.decoders.user`): built as ``BayesianMLPDecoder(latent_dim=L, dim=D,
**decoder_options)``, called on ``z`` ``(*S, B, L)``, returns a distribution with batch
``(*S, B)`` and event ``(D,)``. Under vectorised particles each weight arrives with batch dims
``(*S, 1)`` in front of its shape, hence the ``unsqueeze(-2)`` products below.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h @ weight + bias``: ``h`` ``(*S, B, I)``, ``weight`` ``(I, O)`` or ``(*S, 1, I, O)``,
    ``bias`` ``(O,)`` or ``(*S, 1, O)``; returns ``(*S, B, O)``."""
    return (h.unsqueeze(-2) @ weight).squeeze(-2) + bias


class BayesianMLPDecoder(PyroModule):
    """``z -> tanh(z W1 + b1) W2 + b2`` as Bernoulli logits over the D pixels, with
    ``W1, b1, W2, b2 ~ N(0, prior_scale²)``: global latent sites ``decoder.w1`` … ``decoder.b2``."""

    def __init__(self, latent_dim: int, dim: int, hidden: int = 16, prior_scale: float = 1.0):
        super().__init__()
        # the priors are built on each draw from a buffer, so they follow .to(device)
        self.register_buffer("zero", torch.zeros(()), persistent=False)
        self.w1 = PyroSample(lambda self: self.prior(latent_dim, hidden))
        self.b1 = PyroSample(lambda self: self.prior(hidden))
        self.w2 = PyroSample(lambda self: self.prior(hidden, dim))
        self.b2 = PyroSample(lambda self: self.prior(dim))
        self.prior_scale = prior_scale

    def prior(self, *shape: int) -> dist.Distribution:
        """``N(0, prior_scale²)`` over a weight of ``shape``, on the module's device."""
        return dist.Normal(self.zero, self.prior_scale).expand(list(shape)).to_event(len(shape))

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        h = torch.tanh(_linear(z, self.w1, self.b1))
        return dist.Bernoulli(logits=_linear(h, self.w2, self.b2)).to_event(1)
