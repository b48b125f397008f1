"""Objectives by name, each one of Pyro's own ELBO classes.

=========== ==================================================
``elbo``     Trace_ELBO
``meanfield`` TraceMeanField_ELBO (analytic KL where available)
``enum``     TraceEnum_ELBO (discrete latents summed out exactly)
``renyi``    RenyiELBO(alpha) (as :class:`.renyi.RenyiBound`: a torch loss, per-datum minibatches)
``iwae``     RenyiELBO(alpha=0), the IWAE bound with k = num_particles
=========== ==================================================

Posterior-collapse controls act on a family's continuous local latents under any of these:
``kl_weight`` / ``kl_warmup_epochs`` (a β on their KL, scheduled over training:
:mod:`.annealing`) and ``free_bits`` (a per-dimension floor on their analytic KL, ``meanfield``
only: :mod:`.free_bits`).
"""

from __future__ import annotations

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from ..config import ObjectiveConfig
from ..errors import IncompatibleError
from ..families.base import LatentVariableModel
from .annealing import KLSchedule, ScaleSites
from .free_bits import FreeBitsELBO
from .renyi import RenyiBound

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
    controls = [k for k, off in (("kl_weight", 1.0), ("kl_warmup_epochs", 0.0), ("free_bits", 0.0))
                if getattr(cfg, k) != off]
    if controls and model.enumerated:
        raise IncompatibleError(
            f"objective.{controls[0]} weights the KL of continuous local latents; family {family!r} sums "
            f"its latent(s) {', '.join(model.local_sites)} out by enumeration"
        )
    if cfg.free_bits > 0 and cfg.name != "meanfield":
        raise IncompatibleError(
            f"objective.free_bits needs the analytic per-dimension KL of objective.name = 'meanfield', "
            f"not {cfg.name!r}"
        )


def make_objective(model: LatentVariableModel, cfg: ObjectiveConfig) -> ELBO:
    check_compatible(model, cfg)
    kw = dict(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.vectorize_particles,
        max_plate_nesting=model.max_plate_nesting,
    )
    if cfg.name == "elbo":
        return Trace_ELBO(**kw)
    if cfg.name == "meanfield" and cfg.free_bits > 0:
        return FreeBitsELBO(cfg.free_bits, model.local_sites, **kw)
    if cfg.name == "meanfield":
        return TraceMeanField_ELBO(**kw)
    if cfg.name == "enum":  # latents collapsed into a distribution leave no site to enumerate
        return TraceEnum_ELBO(strict_enumeration_warning=not model.collapsed, **kw)
    return RenyiBound(alpha=0.0 if cfg.name == "iwae" else cfg.alpha, **kw)


def make_schedule(model: LatentVariableModel, cfg: ObjectiveConfig) -> KLSchedule | None:
    """The KL-annealing schedule the trainer applies per step, or None when β is 1 throughout."""
    if cfg.kl_weight == 1.0 and cfg.kl_warmup_epochs == 0:
        return None
    return KLSchedule(model.local_sites, cfg.kl_weight, cfg.kl_warmup_epochs)


__all__ = ["OBJECTIVES", "FreeBitsELBO", "KLSchedule", "RenyiBound", "ScaleSites", "check_compatible", "make_objective",
           "make_schedule"]
