"""Free bits (Kingma et al. 2016, "Improved variational inference with inverse autoregressive
flow", appendix C): the KL of each latent dimension, averaged over the minibatch, is not
penalised below λ nats, so the optimiser gains nothing by collapsing a dimension to the prior.

For a local site with diagonal guide ``q(z_n | x_n)`` and prior ``p(z_n)`` (event dim 1) of
L dimensions and a minibatch of B data, the KL term of the mean-field ELBO

    scale * Σ_n Σ_j KL_nj                         becomes     scale * B * Σ_j max(λ, mean_n KL_nj)

(``scale`` is the site's: the minibatch factor N / B times any KL-annealing weight). It is
written as TraceMeanField_ELBO's loss plus the difference, so the rest of the objective is
Pyro's own. Needs the analytic KL, hence the ``meanfield`` objective only.
"""

from __future__ import annotations

import torch
from pyro.distributions import Independent
from pyro.distributions.kl import kl_divergence
from pyro.infer import TraceMeanField_ELBO


class FreeBitsELBO(TraceMeanField_ELBO):
    """:class:`~pyro.infer.TraceMeanField_ELBO` with the KL of ``sites`` clamped per dimension at
    ``free_bits`` nats."""

    def __init__(self, free_bits: float, sites: tuple[str, ...], **kwargs):
        super().__init__(**kwargs)
        self.free_bits = float(free_bits)
        self.sites = tuple(sites)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        extra = 0.0
        for name in self.sites:
            guide_site = guide_trace.nodes[name]
            kl = per_dimension_kl(guide_site["fn"], model_trace.nodes[name]["fn"])  # (..., B, L)
            per_dim = kl.reshape(-1, kl.shape[-1]).mean(0)  # mean over particles and data, (L,)
            clamped = per_dim.clamp_min(self.free_bits).sum() * (kl.numel() // kl.shape[-1])
            extra = extra + guide_site["scale"] * (clamped - kl.sum())
        if torch.is_tensor(extra):
            loss = loss + extra.detach()
        return loss, surrogate + extra


def per_dimension_kl(q, p) -> torch.Tensor:
    """``KL(q_j || p_j)`` per latent dimension of two distributions with one event dim (e.g.
    ``Normal(...).to_event(1)``): shape ``batch_shape + (L,)``."""
    if not (
        isinstance(q, Independent)
        and isinstance(p, Independent)
        and q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims == 1
    ):
        raise TypeError("free bits need a latent site with one event dim, e.g. Normal(loc, scale).to_event(1)")
    return kl_divergence(q.base_dist, p.base_dist)
