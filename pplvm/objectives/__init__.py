"""Objectives by name: Pyro's own ELBO classes, plus two gradient estimators Pyro lacks.

============= =====================================================================
``elbo``       Trace_ELBO
``meanfield``  TraceMeanField_ELBO (analytic KL where available)
``enum``       TraceEnum_ELBO (discrete latents summed out exactly)
``renyi``      RenyiELBO(alpha)
``iwae``       RenyiELBO(alpha=0), the IWAE bound with k = num_particles
``iwae_dreg``  the IWAE bound with doubly reparameterised gradients (:mod:`.dreg`)
``stl``        the ELBO with the "sticking the landing" gradient (:mod:`.stl`)
============= =====================================================================

``iwae_dreg`` and ``stl`` are the ``iwae`` and ``elbo`` objectives (same values) with
lower-variance guide gradients; a family that admits ``iwae`` (``elbo``) admits them, provided
its guide is fully reparameterised and it has no enumerated discrete latents.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from ..config import ObjectiveConfig
from ..errors import IncompatibleError
from ..families.base import LatentVariableModel
from ._pathwise import check_reparameterised
from .dreg import IWAE_DReG
from .stl import TraceSTL_ELBO

OBJECTIVES = {
    "elbo": "Trace_ELBO",
    "meanfield": "TraceMeanField_ELBO (analytic KL terms)",
    "enum": "TraceEnum_ELBO (discrete latents summed out by enumeration)",
    "renyi": "RenyiELBO(alpha)",
    "iwae": "RenyiELBO(alpha=0): IWAE with k = num_particles",
    "iwae_dreg": "IWAE with doubly reparameterised (DReG) guide gradients",
    "stl": "ELBO with the sticking-the-landing (STL) guide gradient",
}

#: pathwise estimators and the objective whose value each one estimates
PATHWISE = {"iwae_dreg": "iwae", "stl": "elbo"}


def check_compatible(model: LatentVariableModel, cfg: ObjectiveConfig, guide: Callable | None = None,
                     args: tuple = (), kwargs: dict[str, Any] | None = None) -> None:
    """Refuse, before any training, a model / objective pair that cannot work.

    For ``iwae_dreg`` and ``stl``, pass the ``guide`` and example ``args`` (a batch) to also
    check, by tracing it once, that every guide site is reparameterised."""
    family = model.config.family
    admitted = model.objectives + tuple(k for k, v in PATHWISE.items() if v in model.objectives)
    if cfg.name in PATHWISE and model.enumerated:
        raise IncompatibleError(
            f"objective.name = {cfg.name!r} cannot train family {family!r}: its discrete latent(s) "
            f"{', '.join(model.local_sites)} are summed out by enumeration, and {cfg.name} is a "
            "pathwise estimator that needs every latent reparameterised; use objective.name = 'enum'"
        )
    if cfg.name not in admitted:
        if model.enumerated:
            why = (
                f"its discrete latent(s) {', '.join(model.local_sites)} are summed out by "
                "enumeration, which only 'enum' (TraceEnum_ELBO) does"
            )
        else:
            why = f"it admits: {', '.join(admitted)}"
        raise IncompatibleError(f"objective.name = {cfg.name!r} cannot train family {family!r}: {why}")
    if cfg.name in ("iwae", "iwae_dreg") and cfg.num_particles < 2:
        hint = "" if cfg.name == "iwae" else " (with k = 1 use 'stl')"
        raise IncompatibleError(f"objective.num_particles: {cfg.name} needs k >= 2 particles{hint}")
    if cfg.name == "renyi" and cfg.alpha == 1:
        raise IncompatibleError("objective.alpha = 1 is the ELBO; use objective.name = 'elbo'")
    if cfg.name in PATHWISE and guide is not None:
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **(kwargs or {}))
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **(kwargs or {}))
        check_reparameterised(guide_trace, model_trace, f"objective.name = {cfg.name!r}")


def make_objective(model: LatentVariableModel, cfg: ObjectiveConfig) -> ELBO:
    check_compatible(model, cfg)
    kw = dict(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.vectorize_particles,
        max_plate_nesting=model.max_plate_nesting,
    )
    if cfg.name == "elbo":
        return Trace_ELBO(**kw)
    if cfg.name == "meanfield":
        return TraceMeanField_ELBO(**kw)
    if cfg.name == "enum":
        return TraceEnum_ELBO(**kw)
    if cfg.name == "stl":
        return TraceSTL_ELBO(**kw)
    if cfg.name == "iwae_dreg":
        return IWAE_DReG(**kw)
    return RenyiELBO(alpha=0.0 if cfg.name == "iwae" else cfg.alpha, **kw)


__all__ = ["OBJECTIVES", "PATHWISE", "IWAE_DReG", "TraceSTL_ELBO", "check_compatible", "make_objective"]
