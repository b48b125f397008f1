"""Guides q(θ) over a family's global latents, and q(z | x) over continuous local ones.

``meanfield`` (AutoNormal), ``map`` (AutoDelta) and ``lowrank``
(AutoLowRankMultivariateNormal) are Pyro's autoguides on the model with every site but the
globals hidden: enumerated local latents stay in the model, where TraceEnum_ELBO sums them out.
``forward`` is a family's own parameter-free guide (:class:`~pplvm.families.base.FixedGuide`:
a diffusion model's forward noising chain). ``amortized`` and ``exact`` add a per-datum
q(z_n | x_n) (an encoder, or the family's closed-form posterior) to a mean-field guide of the
globals, if the family has any.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_value
from torch.distributions import transform_to

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from ..errors import IncompatibleError
from ..families.base import ContinuousLatentModel, ExactLocalPosterior, FixedGuide, LatentVariableModel, UserGuide
from .amortized import AmortizedNormal
from .empty import EmptyGuide
from .exact import ExactLocalGuide
from .flow import AmortizedFlow, AutoFlowNormal
from .local import LocalGuide, MeanFieldLocal

GUIDES = {
    "amortized": "encoder network q(z_n | x_n) for continuous local latents (+ mean-field globals)",
    "meanfield": "mean-field normal over the globals (AutoNormal) and, for continuous local latents, "
    "free per-datum normals q(z_n) over the training data",
    "map": "point estimate of the globals (AutoDelta, MAP; with continuous local latents, their "
    "closed-form posterior p(z_n | x_n, θ))",
    "lowrank": "low-rank multivariate normal over the globals (AutoLowRankMultivariateNormal)",
    "exact": "closed-form posterior p(z_n | x_n, θ) for the local latents (+ mean-field globals)",
    "forward": "the family's own fixed guide, e.g. a diffusion model's forward noising chain q(z_1..z_T | x)",
    "flow": "normalizing flow: an IAF q(z_n | x_n) conditioned on the encoder (continuous local latents), "
    "an IAF over the globals' unconstrained space otherwise (guide.flow_layers, guide.flow_hidden)",
    "none": "no guide: the family has no latent site to infer (flows: exact likelihood; GANs)",
    "custom": "your own guide (model.guide_target, or guide= from Python) for your own model",
}


def make_guide(
    model: LatentVariableModel,
    kind: str,
    x: torch.Tensor,
    *,
    init_scale: float = 0.1,
    generator: torch.Generator | None = None,
    num_data: int | None = None,
    flow_layers: int = 2,
    flow_hidden: Sequence[int] = (),
) -> torch.nn.Module:
    """Build the guide ``kind`` for ``model``, initialised from the training data ``x``
    (``num_data``: the number of training data, when ``x`` is only a sample of them;
    ``flow_layers`` / ``flow_hidden``: IAF steps and their widths for ``kind = "flow"``), on the
    model's device (place the model first: autoguides create their parameters there)."""
    return _build_guide(model, kind, x, init_scale, generator, num_data, flow_layers, flow_hidden).to(model.device)


def _build_guide(model, kind, x, init_scale, generator, num_data, flow_layers, flow_hidden) -> torch.nn.Module:
    if kind not in model.guides:
        raise IncompatibleError(
            f"guide.kind = {kind!r} is not available for family {model.config.family!r}; "
            f"expected one of: {', '.join(model.guides)}"
        )
    if kind == "custom":
        if not isinstance(model, UserGuide):
            raise IncompatibleError(f"guide.kind = 'custom': family {model.config.family!r} brings no guide")
        return model.user_guide()
    if kind == "forward":
        if not isinstance(model, FixedGuide):
            raise IncompatibleError(
                f"guide.kind = 'forward' needs a family with a fixed guide of its own; "
                f"family {model.config.family!r} has none"
            )
        return model.make_fixed_guide()
    if kind == "none":
        return EmptyGuide()
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    # data-driven starts are computed where the data are (the host) and placed with the model
    start = {k: v.to(model.device) for k, v in model.init_values(x, generator).items()}
    init = init_to_value(values=start, fallback=init_to_median)
    blocked = poutine.block(model, expose=list(model.global_sites))
    if kind == "flow":
        flow = dict(num_transforms=flow_layers, hidden=flow_hidden)
        if isinstance(model, ContinuousLatentModel):
            globals_guide = AutoFlowNormal(blocked, init, init_scale, **flow) if model.global_sites else None
            return AmortizedFlow(model, model.make_encoder(), globals_guide, **flow)
        return AutoFlowNormal(blocked, init, init_scale, **flow)
    if kind in ("amortized", "exact"):
        globals_guide = AutoNormal(blocked, init_loc_fn=init, init_scale=init_scale) if model.global_sites else None
        if kind == "exact":
            if not isinstance(model, ExactLocalPosterior):
                raise IncompatibleError(
                    f"guide.kind = 'exact' needs a closed-form local posterior; family {model.config.family!r} has none"
                )
            return ExactLocalGuide(model, globals_guide)
        if not isinstance(model, ContinuousLatentModel):
            raise IncompatibleError(
                f"guide.kind = 'amortized' needs continuous local latents; family {model.config.family!r} has none"
            )
        return AmortizedNormal(model, model.make_encoder(), globals_guide)
    if kind == "map" and isinstance(model, ContinuousLatentModel):
        if not isinstance(model, ExactLocalPosterior):
            raise IncompatibleError(
                f"guide.kind = 'map' needs a closed-form local posterior for the continuous "
                f"latents of family {model.config.family!r}"
            )
        return ExactLocalGuide(model, AutoDelta(blocked, init_loc_fn=init) if model.global_sites else None)
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


def point_estimate(guide: torch.nn.Module) -> AutoDelta | None:
    """The AutoDelta holding a ``map`` guide's point estimate of the globals (None when the
    family has no global latents); IncompatibleError for a guide that holds a distribution."""
    delta = guide.globals_guide if isinstance(guide, LocalGuide) else guide
    if delta is not None and not isinstance(delta, AutoDelta):
        raise IncompatibleError(
            f"this needs a point estimate of the global latents (guide.kind = 'map'), not a {type(delta).__name__}"
        )
    return delta


@torch.no_grad()
def set_point_estimate(guide: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Write ``values`` (constrained, one per global site) into a ``map`` guide, in place."""
    delta = point_estimate(guide)
    for name, value in values.items():
        support = delta.prototype_trace.nodes[name]["fn"].support
        getattr(delta, f"{name}_unconstrained").copy_(transform_to(support).inv(value))


__all__ = [
    "GUIDES",
    "AmortizedFlow",
    "AutoFlowNormal",
    "EmptyGuide",
    "make_guide",
    "point_estimate",
    "set_point_estimate",
]
