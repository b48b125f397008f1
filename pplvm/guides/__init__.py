"""Guides q(θ) over a family's global latents, and q(z | x) over continuous local ones: plugins
that register their own kinds (:mod:`.base`), each with its own card section, what it needs of
the model and what it offers (:class:`~.base.GuideTraits`).

pplvm's kinds (``amortized``, ``exact``, ``meanfield``, ``map``, ``lowrank``, ``flow``,
``forward``, ``none``, ``custom``), and every Pyro autoguide by its class name over the globals
(:mod:`.autoguides`); your own by import path (``custom`` with ``guide.target``). ``pplvm list``
shows them.
"""

# ruff: noqa: I001
from __future__ import annotations

from typing import Any, Sequence

import torch
from pyro.infer.autoguide import AutoDelta
from torch.distributions import transform_to

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
from ..errors import IncompatibleError
from ..families.base import LatentVariableModel

# the order of registration is the order listings show (hence the imports' order: ruff I001 off)
from .amortized import Amortized, AmortizedNormal
from .exact import Exact
from .meanfield import MeanField
from .map import Map
from .lowrank import LowRank
from .flow import AmortizedFlow, AutoFlowNormal, Flow
from .fixed import Forward
from .empty import EmptyGuide, NoGuide
from .custom import Custom
from .auto import Auto
from .autoguides import AUTOGUIDES, PyroAutoguide, register_autoguides
from .base import GUIDES, Guide, GuideConfig, GuideTraits
from .local import LocalGuide

register_autoguides()  # after pplvm's own kinds


def guide_for(cfg: GuideConfig) -> Guide:
    """The plugin of a card's ``[guide]`` section."""
    return GUIDES[cfg.kind](cfg)


def guide_config(kind: str, **options: Any) -> GuideConfig:
    """A ``[guide]`` section for ``kind``, keeping only the ``options`` its section has."""
    section = GUIDES[kind].Config
    return section(kind=kind, **{k: v for k, v in options.items() if k in section.model_fields})


def admitted(model: LatentVariableModel) -> list[str]:
    """The registered guide kinds (at their defaults) that can serve ``model``."""
    own = [k for k, cls in GUIDES.in_order() if k not in ("custom", "auto")]
    kinds = [k for k in own if GUIDES[k](GUIDES[k].Config(kind=k)).refusal(model) is None]
    return kinds + (["custom"] if Custom(Custom.Config(kind="custom")).refusal(model) is None else [])


def make_guide(
    model: LatentVariableModel,
    kind: "str | GuideConfig",
    x: Any,
    *,
    init_scale: float = 0.1,
    generator: torch.Generator | None = None,
    num_data: int | None = None,
    flow_layers: int = 2,
    flow_hidden: Sequence[int] = (),
) -> torch.nn.Module:
    """Build the guide a card's ``[guide]`` section (or a kind name) describes for ``model``.

    Args:
        model: the family instance, already on its device (autoguides create their
            parameters there).
        kind: a ``[guide]`` section, or a kind name (``"amortized"``, ``"AutoNormal"`` ...)
            with the options below.
        x: the training data (or a sample of them) the guide is initialised from.
        init_scale: initial posterior scale of normal guides (with a kind name).
        generator: the random generator of data-driven starts (default: seeded 0).
        num_data: the number of training data, when ``x`` is only a sample of them.
        flow_layers: inverse autoregressive steps of a ``flow`` guide (with a kind name).
        flow_hidden: hidden widths of each flow step's network (with a kind name).

    Returns:
        The guide module, on the model's device.

    Raises:
        IncompatibleError: the guide cannot serve ``model`` (the message names why and the
            kinds it admits).
        CardError: an unknown kind or an invalid option.
    """
    if isinstance(kind, str):
        options = dict(init_scale=init_scale, flow_layers=flow_layers, flow_hidden=list(flow_hidden))
        kind = guide_config(kind, **options)
    plugin = guide_for(kind)
    why = plugin.refusal(model)
    if why is not None:
        raise IncompatibleError(
            f"{plugin.label} is not available for family {model.config.family!r}: {why}; "
            f"it admits: {', '.join(admitted(model))}"
        )
    return plugin.build(model, x, generator=generator, num_data=num_data).to(model.device)


def point_estimate(guide: torch.nn.Module, plugin: Guide | None = None) -> AutoDelta | None:
    """The AutoDelta holding a point estimate of the globals (None when the family has no global
    latents); IncompatibleError for a guide that holds a distribution. ``plugin``: the guide's
    plugin (default: the guide is the globals' guide, or holds it as ``globals_guide``)."""
    delta = plugin.globals_guide(guide) if plugin is not None else guide
    delta = delta.globals_guide if isinstance(delta, LocalGuide) else delta
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
    "AUTOGUIDES",
    "GUIDES",
    "Amortized",
    "Auto",
    "AmortizedFlow",
    "AmortizedNormal",
    "AutoFlowNormal",
    "Custom",
    "EmptyGuide",
    "Exact",
    "Flow",
    "Forward",
    "Guide",
    "GuideConfig",
    "GuideTraits",
    "LowRank",
    "Map",
    "MeanField",
    "NoGuide",
    "PyroAutoguide",
    "admitted",
    "guide_config",
    "guide_for",
    "make_guide",
    "point_estimate",
    "set_point_estimate",
]
