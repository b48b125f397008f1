"""The semi-supervised VAE "M2" of Kingma et al. (2014), as Pyro's ``examples/vae/ss_vae_M2.py``
writes it: one module with the model, its guide and the classifier network they share::

    p(z) = N(0, I)                      handwriting style
    p(y) = Categorical(1/10)            the digit: observed where known, latent where not
    p(x | y, z) = Bernoulli(decoder(z, y))

    q(y | x) = Categorical(encoder_y(x))          (only where y is unknown)
    q(z | x, y) = N(encoder_z(x, y))

pplvm passes the labels as ``y`` (missing ones as 0) with ``y_mask`` (True where known), so the
model observes ``y`` with ``obs_mask`` and Pyro splits it into ``y_observed`` and
``y_unobserved``. The guide samples ``y_unobserved`` from ``q(y | x)`` marked for parallel
enumeration (TraceEnum_ELBO sums over the 10 digits), as Pyro's M2 guide does. The auxiliary
classification loss of the paper (``aux_loss_multiplier * log q(y | x)`` on labelled rows) is a
``pyro.factor`` in the model: it trains the classifier and is no part of ``log p(x)``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with softplus between them (Pyro's M2 networks)."""
    layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.Softplus())]
    return nn.Sequential(*layers[:-1])


def cat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dim, broadcasting the leading (enumeration) dims."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], -1)


class SSVAE(nn.Module):
    def __init__(self, output_size=10, input_size=64, z_dim=16, hidden_layers=(256,), aux_loss_multiplier=46.0):
        super().__init__()
        self.output_size, self.z_dim, self.aux_loss_multiplier = output_size, z_dim, aux_loss_multiplier
        hidden = list(hidden_layers)
        self.encoder_y = mlp([input_size, *hidden, output_size])  # logits of q(y | x)
        self.encoder_z = mlp([input_size + output_size, *hidden, 2 * z_dim])  # loc, log scale of q(z | x, y)
        self.decoder = mlp([z_dim + output_size, *hidden, input_size])  # logits of p(x | y, z)

    def forward(self, xs, y, y_mask):
        """The model: ``xs`` (B, 64) pixels in {0, 1}, ``y`` (B,) digits, ``y_mask`` (B,) known."""
        ys = F.one_hot(y, self.output_size).to(xs.dtype)
        with pyro.plate("data", len(xs)):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(self.z_dim), 1.0).expand([len(xs), self.z_dim]).to_event(1))
            prior = dist.OneHotCategorical(logits=xs.new_zeros(len(xs), self.output_size))
            ys = pyro.sample("y", prior, obs=ys, obs_mask=y_mask)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(cat(zs, ys))).to_event(1), obs=xs)
            if self.aux_loss_multiplier:  # the classification loss on the labelled rows
                log_q = dist.OneHotCategorical(logits=self.encoder_y(xs)).log_prob(F.one_hot(y, self.output_size))
                pyro.factor("classify", self.aux_loss_multiplier * log_q * y_mask, has_rsample=False)

    def guide(self, xs, y, y_mask):
        """q(y | x) where the label is missing (enumerated), then q(z | x, y)."""
        ys = F.one_hot(y, self.output_size).to(xs.dtype)
        with pyro.plate("data", len(xs)):
            with poutine.mask(mask=~y_mask):
                guess = pyro.sample(
                    "y_unobserved",
                    dist.OneHotCategorical(logits=self.encoder_y(xs)),
                    infer={"enumerate": "parallel"},
                )
            ys = torch.where(y_mask[:, None], ys, guess)
            loc, log_scale = self.encoder_z(cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def classifier(self, xs):
        """The most probable digit under q(y | x) (Pyro's ``classifier``)."""
        return self.encoder_y(xs).argmax(-1)
