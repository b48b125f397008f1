"""``forward``: the family's own parameter-free guide (:class:`~pplvm.families.base.FixedGuide`,
e.g. a diffusion model's forward noising chain q(z_1..z_T | x))."""

from __future__ import annotations

from typing import Any

import torch

from ..families.base import FixedGuide
from .base import Guide, GuideTraits


class Forward(Guide):
    """The family's own fixed guide, e.g. a diffusion model's forward noising chain q(z_1..z_T | x)."""

    names = ("forward",)

    def refusal(self, model: Any) -> str | None:
        if not isinstance(model, FixedGuide):
            return "it needs a family with a fixed guide of its own (FixedGuide), which this family lacks"
        return None

    def traits(self, model: Any) -> GuideTraits:
        return GuideTraits(factorised=False)  # each z_t is drawn from z_(t-1)

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        return model.make_fixed_guide()
