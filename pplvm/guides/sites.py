"""Amortized guide over several continuous local sites (a family with
:class:`~pplvm.families.capabilities.LocalSites`), the ``amortized`` guide's form for them.

``q(θ, z | x) = q(θ) Π_n Π_sites q(z_n^site | x_n)``: each site per datum is
``Normal(loc, scale).to_event(1)`` from an MLP of the row (of the backward GRU's summary of a
sequence); sites per time step follow the guide of Pyro's Deep Markov Model,
``q(z_1..z_T | x) = Π_t q(z_t | z_{t-1}, x_{t:T})``, each step masked beyond its sequence's
length (when the model masks it), so a padded step adds nothing to the ELBO or the
likelihood. Every site is drawn inside the model's data plate, scaled for minibatches as the
model is (:class:`~pplvm.decoders.sites.SiteEncoder` holds the networks).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..data.base import Batch, values
from ..data.sequences import step_mask
from ..errors import IncompatibleError
from ..families.capabilities import LocalLayout


class AmortizedSites(PyroModule):
    """Draws every continuous local site of ``model`` (its :class:`LocalLayout`) from
    ``encoder`` (``model.make_local_encoder(layout)``), plus the globals' guide (None without
    global latents)."""

    def __init__(self, model, layout: LocalLayout, encoder: torch.nn.Module, globals_guide=None):
        super().__init__()
        self._model = (model,)  # not a submodule: the model's parameters belong to the model
        self.layout = layout
        self.encoder = encoder
        self.globals_guide = globals_guide

    def forward(self, x=None, num_data=None):
        if self.globals_guide is not None:
            self.globals_guide(x, num_data)
        if x is None:  # posterior draws of the globals need no data
            return None
        model, encoder, layout = self._model[0], self.encoder, self.layout  # (PyroModule lookups are slow)
        batch = model.model_input(x)
        v = values(batch)
        sequences = isinstance(batch, Batch) and batch.lengths is not None
        h = encoder.states(v, batch.lengths) if sequences else None
        draws = {}
        with model.data_plate(x, num_data):
            for name, (loc, scale) in encoder.rows(h[:, 0] if sequences else v).items():
                draws[name] = pyro.sample(name, dist.Normal(loc, scale).to_event(1))
            if layout.steps:
                mask = step_mask(batch)
                for group in layout.steps:
                    steps = v.shape[1] if group.follows == "padded" else int(batch.lengths.max())
                    z = None
                    for t in range(steps):
                        loc, scale = encoder.step(group.stem, z, h[:, t])
                        q = dist.Normal(loc, scale).to_event(1)
                        z = draws[group.name(t)] = pyro.sample(group.name(t), q.mask(mask[:, t]) if group.masked else q)
        return draws

    def local_posterior(self, x) -> dist.Distribution:
        """``q(z_n | x_n)`` of the sites per datum, side by side in the layout's order: batch
        ``(N,)``, event ``(Σ L,)``. Sites per time step have no such form (each step's ``q``
        depends on the previous step's draw): IncompatibleError."""
        if self.layout.steps or self.layout.sequences:
            raise IncompatibleError(
                "the amortized guide's q(z_t | z_{t-1}, x) of sites per time step depends on the previous "
                "step's draw: it has no q(z | x) in closed form; draw from the guide instead"
            )
        q = self.encoder.rows(values(self._model[0].model_input(x)))
        loc = torch.cat([q[n][0] for n, _ in self.layout.rows], -1)
        scale = torch.cat([q[n][1] for n, _ in self.layout.rows], -1)
        return dist.Normal(loc, scale).to_event(1)

    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Point estimate of the global latents (empty when the family has none)."""
        return self.globals_guide.median() if self.globals_guide is not None else {}
