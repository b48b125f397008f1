"""IWAE with doubly reparameterised gradients (DReG; Tucker, Lawson, Gu & Maddison 2018).

For ``k`` reparameterised draws ``z_i = z(ε_i, φ)`` with ``log w_i = log p(x, z_i) − log q_φ(z_i)``
and normalised weights ``w̃_i = w_i / Σ_j w_j``, the IWAE bound ``log (1/k) Σ_i w_i`` has

- model gradient ``Σ_i w̃_i ∇_θ log p(x, z_i)`` (the ordinary IWAE gradient), and
- guide gradient, doubly reparameterised (Tucker et al., eq. 6),
  ``Σ_i w̃_i² (∂ log w_i / ∂z_i) ∂z_i/∂φ`` with ``log q`` differentiated through ``z`` only.

Both are unbiased for the gradient of ``E[IWAE_k]``; the second avoids the score term whose
signal-to-noise ratio vanishes as ``k`` grows (Rainforth et al. 2018). The loss value is the
IWAE bound of :class:`~pyro.infer.RenyiELBO` (``alpha = 0``) unchanged.

One surrogate gives both gradients. The model and the stopped guide read a view ``z'_i`` of
each draw; ``S = Σ_i sg(w̃_i) (log p(x, z'_i) − log q_sg(φ)(z'_i))`` differentiates to the
IWAE gradient in θ, and a hook multiplies the gradient reaching ``z'_i`` by ``w̃_i`` once
more, turning the guide's ``w̃_i`` into ``w̃_i²`` without touching θ. See pyro-ppl/pyro#2598.
"""

from __future__ import annotations

import functools
import math

import torch
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims
from pyro.util import warn_if_nan

from ..errors import CardError
from ._pathwise import pathwise_traces, subsample_factor, sum_to_plates
from .renyi import IWAE


class IWAE_DReG(RenyiELBO):
    """The IWAE bound (:class:`~pyro.infer.RenyiELBO` at ``alpha = 0``, ``k = num_particles``)
    with the DReG guide gradient. Needs a fully reparameterised guide (checked on every call).

    Shapes: like RenyiELBO, the bound is a log-mean-exp over particles for each element of the
    plates every site shares (the data plate of a VAE: one IWAE bound per datum), summed.

    Minibatches: the data plate's subsampling factor N / B is taken out of the log-weights
    before the log-mean-exp and multiplies the sum after, so a batch of B out of N estimates
    N / B times the batch's bound (Pyro's RenyiELBO keeps N / B inside the log-mean-exp, which
    sharpens the weights). Without subsampling the value is RenyiELBO's exactly.
    """

    def __init__(
        self,
        num_particles: int = 2,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
    ):
        if int(num_particles) < 1:
            raise CardError(f"num_particles = {num_particles}: expected an integer >= 1")
        super().__init__(
            alpha=0.0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
        )

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """``-IWAE_k`` (a float), with minibatch scaling as in :meth:`differentiable_loss`."""
        return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-IWAE_k`` as a scalar whose gradient is the DReG estimator."""
        log_w, views = [], []
        for model_trace, stopped_trace, values in pathwise_traces(self, model, guide, args, kwargs, views=True):
            sites = [s for t in (model_trace, stopped_trace) for s in t.nodes.values() if s["type"] == "sample"]
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            ndim = max(s["log_prob"].dim() for s in sites)
            factor = subsample_factor(sites)
            log_p = sum(
                sum_to_plates(s["log_prob"], sum_dims, ndim)
                for s in model_trace.nodes.values()
                if s["type"] == "sample"
            )
            log_q = sum(
                sum_to_plates(s["log_prob"], sum_dims, ndim)
                for s in stopped_trace.nodes.values()
                if s["type"] == "sample"
            )
            log_w.append((log_p - log_q) / factor)
            views.append(values)
        vectorized = self.vectorize_particles and self.num_particles > 1
        if vectorized:
            log_w = log_w[0]
            dim = log_w.dim() - self.max_plate_nesting  # the particle plate
        else:
            log_w, dim = torch.stack(log_w), 0
        k = self.num_particles
        detached = log_w.detach()
        log_mean_w = detached.logsumexp(dim, keepdim=True) - math.log(k)
        weights = (detached - log_mean_w).exp() / k  # normalised: sum to 1 over particles
        surrogate = (weights * log_w).sum()
        if torch.is_grad_enabled():
            for i, values in enumerate(views):
                scale = weights if vectorized else weights[i]
                for z, event_dim in values:
                    z.register_hook(functools.partial(_scale_grad, scale.reshape(scale.shape + (1,) * event_dim)))
        loss = -factor * (log_mean_w.sum() + (surrogate - surrogate.detach()))
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return loss.item()


def _scale_grad(scale: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (grad * scale).reshape(grad.shape)


class IWAEDReG(IWAE):
    r"""The IWAE bound with doubly reparameterised (DReG) guide gradients (same value as ``iwae``).

    **Estimator** (Tucker et al. 2018). The value is :math:`\mathrm{IWAE}_K`; with
    :math:`z_i = z(\epsilon_i, \phi)`, :math:`\log w_i = \log p(x, z_i) - \log q_\phi(z_i)` and
    :math:`\tilde w_i = w_i / \sum_j w_j`, the gradients are

    .. math::

        \nabla_\theta = \sum_i \tilde w_i \nabla_\theta \log p(x, z_i), \qquad
        \nabla_\phi = \sum_i \tilde w_i^2 \, \frac{\partial \log w_i}{\partial z_i}
        \frac{\partial z_i}{\partial \phi},

    :math:`\log q` differentiated through z only: unbiased, without the score term whose
    signal-to-noise ratio vanishes as K grows.

    **Needs** K ≥ 2 (with K = 1 use ``stl``), every guide site reparameterised (checked by
    tracing the guide), no enumerated locals.
    """

    names = ("iwae_dreg",)
    pathwise = True

    def elbo(self, model) -> IWAE_DReG:
        return IWAE_DReG(**self.particles(model))

    def refusal(self, model, guide) -> str | None:
        if self.config.num_particles < 2:
            return "objective.num_particles: iwae_dreg needs k >= 2 particles (with k = 1 use 'stl')"
        return super().refusal(model, guide)


__all__ = ["IWAEDReG", "IWAE_DReG"]
