"""Guides q(θ) over a family's global latents, and q(z | x) over continuous local ones.

``meanfield`` (AutoNormal), ``map`` (AutoDelta) and ``lowrank``
(AutoLowRankMultivariateNormal) are Pyro's autoguides on the model with every site but the
globals hidden: enumerated local latents stay in the model, where TraceEnum_ELBO sums them out.
``amortized`` and ``exact`` add a per-datum q(z_n | x_n) (an encoder, or the family's closed-form
posterior) to a mean-field guide of the globals, if the family has any.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_value

from ..errors import IncompatibleError
from ..families.base import ContinuousLatentModel, ExactLocalPosterior, LatentVariableModel, UserGuide
from .amortized import AmortizedNormal
from .exact import ExactLocalGuide
from .local import MeanFieldLocal

GUIDES = {
    "amortized": "encoder network q(z_n | x_n) for continuous local latents (+ mean-field globals)",
    "meanfield": "mean-field normal over the globals (AutoNormal) and, for continuous local latents, "
                 "free per-datum normals q(z_n) over the training data",
    "map": "point estimate of the globals (AutoDelta, MAP)",
    "lowrank": "low-rank multivariate normal over the globals (AutoLowRankMultivariateNormal)",
    "exact": "closed-form posterior p(z_n | x_n, θ) for the local latents (+ mean-field globals)",
    "custom": "your own guide (model.guide_target, or guide= from Python) for your own model",
}


def make_guide(model: LatentVariableModel, kind: str, x: torch.Tensor, *, init_scale: float = 0.1,
               generator: torch.Generator | None = None, num_data: int | None = None) -> torch.nn.Module:
    """Build the guide ``kind`` for ``model``, initialised from the training data ``x``
    (``num_data``: the number of training data, when ``x`` is only a sample of them)."""
    if kind not in model.guides:
        raise IncompatibleError(
            f"guide.kind = {kind!r} is not available for family {model.config.family!r}; "
            f"expected one of: {', '.join(model.guides)}"
        )
    if kind == "custom":
        if not isinstance(model, UserGuide):
            raise IncompatibleError(f"guide.kind = 'custom': family {model.config.family!r} brings no guide")
        return model.user_guide()
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    init = init_to_value(values=model.init_values(x, generator), fallback=init_to_median)
    blocked = poutine.block(model, expose=list(model.global_sites))
    if kind in ("amortized", "exact"):
        globals_guide = AutoNormal(blocked, init_loc_fn=init, init_scale=init_scale) if model.global_sites else None
        if kind == "exact":
            if not isinstance(model, ExactLocalPosterior):
                raise IncompatibleError(f"guide.kind = 'exact' needs a closed-form local posterior; "
                                        f"family {model.config.family!r} has none")
            return ExactLocalGuide(model, globals_guide)
        if not isinstance(model, ContinuousLatentModel):
            raise IncompatibleError(f"guide.kind = 'amortized' needs continuous local latents; "
                                    f"family {model.config.family!r} has none")
        return AmortizedNormal(model, model.make_encoder(), globals_guide)
    if kind == "meanfield" and isinstance(model, ContinuousLatentModel):
        globals_guide = AutoNormal(blocked, init_loc_fn=init, init_scale=init_scale) if model.global_sites else None
        return MeanFieldLocal(model, num_data or len(x), globals_guide, init_scale=init_scale)
    if kind == "meanfield":
        return AutoNormal(blocked, init_loc_fn=init, init_scale=init_scale)
    if kind == "map":
        return AutoDelta(blocked, init_loc_fn=init)
    if kind == "lowrank":
        return AutoLowRankMultivariateNormal(blocked, init_loc_fn=init, init_scale=init_scale)
    raise IncompatibleError(f"guide.kind = {kind!r}: expected one of: {', '.join(GUIDES)}")


__all__ = ["GUIDES", "make_guide"]
