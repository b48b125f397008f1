"""An objective and a guide of a user's own, outside the package, named by import path from
cards in the tests (``objective.target = "user_plugins:HalfTemperedEnum"``)."""

from __future__ import annotations

from pydantic import Field
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal

from pplvm.guides import Guide, GuideConfig
from pplvm.objectives import SVIObjective


class EnumELBO(SVIObjective):
    """TraceEnum_ELBO, declared as enumerating: held to what pplvm's ``enum`` needs."""

    enumerates = True

    def elbo(self, model):
        return TraceEnum_ELBO(max_plate_nesting=model.max_plate_nesting, num_particles=self.config.num_particles)


class DiagonalGlobals(Guide):
    """AutoDiagonalNormal over the global latents, with its own option."""

    class Config(GuideConfig):
        scale: float = Field(0.05, gt=0)

    def refusal(self, model):
        return None if model.global_sites else "it guides global latents, and this model has none"

    def build(self, model, x, *, generator=None, num_data=None):
        blocked = poutine.block(model, expose=list(model.global_sites))
        return AutoDiagonalNormal(blocked, init_scale=self.config.scale)
