"""The fixed guide of a diffusion model: its forward noising chain.

``q(z_1..z_T | x) = Π_{t=1..T} N(z_t; √α_t z_{t-1}, β_t I)`` with ``z_0 = y`` (the datum in
the chain's units), sampled step by step inside the model's data plate. It has no parameters:
it is part of the model's definition, as the family's schedule fixes it
(:mod:`pplvm.distributions.diffusion`). The ``diffusion`` objective does not trace it: it uses
the chain's closed-form marginals ``q(z_t | x)`` and posteriors ``q(z_{t-1} | z_t, x)``; a
generic estimator over (model, guide), e.g. ``Trace_ELBO``, does, and estimates the same ELBO.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..data.base import values
from ..distributions.diffusion import q_step


class ForwardProcess(PyroModule):
    """``guide(x, num_data)``: draws ``z_1 .. z_T`` for a batch ``x`` ``(B, D)`` (event dim 1)."""

    def __init__(self, model):
        super().__init__()
        self._model = (model,)  # not a submodule: the model's parameters belong to the model

    def forward(self, x, num_data=None):
        model = self._model[0]
        obs = values(x)
        z = model.to_chain(obs)
        s = model.tables(z)
        with model.data_plate(obs, num_data):
            for t in range(1, model.steps + 1):
                mean, std = q_step(s, z, torch.tensor(t, device=z.device))
                z = pyro.sample(f"z_{t}", dist.Normal(mean, std).to_event(1))
        return z

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """No global latents: an empty point estimate."""
        return {}
