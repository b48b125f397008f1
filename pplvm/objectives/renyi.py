"""Pyro's :class:`~pyro.infer.RenyiELBO` (IWAE at ``alpha = 0``) with ``differentiable_loss``.

Pyro 1.9's RenyiELBO implements ``loss`` and ``loss_and_grads`` but not
``differentiable_loss``, which :class:`~pyro.infer.elbo.ELBOModule` (``elbo(model, guide)``)
and therefore the pplvm :class:`~pplvm.training.trainer.Trainer` call. This subclass adds it,
with the surrogate of Pyro's own ``loss_and_grads`` (same gradient, same value), so that a
plain ``loss.backward()`` loop works.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer import RenyiELBO as _PyroRenyiELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.util import warn_if_nan

from ..errors import CardError


class RenyiELBO(_PyroRenyiELBO):
    """Renyi-alpha bound (``alpha = 0``: the IWAE bound with ``k = num_particles``).

    ``differentiable_loss`` returns a scalar whose value is ``-bound`` (summed over the data
    plate, log-mean-exp over particles per datum as Pyro does) and whose gradient is Pyro's
    RenyiELBO gradient estimator.
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = False, strict_enumeration_warning: bool = True):
        if int(num_particles) < 1:
            raise CardError(f"num_particles = {num_particles}: expected an integer >= 1")
        super().__init__(alpha=alpha, num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo_particles, surrogate_particles = [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            elbo, surrogate = 0.0, 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_p = torch_sum(site["log_prob"], sum_dims)
                    elbo, surrogate = elbo + log_p.detach(), surrogate + log_p
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    _, score_function, entropy = site["score_parts"]
                    log_q = torch_sum(site["log_prob"], sum_dims)
                    elbo = elbo - log_q.detach()
                    if not is_identically_zero(entropy):
                        surrogate = surrogate - log_q
                    if not is_identically_zero(score_function):
                        surrogate = surrogate + (self.alpha / (1.0 - self.alpha)) * log_q
            elbo_particles.append(torch.as_tensor(elbo))
            surrogate_particles.append(torch.as_tensor(surrogate))
        if self.vectorize_particles and self.num_particles > 1:
            elbo, surrogate = elbo_particles[0], surrogate_particles[0]
        else:
            elbo, surrogate = torch.stack(elbo_particles), torch.stack(surrogate_particles)
        log_weights = (1.0 - self.alpha) * elbo
        log_mean_weight = log_weights.logsumexp(0, keepdim=True) - math.log(self.num_particles)
        bound = log_mean_weight.sum() / (1.0 - self.alpha)
        surrogate = ((log_weights - log_mean_weight).exp() * surrogate).sum() / self.num_particles
        loss = -(bound + (surrogate - surrogate.detach()))
        warn_if_nan(loss, "loss")
        return loss


__all__ = ["RenyiELBO"]
