"""``lowrank``: a low-rank multivariate normal over the globals (AutoLowRankMultivariateNormal)."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal

from .autoguides import build_autoguide, globals_only, start
from .base import Guide, InitScale


class LowRank(Guide):
    """Low-rank multivariate normal over the globals (AutoLowRankMultivariateNormal)."""

    names = ("lowrank",)
    Config = InitScale

    def refusal(self, model: Any) -> str | None:
        return globals_only(model, "guide.kind = 'lowrank'")

    def build(self, model: Any, x: Any, *, generator=None, num_data=None) -> torch.nn.Module:
        init = start(model, x, generator)
        return build_autoguide(AutoLowRankMultivariateNormal, model, init, self.config.init_scale, {})
