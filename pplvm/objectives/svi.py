"""Objectives trained by stochastic variational inference on a Pyro ELBO.

:class:`SVIObjective` is the base of every objective whose update rule is a gradient step on
an :class:`~pyro.infer.ELBO` (``elbo``, ``meanfield``, ``enum``, ``renyi``, ``iwae``, ``stl``,
``iwae_dreg``, the diffusion bounds and Pyro's own ELBOs by class name): it states what such an
objective needs of the model, builds the KL-annealing schedule and the SVI step (compiled per
``training.compile``). A subclass builds its :meth:`SVIObjective.elbo` and adds its needs.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from pydantic import Field
from pyro import poutine
from pyro.infer import ELBO

from ..guides.base import GuideTraits
from ..training.compiled import CompiledSVIStep
from ..training.rules import SVIStep, UpdateRule
from ._pathwise import check_reparameterised
from .annealing import KLSchedule
from .base import Objective, ObjectiveConfig


class ParticlesConfig(ObjectiveConfig):
    num_particles: int = Field(1, ge=1, description="Monte Carlo particles (k for iwae)")
    vectorize_particles: bool = Field(
        True, description="compute the particles in one vectorised pass (needs a static model and guide structure)"
    )


class SVIConfig(ParticlesConfig):
    kl_weight: float = Field(
        1.0, gt=0, description="weight β of the local latents' log p(z) - log q(z|x) (their KL); 1 is the ELBO"
    )
    kl_warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="KL warm-up: β rises linearly from 0 to kl_weight over this many epochs, step by step; 0 = off",
    )


class SVIObjective(Objective):
    r"""An ELBO trained by SVI (the base of the SVI objectives).

    Each step takes a gradient step on a Pyro ELBO's loss for the minibatch, every site in the
    data plate scaled by N / B so the loss estimates the full data's. With ``kl_weight`` β or
    ``kl_warmup_epochs`` the local latents' :math:`\log p(z) - \log q(z \mid x)` is weighted by a
    scheduled β (:class:`~pplvm.objectives.annealing.KLSchedule`); held-out losses use β = 1.

    **Needs**, of every SVI objective: a likelihood to bound (not an implicit density: a GAN is
    trained adversarially); enumerated locals only for an objective that enumerates (``enum``,
    ``TraceEnum_ELBO``, ``TraceTMC_ELBO``), and such an objective only for models whose locals
    are all enumerated; every guide site reparameterised for a pathwise estimator (``stl``,
    ``iwae_dreg``); a guide whose sites are drawn independently for analytic KLs (``meanfield``);
    a model that takes a leading particle dim for ``vectorize_particles`` with several particles.
    """

    Config = SVIConfig
    #: True when the ELBO sums discrete local latents out by enumeration (TraceEnum_ELBO)
    enumerates: ClassVar[bool] = False
    #: True for a pathwise gradient estimator: every guide site must be reparameterised
    pathwise: ClassVar[bool] = False
    #: True when the ELBO takes analytic KLs site by site (TraceMeanField_ELBO)
    mean_field: ClassVar[bool] = False

    @abc.abstractmethod
    def elbo(self, model: Any) -> ELBO:
        """The Pyro objective for ``model``."""

    def particles(self, model: Any) -> dict[str, Any]:
        c = self.config
        return dict(
            num_particles=c.num_particles,
            vectorize_particles=c.vectorize_particles,
            max_plate_nesting=model.max_plate_nesting,
        )

    def refusal(self, model: Any, guide: GuideTraits) -> str | None:
        family, sites, locals_ = model.config.family, ", ".join(model.discrete_sites), ", ".join(model.local_sites)
        if model.likelihood == "none":
            return self.cannot(model, "it has an implicit density (no log p(x | z) to bound); train it adversarially")
        if self.pathwise and model.enumerated:
            return (
                f"{self.label} cannot train family {family!r}: its discrete latent(s) {sites} are summed out "
                f"by enumeration, and {self.config.name} is a pathwise estimator that needs every latent "
                "reparameterised; use objective.name = 'enum'"
            )
        if model.enumerated and not self.enumerates:
            return self.cannot(
                model,
                f"its discrete latent(s) {sites} are summed out by enumeration, "
                "which only 'enum' (TraceEnum_ELBO) does",
            )
        if self.enumerates and model.local_sites and not model.enumerated:
            return self.cannot(
                model,
                f"it sums discrete latents out by enumeration, and the local latent(s) {locals_} are not "
                "enumerated (they are sampled from the guide); use objective.name = 'elbo'",
            )
        if self.mean_field and not guide.factorised:
            return self.cannot(
                model, "its analytic KLs need guide sites drawn independently; this guide draws each from another's"
            )
        c = self.config
        if (
            getattr(c, "num_particles", 1) > 1
            and getattr(c, "vectorize_particles", False)
            and not model.vectorized_particles
        ):
            return (
                f"objective.vectorize_particles: family {family!r} runs its model on one particle at a time; "
                "set objective.vectorize_particles = false"
            )
        kl = (("kl_weight", 1.0), ("kl_warmup_epochs", 0.0))
        controls = [k for k, off in kl if getattr(self.config, k, off) != off]
        if controls and model.enumerated:
            return (
                f"objective.{controls[0]} weights the KL of continuous local latents; family {family!r} sums "
                f"its latent(s) {sites} out by enumeration"
            )
        return None

    def check_guide(self, model: Any, guide: Any, args: tuple = (), kwargs: dict | None = None) -> None:
        if not self.pathwise:
            return
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **(kwargs or {}))
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **(kwargs or {}))
        check_reparameterised(guide_trace, model_trace, self.label)

    def schedule(self, model: Any) -> KLSchedule | None:
        """The KL-annealing schedule the trainer applies per step, or None when β is 1 throughout."""
        weight, warmup = getattr(self.config, "kl_weight", 1.0), getattr(self.config, "kl_warmup_epochs", 0.0)
        if weight == 1.0 and warmup == 0:
            return None
        return KLSchedule(model.local_sites, weight, warmup)

    def rule(self, model: Any, guide: Any, card: Any, *, held_out: bool = True) -> UpdateRule:
        objective, schedule = self.elbo(model), self.schedule(model)
        if card.training.compile == "off":
            return SVIStep(model, guide, objective, card.training, schedule=schedule, held_out=held_out)
        return CompiledSVIStep(
            model, guide, objective, card.training, schedule=schedule, held_out=held_out, mode=card.training.compile
        )
