"""Objectives by name, each one of Pyro's own ELBO classes.

=========== ==================================================
``elbo``     Trace_ELBO
``meanfield`` TraceMeanField_ELBO (analytic KL where available)
``enum``     TraceEnum_ELBO (discrete latents summed out exactly)
``renyi``    RenyiELBO(alpha)
``iwae``     RenyiELBO(alpha=0), the IWAE bound with k = num_particles
=========== ==================================================
"""

from __future__ import annotations

from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from ..config import ObjectiveConfig
from ..errors import IncompatibleError
from ..families.base import LatentVariableModel

OBJECTIVES = {
    "elbo": "Trace_ELBO",
    "meanfield": "TraceMeanField_ELBO (analytic KL terms)",
    "enum": "TraceEnum_ELBO (discrete latents summed out by enumeration)",
    "renyi": "RenyiELBO(alpha)",
    "iwae": "RenyiELBO(alpha=0): IWAE with k = num_particles",
}


def check_compatible(model: LatentVariableModel, cfg: ObjectiveConfig) -> None:
    """Refuse, before any training, a model / objective pair that cannot work."""
    family = model.config.family
    if cfg.name not in model.objectives:
        if model.enumerated:
            why = (
                f"its discrete latent(s) {', '.join(model.local_sites)} are summed out by "
                "enumeration, which only 'enum' (TraceEnum_ELBO) does"
            )
        else:
            why = f"it admits: {', '.join(model.objectives)}"
        raise IncompatibleError(f"objective.name = {cfg.name!r} cannot train family {family!r}: {why}")
    if cfg.name == "iwae" and cfg.num_particles < 2:
        raise IncompatibleError("objective.num_particles: iwae needs k >= 2 particles")
    if cfg.name == "renyi" and cfg.alpha == 1:
        raise IncompatibleError("objective.alpha = 1 is the ELBO; use objective.name = 'elbo'")


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
    if cfg.name == "enum":  # latents collapsed into a distribution leave no site to enumerate
        return TraceEnum_ELBO(strict_enumeration_warning=not model.collapsed, **kw)
    return RenyiELBO(alpha=0.0 if cfg.name == "iwae" else cfg.alpha, **kw)


__all__ = ["OBJECTIVES", "check_compatible", "make_objective"]
