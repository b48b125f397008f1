"""The diffusion family's fixed guide, the forward noising chain (:mod:`.diffusion`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..data.base import values
from ..distributions.diffusion import q_step

if TYPE_CHECKING:
    from .diffusion import Diffusion


class ForwardProcess(PyroModule):
    """The fixed guide: the forward noising chain ``q(z_1..z_T | x) = Π_t N(z_t; √α_t z_{t-1},
    β_t I)`` with ``z_0 = y``, sampled step by step inside the model's data plate;
    ``guide(x, num_data)`` for a batch ``x`` ``(B, D)`` (sites ``z_1 .. z_T``, event dim 1).

    It has no parameters: the family's schedule fixes it. The ``diffusion`` objective does not
    trace it (it uses the chain's closed-form marginals and posteriors); a generic estimator
    over (model, guide), e.g. ``Trace_ELBO``, does, and estimates the same ELBO."""

    #: nothing to create on a first call (autoguides create their parameters then): pplvm skips
    #: that call, which would draw the whole chain for nothing
    lazy_parameters = False

    def __init__(self, model: Diffusion):
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
