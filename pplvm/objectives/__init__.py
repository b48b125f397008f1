"""Objectives: plugins that register their own names (:mod:`.base`), each with its own card
section, what it needs of the model and the guide, and the update rule it trains with.

pplvm's short names (``elbo``, ``meanfield``, ``enum``, ``renyi``, ``iwae``, ``iwae_dreg``,
``stl``, ``diffusion``, ``vdm``, ``gan``, ``gan_hinge``, ``wgan_gp``, ``em``), every Pyro ELBO by
its class name (:mod:`.pyro_elbos`), and your own by import path (``custom``, :mod:`.custom`).
``pplvm list`` shows them. ``iwae_dreg`` and ``stl`` are the ``iwae`` and ``elbo`` objectives
(same values) with lower-variance guide gradients, for fully reparameterised guides.

Posterior-collapse controls act on a family's continuous local latents under the SVI
objectives: ``kl_weight`` / ``kl_warmup_epochs`` (a β on their KL, scheduled over training:
:mod:`.annealing`) and ``free_bits`` (a per-dimension floor on their analytic KL, ``meanfield``
only: :mod:`.free_bits`).
"""

# ruff: noqa: I001
from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.infer import ELBO

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from .._modes import evaluating
from ..errors import CardError, IncompatibleError, PplvmError
from ..families.base import LatentVariableModel
from ..guides import GUIDES, guide_for
from ..guides import admitted as admitted_guides
from ..guides.base import GuideTraits
from ..training.rules import UpdateRule

# the order of registration is the order listings show (hence the imports' order: ruff I001 off)
from .trace import Elbo, Enum, MeanField
from .renyi import IWAE, Renyi, RenyiBound
from .dreg import IWAE_DReG, IWAEDReG
from .stl import STL, TraceSTL_ELBO
from .diffusion import DiffusionBound, DiffusionELBO, VDMBound, VDMLoss
from .adversarial import Adversarial, AdversarialStep
from .em import EM, EMStep
from .custom import Custom
from .annealing import KLSchedule, ScaleSites
from .base import OBJECTIVES, Objective, ObjectiveConfig
from .free_bits import FreeBitsELBO
from .pyro_elbos import PYRO_ELBOS, register_pyro_elbos
from .svi import SVIObjective

register_pyro_elbos()  # after pplvm's own names


def objective_for(cfg: ObjectiveConfig, obj: Any = None) -> Objective:
    """The plugin of a card's ``[objective]`` section (``obj``: an objective passed from Python
    for ``name = "custom"``)."""
    cls = OBJECTIVES[cfg.name]
    return cls(cfg, obj) if cls is Custom else cls(cfg)


def objective_config(**fields: Any) -> ObjectiveConfig:
    """An ``[objective]`` section from keyword arguments, validated as a card's is
    (``objective_config(name="iwae", num_particles=5)``)."""
    from pydantic import ValidationError

    name = fields.get("name", "elbo")
    if name not in OBJECTIVES:
        raise CardError(f"objective.name = {name!r}: expected one of: {', '.join(OBJECTIVES)}")
    for key in fields.keys() - OBJECTIVES[name].Config.model_fields.keys():
        raise CardError(
            f"objective.{key}: {OBJECTIVES.foreign_option('objective', 'name', name, key) or 'unknown key'}"
        )
    try:
        return OBJECTIVES[name].Config.model_validate({"name": name, **fields})
    except ValidationError as err:
        raise CardError(f"objective: {err.errors()[0]['msg']} ({err.errors()[0]['loc']})") from None


def settle(card: Any, model: LatentVariableModel, objective: Any = None) -> Any:
    """The card with what it leaves to the model decided: the objective's ``"auto"`` options
    (:meth:`Objective.resolve`) and ``guide.kind = "auto"`` (the first guide the model admits
    that the objective can train with). Written into the run's card; settled cards stay as they are.
    ``objective``: your own objective object, for ``objective.name = "custom"``."""
    plugin = objective_for(card.objective, objective)
    guide = card.guide
    if guide.kind == "auto":
        fits = [k for k in admitted_guides(model) if plugin.refusal(model, _traits(k, model)) is None]
        if not fits:
            raise IncompatibleError(
                f"guide.kind = 'auto': no guide serves family {model.config.family!r} under {plugin.label}"
            )
        guide = GUIDES[fits[0]].Config(kind=fits[0])
    return card.model_copy(update={"objective": plugin.resolve(model), "guide": guide})


def _traits(kind: str, model: LatentVariableModel) -> GuideTraits:
    return GUIDES[kind](GUIDES[kind].Config(kind=kind)).traits(model)


def admitted(model: LatentVariableModel, guide: GuideTraits) -> list[str]:
    """The registered objectives (at their defaults) that can train ``model`` with a guide offering ``guide``."""
    out = []
    for name, cls in OBJECTIVES.in_order():
        if cls is Custom:
            continue
        plugin = cls(cls.Config(name=name))
        if plugin.refusal(model, guide) is None:
            out.append(name)
    return out


def admissions(name: str, family: type[LatentVariableModel], dim: int = 8) -> tuple[list[str], list[str]]:
    """``(guides, objectives)`` a family admits at its card defaults (objectives with any of those
    guides), for listings; empty where its defaults build no model (a model of your own)."""
    try:
        model = family.from_config(family.Config(family=name), dim)
    except (PplvmError, ValueError, TypeError):
        return [], []
    return admitted_for(model)


def admitted_for(model: LatentVariableModel) -> tuple[list[str], list[str]]:
    """``(guides, objectives)`` that can serve this built ``model`` (objectives with any of
    those guides), in registration order: what ``pplvm list`` shows, for a model of your own."""
    guides = admitted_guides(model)
    names = {n for g in guides for n in admitted(model, _traits(g, model))}
    return guides, [n for n, _ in OBJECTIVES.in_order() if n in names]


def check_compatible(
    model: LatentVariableModel,
    cfg: ObjectiveConfig,
    guide: Callable | None = None,
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    *,
    traits: GuideTraits | None = None,
) -> None:
    """Refuse, before any training, a model / objective pair that cannot work: the objective's
    needs against the model's capabilities and the guide's ``traits``; with ``guide`` and an
    example batch ``args``, also the checks that trace the guide (pathwise estimators: every
    guide site reparameterised)."""
    plugin = objective_for(cfg) if not isinstance(cfg, Objective) else cfg
    plugin.check(model, traits if traits is not None else GuideTraits())
    if guide is not None:
        with evaluating(model, guide):  # a probe on an example batch, not a step
            plugin.check_guide(model, guide, args, kwargs)


def make_objective(model: LatentVariableModel, cfg: ObjectiveConfig, *, checked: bool = False) -> ELBO:
    """The Pyro ELBO an SVI objective's ``[objective]`` section describes, checked against ``model``.

    Args:
        model: the family instance.
        cfg: the ``[objective]`` section (e.g. from :func:`objective_config`).
        checked: :func:`check_compatible` has already passed (the facade checks each build once).

    Returns:
        A ``pyro.infer.ELBO`` instance.

    Raises:
        IncompatibleError: the objective cannot train ``model`` (the message names why).
    """
    plugin = objective_for(cfg)
    if not checked:
        plugin.check(model, GuideTraits())
    return plugin.elbo(model)


def make_update_rule(
    model: LatentVariableModel,
    guide: torch.nn.Module,
    card: Any,
    *,
    held_out: bool = True,
    traits: GuideTraits | None = None,
    objective: Objective | None = None,
    checked: bool = False,
) -> UpdateRule:
    """What the trainer does with each minibatch under the card's objective (its plugin's
    rule: an SVI step, a compiled SVI step, an EM step, an adversarial step ...). ``held_out``:
    whether the guide can score held-out data (not for per-datum guides); ``checked``: the
    pairing has already passed :func:`check_compatible` (the facade checks each build once)."""
    plugin = objective if objective is not None else objective_for(card.objective)
    if not checked:
        plugin.check(model, traits if traits is not None else guide_for(card.guide).traits(model))
    return plugin.rule(model, guide, card, held_out=held_out)


__all__ = [
    "EM",
    "IWAE",
    "OBJECTIVES",
    "PYRO_ELBOS",
    "STL",
    "Adversarial",
    "AdversarialStep",
    "Custom",
    "DiffusionBound",
    "DiffusionELBO",
    "EMStep",
    "Elbo",
    "Enum",
    "FreeBitsELBO",
    "IWAEDReG",
    "IWAE_DReG",
    "KLSchedule",
    "MeanField",
    "Objective",
    "ObjectiveConfig",
    "Renyi",
    "RenyiBound",
    "SVIObjective",
    "ScaleSites",
    "TraceSTL_ELBO",
    "VDMBound",
    "VDMLoss",
    "admissions",
    "admitted_for",
    "admitted",
    "check_compatible",
    "make_objective",
    "make_update_rule",
    "objective_config",
    "settle",
]
