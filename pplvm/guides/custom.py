"""``custom``: your own guide. By import path (``guide.target = "pkg.mod:Name"``, options in
``guide.options``): a :class:`~.base.Guide` plugin class (it declares its own needs and traits)
or a Pyro autoguide class (over the global latents, as :mod:`.autoguides`). Without a target, the
guide a user's model brings (``model.guide_target``, or ``guide=`` from Python:
:class:`~pplvm.families.capabilities.UserGuide`)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, ValidationError
from pyro.infer.autoguide import AutoGuide

from .._targets import TARGET_PATTERN, resolve
from ..errors import CardError
from ..families.base import UserGuide
from .autoguides import _register
from .base import Guide, GuideConfig, GuideTraits


class Custom(Guide):
    r"""Your own guide: guide.target = 'pkg.mod:Name' (a Guide plugin or an autoguide class), or the one your
    model brings (model.guide_target, guide= from Python).

    **q** is yours. A :class:`~pplvm.guides.base.Guide` plugin class by import path declares
    its own needs and traits and builds itself, ``guide.options`` its card section; a Pyro
    autoguide class by import path guides the global latents as the registered autoguides do.
    Without a target, the guide a model of your own brings
    (:class:`~pplvm.families.capabilities.UserGuide`): called as ``guide(x, num_data)``, it must draw
    every latent the model does not enumerate.

    **Needs** a target, or a model that brings a guide. **Offers** what the plugin declares; a
    model's own guide that draws the continuous locals given x is an importance-sampling
    proposal (its draws, not a :math:`q(z_n \mid x_n)` to query).
    """

    names = ("custom",)

    class Config(GuideConfig):
        target: str | None = Field(
            None, pattern=TARGET_PATTERN, description="'package.module:Name' of a Guide plugin or an autoguide class"
        )
        options: dict[str, Any] = Field({}, description="keyword arguments of the target (its card section)")

    def __init__(self, config: GuideConfig):
        super().__init__(config)
        self.inner = None if config.target is None else _plugin(resolve(config.target, "guide.target"), config.options)

    def refusal(self, model: Any) -> str | None:
        if self.inner is not None:
            return self.inner.refusal(model)
        if not isinstance(model, UserGuide) or not model.brings_guide:
            return "this model brings no guide of its own; name one with guide.target = 'pkg.mod:Name'"
        return None

    def traits(self, model: Any) -> GuideTraits:
        if self.inner is not None:
            return self.inner.traits(model)
        return GuideTraits(draws_locals=isinstance(model, UserGuide) and model.guide_draws_locals)

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        if self.inner is not None:
            return self.inner.build(model, x, generator=generator, num_data=num_data)
        return model.user_guide()

    def globals_guide(self, guide: torch.nn.Module) -> torch.nn.Module | None:
        return self.inner.globals_guide(guide) if self.inner is not None else guide


def _plugin(obj: Any, options: dict[str, Any]) -> Guide:
    if isinstance(obj, type) and issubclass(obj, Guide):
        section, name = obj.Config, obj.names[0] if obj.names else "custom"
    elif isinstance(obj, type) and issubclass(obj, AutoGuide):
        obj = _register(obj, register=False)
        section, name = obj.Config, "custom"
        options = {"options": options}
    else:
        raise CardError(f"guide.target: expected a pplvm Guide plugin or an autoguide class, got {obj!r}")
    try:
        return obj(section.model_validate({**options, "kind": name}))
    except ValidationError as err:
        e = err.errors()[0]
        raise CardError(f"guide.options.{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
