"""``forward``: the family's own parameter-free guide (:class:`~pplvm.families.capabilities.FixedGuide`,
e.g. a diffusion model's forward noising chain q(z_1..z_T | x))."""

from __future__ import annotations

from typing import Any

import torch

from ..families.base import FixedGuide
from .base import Guide, GuideTraits


class Forward(Guide):
    r"""The family's own fixed guide, e.g. a diffusion model's forward noising chain q(z_1..z_T | x).

    **q.** Part of the model's definition and without parameters: for diffusion families
    :math:`q(z_{1:T} \mid x) = \prod_t \mathcal N(z_t; \sqrt{\alpha_t}\, z_{t-1}, \beta_t I)`. Each
    :math:`z_t` is drawn from :math:`z_{t-1}`, so analytic-KL objectives (``meanfield``) refuse it.

    **Needs** a family that declares one (:class:`~pplvm.families.capabilities.FixedGuide`). **Offers**
    nothing to train, and no per-datum proposal (its bound is the family's own).
    """

    names = ("forward",)

    def refusal(self, model: Any) -> str | None:
        if not isinstance(model, FixedGuide):
            return "it needs a family with a fixed guide of its own (FixedGuide), which this family lacks"
        return None

    def traits(self, model: Any) -> GuideTraits:
        return GuideTraits(factorised=False)  # each z_t is drawn from z_(t-1)

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        return model.make_fixed_guide()
