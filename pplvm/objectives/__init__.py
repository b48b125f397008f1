"""Objectives by name: Pyro's own ELBO classes, plus two gradient estimators Pyro lacks.

============= =====================================================================
``elbo``       Trace_ELBO
``meanfield``  TraceMeanField_ELBO (analytic KL where available)
``enum``       TraceEnum_ELBO (discrete latents summed out exactly)
``renyi``      RenyiELBO(alpha) (as :class:`.renyi.RenyiBound`: a torch loss, per-datum minibatches)
``iwae``       RenyiELBO(alpha=0), the IWAE bound with k = num_particles
``iwae_dreg``  the IWAE bound with doubly reparameterised gradients (:mod:`.dreg`)
``stl``        the ELBO with the "sticking the landing" gradient (:mod:`.stl`)
``diffusion``  a diffusion family's bound, time steps subsampled, KLs analytic (:mod:`.diffusion`)
``vdm``        a diffusion family's continuous-time bound (Kingma et al. 2021, :mod:`.diffusion`)
``gan``        adversarial, non-saturating loss (an update rule of its own: :mod:`.adversarial`)
``gan_hinge``  adversarial, hinge loss
``wgan_gp``    Wasserstein critic with a gradient penalty
``em``         exact EM: closed-form E- and M-steps, full batch or stepwise (:mod:`.em`)
============= =====================================================================

``iwae_dreg`` and ``stl`` are the ``iwae`` and ``elbo`` objectives (same values) with
lower-variance guide gradients; a family that admits ``iwae`` (``elbo``) admits them, provided
its guide is fully reparameterised and it has no enumerated discrete latents.

Posterior-collapse controls act on a family's continuous local latents under any of these:
``kl_weight`` / ``kl_warmup_epochs`` (a β on their KL, scheduled over training:
:mod:`.annealing`) and ``free_bits`` (a per-dimension floor on their analytic KL, ``meanfield``
only: :mod:`.free_bits`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from ..config import ObjectiveConfig
from ..errors import IncompatibleError
from ..families.base import LatentVariableModel
from ..training.compiled import CompiledSVIStep
from ..training.rules import SVIStep, UpdateRule
from ._pathwise import check_reparameterised
from .adversarial import AdversarialStep, adversarial_rule
from .annealing import KLSchedule, ScaleSites
from .diffusion import DiffusionELBO, VDMLoss
from .dreg import IWAE_DReG
from .em import EMStep, make_em_rule
from .free_bits import FreeBitsELBO
from .renyi import RenyiBound
from .stl import TraceSTL_ELBO

OBJECTIVES = {
    "elbo": "Trace_ELBO",
    "meanfield": "TraceMeanField_ELBO (analytic KL terms)",
    "enum": "TraceEnum_ELBO (discrete latents summed out by enumeration)",
    "renyi": "RenyiELBO(alpha)",
    "iwae": "RenyiELBO(alpha=0): IWAE with k = num_particles",
    "iwae_dreg": "IWAE with doubly reparameterised (DReG) guide gradients",
    "stl": "ELBO with the sticking-the-landing (STL) guide gradient",
    "diffusion": "diffusion bound over subsampled time steps, analytic KLs (weighting: elbo | simple)",
    "vdm": "continuous-time diffusion bound (VDM), antithetic time draws",
    "gan": "adversarial training, non-saturating loss (two optimisers; implicit-density families)",
    "gan_hinge": "adversarial training, hinge loss",
    "wgan_gp": "Wasserstein critic with gradient penalty (model.critic_steps, model.gradient_penalty)",
    "em": "exact EM (closed-form E and M steps; guide.kind = 'map' holds the point estimate)",
}

#: pathwise estimators and the objective whose value each one estimates
PATHWISE = {"iwae_dreg": "iwae", "stl": "elbo"}


def check_compatible(
    model: LatentVariableModel,
    cfg: ObjectiveConfig,
    guide: Callable | None = None,
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    *,
    guide_kind: str | None = None,
) -> None:
    """Refuse, before any training, a model / objective pair that cannot work.

    For ``iwae_dreg`` and ``stl``, pass the ``guide`` and example ``args`` (a batch) to also
    check, by tracing it once, that every guide site is reparameterised. ``guide_kind``: the
    card's guide, checked where an objective needs a particular one (``em``: ``map``)."""
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
    if cfg.name == "em":
        if cfg.em_estimate not in model.em_estimates():
            raise IncompatibleError(
                f"objective.em_estimate = {cfg.em_estimate!r}: family {family!r} with this configuration has a "
                f"closed-form M-step only for {' | '.join(repr(e) for e in model.em_estimates())} (a full covariance's "
                "LogNormal scales and LKJ correlations have no closed-form mode; use model.covariance = 'diag')"
            )
        if guide_kind is not None and guide_kind != "map":
            raise IncompatibleError(
                f"objective.name = 'em' fits a point estimate of the globals: it needs "
                f"guide.kind = 'map' (got {guide_kind!r})"
            )
    if cfg.name in ("iwae", "iwae_dreg") and cfg.num_particles < 2:
        hint = "" if cfg.name == "iwae" else " (with k = 1 use 'stl')"
        raise IncompatibleError(f"objective.num_particles: {cfg.name} needs k >= 2 particles{hint}")
    if cfg.name == "renyi" and cfg.alpha == 1:
        raise IncompatibleError("objective.alpha = 1 is the ELBO; use objective.name = 'elbo'")
    if cfg.name == "em" and cfg.num_particles != 1:
        raise IncompatibleError("objective.num_particles: em takes exact expectations (no particles); leave it at 1")
    controls = [
        k for k, off in (("kl_weight", 1.0), ("kl_warmup_epochs", 0.0), ("free_bits", 0.0)) if getattr(cfg, k) != off
    ]
    if controls and model.enumerated:
        raise IncompatibleError(
            f"objective.{controls[0]} weights the KL of continuous local latents; family {family!r} sums "
            f"its latent(s) {', '.join(model.local_sites)} out by enumeration"
        )
    if cfg.free_bits > 0 and cfg.name != "meanfield":
        raise IncompatibleError(
            f"objective.free_bits needs the analytic per-dimension KL of objective.name = 'meanfield', not {cfg.name!r}"
        )
    if cfg.weighting != "elbo" and cfg.name != "diffusion":
        raise IncompatibleError(
            f"objective.weighting = {cfg.weighting!r} applies to objective.name = 'diffusion', not {cfg.name!r}"
        )
    if controls and cfg.name in ("diffusion", "vdm"):
        raise IncompatibleError(f"objective.{controls[0]} does not apply to objective.name = {cfg.name!r}")
    if cfg.name in PATHWISE and guide is not None:
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **(kwargs or {}))
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **(kwargs or {}))
        check_reparameterised(guide_trace, model_trace, f"objective.name = {cfg.name!r}")


def make_objective(model: LatentVariableModel, cfg: ObjectiveConfig, *, checked: bool = False) -> ELBO:
    """The ELBO ``cfg`` names for ``model``; ``checked``: :func:`check_compatible` has already
    passed (the facade checks each build once)."""
    if not checked:
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
    if cfg.name == "stl":
        return TraceSTL_ELBO(**kw)
    if cfg.name == "diffusion":
        return DiffusionELBO(cfg.weighting, cfg.num_particles)
    if cfg.name == "vdm":
        return VDMLoss(cfg.num_particles)
    if cfg.name == "iwae_dreg":
        return IWAE_DReG(**kw)
    return RenyiBound(alpha=0.0 if cfg.name == "iwae" else cfg.alpha, **kw)


#: objectives trained by an update rule of their own rather than by an SVI step on an ELBO:
#: ``name -> factory(model, guide, card) -> UpdateRule`` (e.g. an exact EM step)
RULES: dict[str, Callable[[LatentVariableModel, torch.nn.Module, Any], UpdateRule]] = {
    **{name: adversarial_rule(name) for name in ("gan", "gan_hinge", "wgan_gp")},
    "em": make_em_rule,
}


def make_update_rule(
    model: LatentVariableModel, guide: torch.nn.Module, card: Any, *, held_out: bool = True, checked: bool = False
) -> UpdateRule:
    """What the trainer does with each minibatch under the card's objective: that objective's
    own rule where it has one (:data:`RULES`), else an SVI step on :func:`make_objective`.
    ``held_out``: whether the guide can score held-out data (not for per-datum guides);
    ``checked``: :func:`check_compatible` has already passed for this model, card and guide."""
    if not checked:
        check_compatible(model, card.objective, guide_kind=card.guide.kind)
    factory = RULES.get(card.objective.name)
    if factory is not None:
        return factory(model, guide, card)
    objective = make_objective(model, card.objective, checked=True)
    schedule = make_schedule(model, card.objective)
    if card.training.compile == "off":
        return SVIStep(model, guide, objective, card.training, schedule=schedule, held_out=held_out)
    return CompiledSVIStep(
        model, guide, objective, card.training, schedule=schedule, held_out=held_out, mode=card.training.compile
    )


def make_schedule(model: LatentVariableModel, cfg: ObjectiveConfig) -> KLSchedule | None:
    """The KL-annealing schedule the trainer applies per step, or None when β is 1 throughout."""
    if cfg.kl_weight == 1.0 and cfg.kl_warmup_epochs == 0:
        return None
    return KLSchedule(model.local_sites, cfg.kl_weight, cfg.kl_warmup_epochs)


__all__ = [
    "OBJECTIVES",
    "AdversarialStep",
    "PATHWISE",
    "DiffusionELBO",
    "EMStep",
    "FreeBitsELBO",
    "IWAE_DReG",
    "VDMLoss",
    "KLSchedule",
    "RenyiBound",
    "ScaleSites",
    "TraceSTL_ELBO",
    "RULES",
    "check_compatible",
    "make_objective",
    "make_schedule",
    "make_update_rule",
]
